//! What is sent to secutools for a task: the prompt, the request, the
//! idempotency key.

use std::io::Read;

use crate::client::SubmitRequest;
use crate::frontmatter;
use crate::route::Provider;

/// The prompt of the API contract: `Task: <id>.md`, a blank line, the body
/// (frontmatter removed), a blank line, the closing instruction. The body
/// goes in verbatim, line ends and blank lines included ("no byte of a task
/// is ever silently dropped"); one with nothing but whitespace is empty.
pub fn prompt(task_name: &str, body: &[u8]) -> String {
    let body = String::from_utf8_lossy(body);
    let body = if body.trim().is_empty() {
        "(empty task body)"
    } else {
        &body
    };
    format!("Task: {task_name}\n\n{body}\n\nProvide a complete, self-contained answer.")
}

/// The request for a task's bytes, to `provider`.
pub fn request_to(
    project: &str,
    task_name: &str,
    task: &[u8],
    provider: Provider,
    priority: &str,
) -> SubmitRequest {
    let split = frontmatter::split(task);
    let hint = split
        .meta
        .as_ref()
        .ok()
        .and_then(|m| m.complexity_hint.clone());
    SubmitRequest::new(
        priority.to_string(),
        prompt(task_name, split.body),
        provider.api_name().map(str::to_string),
        hint,
        project.to_string(),
        task_name.to_string(),
    )
}

/// The request for a task's bytes, to the provider a marker names (one
/// this tool does not know is sent as `auto`: no `preferred_ai`).
pub fn request(
    project: &str,
    task_name: &str,
    task: &[u8],
    provider: &str,
    priority: &str,
) -> SubmitRequest {
    let provider = Provider::named(provider).unwrap_or(Provider::Auto);
    request_to(project, task_name, task, provider, priority)
}

/// A fresh idempotency key: `ccl-` and 32 hex digits from the OS's
/// randomness.
pub fn new_idempotency_key() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let mut key = String::from("ccl-");
    for b in bytes {
        key.push_str(&format!("{b:02x}"));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_follows_the_contract() {
        assert_eq!(
            prompt("a.md", b"\nDo X.\r\n"),
            "Task: a.md\n\n\nDo X.\r\n\n\nProvide a complete, self-contained answer."
        );
        assert_eq!(
            prompt("a.md", b"\n"),
            "Task: a.md\n\n(empty task body)\n\nProvide a complete, self-contained answer."
        );
    }

    #[test]
    fn keys_are_valid_and_fresh() {
        let a = new_idempotency_key().unwrap();
        let b = new_idempotency_key().unwrap();
        assert_ne!(a, b);
        assert!(crate::names::valid_idempotency_key(&a));
    }
}
