//! Settings, resolved once per run: flags beat the environment, which beats
//! the config file, which beats the defaults ("Configuration" in the design).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::Global;
use crate::client::{Client, ClientConfig};
use crate::error::{Code, fail};

pub const ENV_URL: &str = "SECUTOOLS_URL";
pub const ENV_KEY: &str = "SECUTOOLS_API_KEY";

/// The config file, as written by a person. Unknown keys are refused so a
/// typo does not silently fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    api_url: Option<String>,
    api_key_file: Option<String>,
    #[serde(default)]
    projects: Vec<String>,
    max_age: Option<String>,
    submit_grace: Option<String>,
    http_timeout: Option<String>,
    retries: Option<u32>,
    concurrency: Option<u32>,
    lock_file: Option<String>,
    metrics_file: Option<String>,
    state_dir: Option<String>,
    budget: Option<crate::policy::Budget>,
    max_in_flight: Option<crate::policy::Limits>,
    fallback: Option<crate::policy::Fallback>,
}

/// Where the API key comes from; it is read only when a command needs it.
#[derive(Debug, Clone)]
pub enum KeySource {
    Env,
    File(PathBuf),
    Missing,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    pub api_url: Option<String>,
    /// Which of flag, env or file gave the URL, for messages.
    pub api_url_from: &'static str,
    pub key_source: KeySource,
    pub projects: Vec<PathBuf>,
    pub max_age: Duration,
    pub submit_grace: Duration,
    pub http_timeout: Duration,
    pub retries: u32,
    pub concurrency: u32,
    pub lock_file: PathBuf,
    pub metrics_file: Option<PathBuf>,
    /// Where the ledger and the admission state live.
    pub state_dir: PathBuf,
    /// `budget`, `max_in_flight`, `fallback` (policy.md); empty when unset.
    pub policy: crate::policy::Policy,
}

pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_SUBMIT_GRACE: Duration = Duration::from_secs(120);
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRIES: u32 = 3;
pub const DEFAULT_CONCURRENCY: u32 = 8;

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn home() -> Option<PathBuf> {
    env_nonempty("HOME").map(PathBuf::from)
}

/// `$XDG_<KIND>_HOME`, or `~/<fallback>` when unset or not absolute.
fn xdg_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    match env_nonempty(var).map(PathBuf::from) {
        Some(p) if p.is_absolute() => Some(p),
        _ => home().map(|h| h.join(fallback)),
    }
}

pub fn default_config_path() -> Option<PathBuf> {
    xdg_dir("XDG_CONFIG_HOME", ".config").map(|d| d.join("ccl-delegate/config.yaml"))
}

pub fn default_lock_file() -> PathBuf {
    default_state_dir().join("reap.lock")
}

/// `$XDG_STATE_HOME/ccl-delegate` (`~/.local/state/ccl-delegate` when unset).
pub fn default_state_dir() -> PathBuf {
    xdg_dir("XDG_STATE_HOME", ".local/state")
        .unwrap_or_else(std::env::temp_dir)
        .join("ccl-delegate")
}

/// `~/x` → `$HOME/x`; relative paths are taken from `base` (the config
/// file's directory).
fn expand(raw: &str, base: Option<&Path>) -> PathBuf {
    let p = if raw == "~" {
        home().unwrap_or_else(|| PathBuf::from(raw))
    } else if let Some(rest) = raw.strip_prefix("~/") {
        home()
            .map(|h| h.join(rest))
            .unwrap_or_else(|| PathBuf::from(raw))
    } else {
        PathBuf::from(raw)
    };
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p,
    }
}

fn config_duration(file: &Path, key: &str, v: &Option<String>) -> anyhow::Result<Option<Duration>> {
    match v {
        None => Ok(None),
        Some(s) => crate::cli::parse_duration(s).map(Some).map_err(|e| {
            fail(
                Code::Config,
                format!(
                    "{}: {key}: {e}; fix the value or remove the key",
                    file.display()
                ),
            )
        }),
    }
}

