//! Settings, resolved once per run: flags beat the environment, which beats
//! the config file, which beats the defaults ("Configuration" in the design).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::Global;
use crate::client::{Client, ClientConfig, ClientError, ConfigField};
use crate::error::{Code, fail};
use crate::yaml_tree::Tree;

mod refusal;
use crate::fsread::{self, Kind};
use refusal::{Refusal, line_prefix};

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
    lock_timeout: Option<String>,
    metrics_file: Option<String>,
    state_dir: Option<String>,
    budget: Option<crate::policy::Budget>,
    max_in_flight: Option<crate::policy::Limits>,
    fallback: Option<crate::policy::Fallback>,
    fleet: Option<FileFleet>,
}

/// `fleet:` as written (fleet.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFleet {
    url: String,
    password_file: Option<String>,
    host: Option<String>,
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
    /// How long a queue lock is waited for.
    pub lock_timeout: Duration,
    pub metrics_file: Option<PathBuf>,
    /// Where the ledger and the admission state live.
    pub state_dir: PathBuf,
    /// `budget`, `max_in_flight`, `fallback` (policy.md); empty when unset.
    pub policy: crate::policy::Policy,
    /// `fleet` (fleet.md): the books shared on PostgreSQL.
    pub fleet: Option<crate::books::fleet::FleetConfig>,
    /// The projects that came from a glob: one without a queue is skipped
    /// quietly (the others are an error: a typo in a path).
    pub globbed: std::collections::HashSet<PathBuf>,
    /// `projects` patterns that match no directory (a warning).
    pub empty_globs: Vec<String>,
}

pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_SUBMIT_GRACE: Duration = Duration::from_secs(120);
pub use crate::client::{DEFAULT_HTTP_TIMEOUT, DEFAULT_RETRIES};
pub use crate::queue::DEFAULT_LOCK_TIMEOUT;
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

