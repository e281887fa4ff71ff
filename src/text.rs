//! Small helpers for showing untrusted text in one-line messages.

/// At most `max` characters of `s`, control characters replaced, with `…`
/// when cut: server and file text never breaks a terminal or a log line.
pub fn clip(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}