impl Settings {
    /// Reads the config file (if any) and the environment. Does not read the
    /// API key: that happens in [`Settings::client`], only for commands that
    /// talk to the service.
    pub fn load(g: &Global) -> anyhow::Result<Settings> {
        let (path, explicit) = match &g.config {
            Some(p) => (Some(p.clone()), true),
            None => (default_config_path(), false),
        };
        let (file, config_file) = match &path {
            Some(p) => match fs::read_to_string(p) {
                Ok(text) => (parse_file(p, &text)?, Some(p.clone())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                    (FileConfig::default(), None)
                }
                Err(e) => {
                    return Err(fail(
                        Code::Config,
                        format!(
                            "cannot read config file {}: {e}; check --config / CCL_DELEGATE_CONFIG",
                            p.display()
                        ),
                    ));
                }
            },
            None => (FileConfig::default(), None),
        };
        let cfg_path = config_file.clone().unwrap_or_default();
        let base = config_file.as_deref().and_then(Path::parent);

        let (api_url, api_url_from) = if let Some(u) = &g.api_url {
            (Some(u.clone()), "--api-url")
        } else if let Some(u) = env_nonempty(ENV_URL) {
            (Some(u), ENV_URL)
        } else if let Some(u) = file.api_url.clone() {
            (Some(u), "api_url in the config file")
        } else {
            (None, "")
        };
        let key_source = if env_nonempty(ENV_KEY).is_some() {
            KeySource::Env
        } else if let Some(f) = &file.api_key_file {
            KeySource::File(expand(f, base))
        } else {
            KeySource::Missing
        };

        let mut projects = Vec::new();
        for raw in &file.projects {
            expand_project(&cfg_path, raw, base, &mut projects)?;
        }

        Ok(Settings {
            api_url,
            api_url_from,
            key_source,
            projects,
            max_age: config_duration(&cfg_path, "max_age", &file.max_age)?
                .unwrap_or(DEFAULT_MAX_AGE),
            submit_grace: config_duration(&cfg_path, "submit_grace", &file.submit_grace)?
                .unwrap_or(DEFAULT_SUBMIT_GRACE),
            http_timeout: g.http_timeout.map(Ok).unwrap_or_else(|| {
                config_duration(&cfg_path, "http_timeout", &file.http_timeout)
                    .map(|d| d.unwrap_or(DEFAULT_HTTP_TIMEOUT))
            })?,
            retries: g.retries.or(file.retries).unwrap_or(DEFAULT_RETRIES),
            concurrency: file
                .concurrency
                .unwrap_or(DEFAULT_CONCURRENCY)
                .clamp(1, 256),
            lock_file: file
                .lock_file
                .as_deref()
                .map(|l| expand(l, base))
                .unwrap_or_else(default_lock_file),
            metrics_file: file.metrics_file.as_deref().map(|m| expand(m, base)),
            state_dir: file
                .state_dir
                .as_deref()
                .map(|d| expand(d, base))
                .unwrap_or_else(default_state_dir),
            policy: crate::policy::Policy {
                budget: file.budget.unwrap_or_default(),
                max_in_flight: file.max_in_flight.unwrap_or_default(),
                fallback: file.fallback.unwrap_or_default(),
            },
            config_file,
        })
    }

    /// The API key, from `SECUTOOLS_API_KEY` or `api_key_file`. A key file
    /// readable by group or others is refused.
    pub fn api_key(&self) -> anyhow::Result<String> {
        match &self.key_source {
            KeySource::Env => Ok(env_nonempty(ENV_KEY).unwrap_or_default().trim().to_string()),
            KeySource::File(p) => read_key_file(p),
            KeySource::Missing => Err(fail(
                Code::Config,
                format!(
                    "no API key: set {ENV_KEY} or api_key_file in the config file ({})",
                    self.config_hint()
                ),
            )),
        }
    }