/// A duration from the config file. The error names the key and its line,
/// never the value (see [`parse_file`]).
fn config_duration(
    file: &Path,
    text: &str,
    key: &str,
    v: &Option<String>,
) -> anyhow::Result<Option<Duration>> {
    match v {
        None => Ok(None),
        Some(s) => crate::cli::parse_duration(s).map(Some).map_err(|_| {
            fail(
                Code::Config,
                format!(
                    "config file {}: {}{key} is not a duration like 30s or 24h; fix the value or remove the key",
                    file.display(),
                    line_prefix(refusal::path_line(text, &[key])),
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
        let (file, text, config_file) = load_file(g)?;
        let cfg_path = config_file.clone().unwrap_or_default();
        let base = config_file.as_deref().and_then(Path::parent);
        let (api_url, api_url_from) = api_url_and_source(g, &file);
        let key_source = key_source(&file, base);
        let found = find_projects(&cfg_path, &file.projects, base)?;
        let duration = |key: &str, v: &Option<String>| config_duration(&cfg_path, &text, key, v);
        // In the order of the keys' checks: the first bad one is said.
        let max_age = duration("max_age", &file.max_age)?.unwrap_or(DEFAULT_MAX_AGE);
        let submit_grace =
            duration("submit_grace", &file.submit_grace)?.unwrap_or(DEFAULT_SUBMIT_GRACE);
        let lock_timeout =
            duration("lock_timeout", &file.lock_timeout)?.unwrap_or(DEFAULT_LOCK_TIMEOUT);
        let http_timeout = match g.http_timeout {
            Some(d) => d,
            None => duration("http_timeout", &file.http_timeout)?.unwrap_or(DEFAULT_HTTP_TIMEOUT),
        };
        Ok(Settings {
            api_url,
            api_url_from,
            key_source,
            projects: found.projects,
            max_age,
            submit_grace,
            lock_timeout,
            http_timeout,
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
            fleet: file
                .fleet
                .map(|f| fleet_config(&cfg_path, f, base))
                .transpose()?,
            globbed: found.globbed,
            empty_globs: found.empty_globs,
            config_file,
        })
    }

    /// The API key, from `SECUTOOLS_API_KEY` or `api_key_file`. A key file
    /// readable by group or others is refused.
    pub fn api_key(&self) -> anyhow::Result<String> {
        match &self.key_source {
            KeySource::Env => {
                let key = env_nonempty(ENV_KEY).unwrap_or_default().trim().to_string();
                match key_problem(&key) {
                    Some(why) => Err(fail(Code::Config, format!("{ENV_KEY} {why}"))),
                    None => Ok(key),
                }
            }
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
        let config = ClientConfig {
            base_url,
            api_key,
            timeout: self.http_timeout,
            retries: self.retries,
            ..ClientConfig::default()
        };
        // Coded here, with the client's own code: the caller needs no
        // client to know how the run ends.
        Client::new(config).map_err(|e| match e {
            // Name where the URL came from only when the URL is the problem.
            ClientError::Config {
                field: ConfigField::Url,
                ..
            } => fail(e.code(), format!("{e} (from {})", self.api_url_from)),
            other => fail(other.code(), other.to_string()),
        })
    }
}

/// The config file named by `--config` (or the environment), else the
/// default one if it exists: its settings, its text (for line numbers) and
/// its path. A named file that does not exist is an error.
fn load_file(g: &Global) -> anyhow::Result<(FileConfig, String, Option<PathBuf>)> {
    let (path, explicit) = match &g.config {
        Some(p) => (Some(p.clone()), true),
        None => (default_config_path(), false),
    };
    let Some(p) = path else {
        return Ok((FileConfig::default(), String::new(), None));
    };
    match read_config(&p)? {
        Some((file, text)) => Ok((file, text, Some(p))),
        None if !explicit => Ok((FileConfig::default(), String::new(), None)),
        None => Err(fail(
            Code::Config,
            format!(
                "config file {} does not exist; check --config / CCL_DELEGATE_CONFIG",
                p.display()
            ),
        )),
    }
}

/// The API URL and which of flag, env or file gave it.
fn api_url_and_source(g: &Global, file: &FileConfig) -> (Option<String>, &'static str) {
    if let Some(u) = &g.api_url {
        (Some(u.clone()), "--api-url")
    } else if let Some(u) = env_nonempty(ENV_URL) {
        (Some(u), ENV_URL)
    } else if let Some(u) = file.api_url.clone() {
        (Some(u), "api_url in the config file")
    } else {
        (None, "")
    }
}

/// Where the API key will come from (the environment beats the file).
fn key_source(file: &FileConfig, base: Option<&Path>) -> KeySource {
    if env_nonempty(ENV_KEY).is_some() {
        KeySource::Env
    } else if let Some(f) = &file.api_key_file {
        KeySource::File(expand(f, base))
    } else {
        KeySource::Missing
    }
}

/// The `projects` of the config file, expanded.
struct FoundProjects {
    projects: Vec<PathBuf>,
    globbed: std::collections::HashSet<PathBuf>,
    empty_globs: Vec<String>,
}

fn find_projects(
    cfg_path: &Path,
    raws: &[String],
    base: Option<&Path>,
) -> anyhow::Result<FoundProjects> {
    let mut found = FoundProjects {
        projects: Vec::new(),
        globbed: std::collections::HashSet::new(),
        empty_globs: Vec::new(),
    };
    for raw in raws {
        let before = found.projects.len();
        let glob = expand_project(cfg_path, raw, base, &mut found.projects)?;
        if glob {
            found
                .globbed
                .extend(found.projects[before..].iter().cloned());
            if found.projects.len() == before {
                found.empty_globs.push(crate::text::clip(raw, 200));
            }
        }
    }
    Ok(found)
}

/// Reads and parses the config file through the one reader and the one
/// YAML door. `Ok(None)` when it does not exist.
fn read_config(path: &Path) -> anyhow::Result<Option<(FileConfig, String)>> {
    let bytes = match fsread::read(path, Kind::Config) {
        Ok(Some(c)) => c.bytes,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Err(fail(
                Code::Config,
                format!("cannot read config file: {e}; check --config / CCL_DELEGATE_CONFIG"),
            ));
        }
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        fail(
            Code::Config,
            format!(
                "config file {}: not UTF-8 text (first bad byte at offset {}); is it the right file?",
                path.display(),
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    let file = parse_file(path, &text)?;
    Ok(Some((file, text)))
}

fn parse_file(path: &Path, text: &str) -> anyhow::Result<FileConfig> {
    let refused = |what: String| {
        fail(
            Code::Config,
            format!("config file {}: {what}", path.display()),
        )
    };
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    let tree: Tree =
        crate::frontmatter::from_yaml(text).map_err(|e| refused(refusal::describe_syntax(&e)))?;
    if let Some(d) = tree.duplicate_key() {
        return Err(refused(refusal::describe_duplicate(&d, text)));
    }
    tree.read::<Option<FileConfig>, Refusal>()
        .map(Option::unwrap_or_default)
        .map_err(|e| refused(refusal::describe(e.path(), e.inner(), text)))
}

/// Adds a `projects` entry's directories to `out`; `true` when the entry
/// was a glob.
fn expand_project(
    cfg: &Path,
    raw: &str,
    base: Option<&Path>,
    out: &mut Vec<PathBuf>,
) -> anyhow::Result<bool> {
    let p = expand(raw, base);
    let s = p.to_string_lossy();
    if !s.contains(['*', '?', '[']) {
        out.push(p);
        return Ok(false);
    }
    let paths = glob::glob(&s).map_err(|e| {
        fail(
            Code::Config,
            format!(
                "config file {}: a projects entry is not a valid glob: {}",
                cfg.display(),
                e.msg
            ),
        )
    })?;
    for entry in paths.flatten() {
        if entry.is_dir() {
            out.push(entry);
        }
    }
    Ok(true)
}

/// `fleet:` checked: a URL (never shown as written: it may hold a
/// password), a password file, this host's name (default: the hostname).
fn fleet_config(
    cfg_path: &Path,
    f: FileFleet,
    base: Option<&Path>,
) -> anyhow::Result<crate::books::fleet::FleetConfig> {
    let bad = |what: &str| {
        fail(
            Code::Config,
            format!("{}: fleet.{what}", cfg_path.display()),
        )
    };
    if f.url.trim().is_empty() {
        return Err(bad(
            "url is empty; give a postgres:// URL or key=value words",
        ));
    }
    if let Err(why) = crate::books::conninfo::parse(&f.url) {
        return Err(bad(&format!(
            "url {}: {why}",
            crate::books::conninfo::masked(&f.url)
        )));
    }
    let host = match f.host {
        Some(h) => h.trim().to_string(),
        None => crate::books::fleet::hostname(),
    };
    if host.is_empty()
        || host.len() > 64
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(bad(
            "host must be 1-64 letters, digits, `-`, `_` or `.` (this host's name in the fleet)",
        ));
    }
    Ok(crate::books::fleet::FleetConfig {
        url: f.url,
        password_file: f.password_file.map(|p| expand(&p, base)),
        host,
    })
}

/// What is wrong with an API key, if anything: the rule the HTTP client
/// applies too (one token of printable ASCII), checked where the key is
/// read so that every command and `doctor` refuse the same keys.
pub fn key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        Some("is empty")
    } else if key.contains('\n') {
        Some("holds more than one line; it must hold the key alone")
    } else if !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        Some("contains spaces, control or non-ASCII characters")
    } else {
        None
    }
}

fn read_key_file(p: &Path) -> anyhow::Result<String> {
    let shown = p.display();
    let cannot = |why: String| {
        fail(
            Code::Config,
            format!(
                "cannot read api_key_file: {why}; create it with the key and run chmod 600 {shown}"
            ),
        )
    };
    // Never follows a symlink, never blocks on a FIFO, refuses what is not
    // a regular file or is too large to be a key.
    let c = fsread::read(p, Kind::Key)
        .map_err(|e| cannot(e.to_string()))?
        .ok_or_else(|| cannot(format!("{shown}: no such file")))?;
    if c.mode & 0o077 != 0 {
        return Err(fail(
            Code::Config,
            format!(
                "api_key_file {shown} is readable by group or others (mode {:o}); run: chmod 600 {shown}",
                c.mode
            ),
        ));
    }
    let key = String::from_utf8(c.bytes).map_err(|_| cannot(format!("{shown}: not UTF-8 text")))?;
    let key = key.trim().to_string();
    if let Some(why) = key_problem(&key) {
        return Err(fail(
            Code::Config,
            format!("api_key_file {shown} {why}; write the key alone on one line"),
        ));
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

    /// (config text, expected message after the file name)
    #[test]
    fn config_errors_name_the_line_and_never_a_value() {
        let rows: &[(&str, &str)] = &[
            (
                "root:$6$secrethash:19000:0:99999:7:::\nbin:x:1\n",
                "line 3: not valid YAML: could not find expected ':' at line 3 column 1",
            ),
            (
                "sk-live-abcdef",
                "line 1: the file must be a mapping of config keys (`key: value` lines), not a string; is it the right file?",
            ),
            (
                "retries: 3\napi_url: [secret]\n",
                "line 2: api_url must be a string, not a list",
            ),
            (
                "retries: secret\n",
                "line 1: retries must be a whole number, not a string",
            ),
            (
                "projects: [ok, [secret]]\n",
                "line 1: projects[1] must be a string, not a list",
            ),
            (
                "retries: 3\n\nfoo_bar: secret\n",
                "line 3: unknown key `foo_bar`; the keys are api_url, ",
            ),
            (
                "retries: 1\n\"Secret Key\": 1\n",
                "line 2: a key that is not a config key (not shown); the keys are api_url",
            ),
            (
                "retries: 1\nretries: 2\n",
                "line 2: key `retries` is given twice; keep one",
            ),
            (
                "\tsecret: 1\n",
                "line 1: not valid YAML: found character that cannot start any token, while scanning for the next token",
            ),
            (
                "- secret\n",
                "line 1: the file must be a mapping of config keys (`key: value` lines), not a list",
            ),
            (
                "max_age: secret\n",
                "line 1: max_age is not a duration like 30s or 24h",
            ),
            // A number a policy key refuses is shown: the key, the value,
            // the rule; never "not a string" for a number too large.
            (
                "retries: 3\nbudget:\n  daily_cad: 1e400\n",
                "line 3: budget.daily_cad: 1e400 is not a finite amount of CAD (expected a number from 0 to 1000000000, like 20.00)",
            ),
            (
                "max_in_flight: {all: 18446744073709551616}\n",
                "line 1: max_in_flight.all: 18446744073709551616 is too large (at most 18446744073709551615 jobs)",
            ),
            (
                "budget:\n  monthly_cad: 1e300\n",
                "line 2: budget.monthly_cad: 1e300 is too large (at most 1000000000 CAD)",
            ),
            (
                "fallback:\n  gemini: [claude, claude, claude, claude, claude]\n",
                "line 2: fallback.gemini: a fallback chain has at most 4 entries, this one has 5",
            ),
            (
                "fallback:\n  gemini: [claude, gemni]\n",
                "line 2: fallback.gemini: unknown provider `gemni` (did you mean `gemini`?); the providers are gpu, gemini, claude, auto",
            ),
            (
                "budget:\n  daily_cad: 1\n  providers:\n    claude: {}\n    claude: {}\n",
                "line 5: key `budget.providers.claude` is given twice; keep one",
            ),
            (
                "budget:\n  providers:\n    claud: {}\n",
                "line 3: budget.providers: unknown provider `claud` (did you mean `claude`?); the providers are gpu",
            ),
            ("retries: -1\n", "line 1: retries must be a whole number"),
            (
                "retries: 1\nretires: 2\n",
                "line 2: unknown key `retires` (did you mean `retries`?); the keys are api_url",
            ),
            (
                "fleet:\n  host: a\n",
                "line 1: `fleet` is missing its key `url`",
            ),
            (
                "# nothing yet\n---\n\nsecret-value\n",
                "line 4: the file must be a mapping of config keys (`key: value` lines), not a string",
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        for &(text, want) in rows {
            std::fs::write(&path, text).unwrap();
            let got = read_config(&path)
                .and_then(|c| {
                    let (f, text) = c.unwrap();
                    config_duration(&path, &text, "max_age", &f.max_age).map(|_| ())
                })
                .unwrap_err()
                .to_string();
            let want = format!("config file {}: {want}", path.display());
            assert!(
                got.starts_with(&want),
                "{text:?}\n got: {got}\nwant: {want}"
            );
            assert!(!got.contains("secret"), "{got}");
        }
    }

    #[test]
    fn a_config_of_nested_brackets_is_refused_quickly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, format!("projects: {}", "[".repeat(200_000))).unwrap();
        let t = std::time::Instant::now();
        let e = read_config(&path).unwrap_err().to_string();
        assert!(e.contains("too complex to parse safely"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }

    #[test]
    fn keys_that_every_command_refuses() {
        let rows: &[(&str, Option<&str>)] = &[
            ("sk-abc_123.X", None),
            ("", Some("is empty")),
            ("line1\nline2", Some("more than one line")),
            ("a b", Some("spaces")),
            ("ké", Some("non-ASCII")),
            ("a\x1bb", Some("control")),
        ];
        for &(key, want) in rows {
            match (key_problem(key), want) {
                (None, None) => {}
                (Some(got), Some(want)) => assert!(got.contains(want), "{key:?}: {got}"),
                (got, _) => panic!("{key:?}: {got:?}"),
            }
        }
    }
}