    pub fn api_url(&self) -> anyhow::Result<&str> {
        self.api_url.as_deref().ok_or_else(|| {
            fail(
                Code::Config,
                format!(
                    "no API URL: set {ENV_URL}, --api-url or api_url in the config file ({})",
                    self.config_hint()
                ),
            )
        })
    }

    fn config_hint(&self) -> String {
        match (&self.config_file, default_config_path()) {
            (Some(p), _) => p.display().to_string(),
            (None, Some(p)) => format!("none found at {}", p.display()),
            (None, None) => "none found".to_string(),
        }
    }

    /// The HTTP client, built once per run. Missing URL or key: exit 78.
    pub fn client(&self) -> anyhow::Result<Client> {
        if self.api_url.is_none() && matches!(self.key_source, KeySource::Missing) {
            return Err(fail(
                Code::Config,
                format!(
                    "no API URL and no API key: set {ENV_URL} (or --api-url, or api_url) and {ENV_KEY} (or api_key_file) ({})",
                    self.config_hint()
                ),
            ));
        }
        let base_url = self.api_url()?.to_string();
        let api_key = self.api_key()?;
        Client::new(ClientConfig {
            base_url,
            api_key,
            timeout: self.http_timeout,
            retries: self.retries,
            ..ClientConfig::default()
        })
        .map_err(|e| {
            // Name where the URL came from only when the URL is the problem.
            let msg = e.to_string();
            if msg.contains("API URL") {
                fail(Code::Config, format!("{msg} (from {})", self.api_url_from))
            } else {
                fail(Code::Config, msg)
            }
        })
    }
}

fn parse_file(path: &Path, text: &str) -> anyhow::Result<FileConfig> {
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_yaml::from_str::<Option<FileConfig>>(text)
        .map(Option::unwrap_or_default)
        .map_err(|e| {
            // serde_yaml's message ends with "at line N column M".
            fail(
                Code::Config,
                format!(
                    "config file {}: {e}; fix or remove that key",
                    path.display()
                ),
            )
        })
}

fn expand_project(
    cfg: &Path,
    raw: &str,
    base: Option<&Path>,
    out: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let p = expand(raw, base);
    let s = p.to_string_lossy();
    if !s.contains(['*', '?', '[']) {
        out.push(p);
        return Ok(());
    }
    let paths = glob::glob(&s).map_err(|e| {
        fail(
            Code::Config,
            format!(
                "{}: projects entry `{raw}` is not a valid glob: {e}",
                cfg.display()
            ),
        )
    })?;
    for entry in paths.flatten() {
        if entry.is_dir() {
            out.push(entry);
        }
    }
    Ok(())
}

fn read_key_file(p: &Path) -> anyhow::Result<String> {
    let shown = p.display();
    let cannot = |why: String| {
        fail(
            Code::Config,
            format!(
                "cannot read api_key_file {shown}: {why}; create it with the key and run chmod 600 {shown}"
            ),
        )
    };
    // Never follows a symlink, never blocks on a FIFO, refuses what is not
    // a regular file.
    let (bytes, mode) = crate::queue::read_nofollow(p)
        .map_err(|e| cannot(e.to_string()))?
        .ok_or_else(|| cannot("no such file".into()))?;
    if mode & 0o077 != 0 {
        return Err(fail(
            Code::Config,
            format!(
                "api_key_file {shown} is readable by group or others (mode {:o}); run: chmod 600 {shown}",
                mode & 0o777
            ),
        ));
    }
    let key = String::from_utf8(bytes).map_err(|_| cannot("not UTF-8 text".into()))?;
    let key = key.trim().to_string();
    if key.is_empty() {
        return Err(fail(Code::Config, format!("api_key_file {shown} is empty")));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_that_is_a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("key");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(read_key_file(&fifo).map_err(|e| e.to_string())));
        let got = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("reading a FIFO key file must not block");
        let e = got.unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
