//! `doctor`: one line per check of what a cron job or dispatcher depends on.
//! Run it after editing the crontab or the config file. Each check calls the
//! function the commands call (`Settings::api_key`, `Settings::client`, ...),
//! so doctor passes exactly what they accept.

use crate::cli::DoctorArgs;
use crate::client::{Client, ClientError};
use crate::config::{KeySource, Settings};
use crate::error::{Code, fail};
use crate::queue::Queue;
use crate::text::line;

struct Checks {
    failed: u32,
}

impl Checks {
    fn ok(&mut self, what: &str, detail: impl std::fmt::Display) {
        println!("ok    {}", line(&format!("{what}: {detail}")));
    }
    fn fail(&mut self, what: &str, detail: impl std::fmt::Display) {
        self.failed += 1;
        println!("FAIL  {}", line(&format!("{what}: {detail:#}")));
    }
    /// Not a failure, but worth a look.
    fn warn(&mut self, what: &str, detail: impl std::fmt::Display) {
        println!("warn  {}", line(&format!("{what}: {detail:#}")));
    }
}

/// With `fleet`: the database reached and its schema, this host's name
/// not taken by another machine, the other hosts' caps, stale hosts.
fn fleet(c: &mut Checks, settings: &Settings) {
    let Some(cfg) = &settings.fleet else { return };
    let mut f =
        match crate::books::fleet::Fleet::connect(cfg, settings.lock_timeout, settings.max_age) {
            Ok(f) => f,
            Err(e) => {
                c.fail("fleet database", e);
                return;
            }
        };
    c.ok(
        "fleet database",
        format_args!(
            "{} reached, schema version {}",
            f.shown(),
            crate::books::fleet::VERSION
        ),
    );
    let hosts = match f.hosts() {
        Ok(h) => h,
        Err(e) => {
            c.fail("fleet hosts", e);
            return;
        }
    };
    let me = crate::books::fleet::machine_id();
    match hosts.iter().find(|h| h.host == cfg.host) {
        Some(h) if h.machine_id != me => c.fail(
            "fleet host",
            format_args!(
                "the name {} is taken by another machine (id {}); give this host its own `fleet.host`",
                cfg.host, h.machine_id
            ),
        ),
        Some(_) => c.ok("fleet host", format_args!("{} (this machine)", cfg.host)),
        None => c.ok(
            "fleet host",
            format_args!("{} (registered by its first push)", cfg.host),
        ),
    }
    let mine = crate::books::sync::caps_summary(&settings.policy);
    for h in hosts
        .iter()
        .filter(|h| h.host != cfg.host && h.caps != mine)
    {
        c.warn(
            "fleet caps",
            format_args!(
                "host {} has other caps ({}) than this one ({}); hosts should agree",
                h.host,
                if h.caps.is_empty() { "none" } else { &h.caps },
                if mine.is_empty() { "none" } else { &mine }
            ),
        );
    }
    match f.stale_hosts(std::time::SystemTime::now()) {
        Ok(stale) => {
            for h in stale {
                c.warn(
                    "fleet host",
                    format_args!("{h} holds reservations older than max_age: it stopped reaping"),
                );
            }
        }
        Err(e) => c.fail("fleet reservations", e),
    }
}

pub fn run(args: &DoctorArgs, settings: &Settings) -> anyhow::Result<Code> {
    let mut c = Checks { failed: 0 };
    match &settings.config_file {
        Some(p) => c.ok("config", format_args!("{} read", p.display())),
        None => c.ok(
            "config",
            "no config file; using flags, environment and defaults",
        ),
    }
    let url_ok = api_url(&mut c, settings);
    let key_ok = api_key(&mut c, settings);
    // The client every command builds: its URL, key and timeout rules.
    let client = if url_ok && key_ok {
        match settings.client() {
            Ok(client) => Some(client),
            Err(e) => {
                c.fail("settings", e);
                None
            }
        }
    } else {
        None
    };
    match (args.offline, client) {
        (true, _) => println!("skip  service: --offline"),
        (false, Some(client)) => service(&mut c, &client),
        // A check not run is no second failure.
        (false, None) => println!(
            "skip  service: not tried until the failed check above is fixed; then run doctor again"
        ),
    }
    projects(&mut c, args, settings);
    run_lock(&mut c, settings);
    spending(&mut c, settings);
    fleet(&mut c, settings);
    if c.failed > 0 {
        return Err(fail(Code::Other, format!("{} check(s) failed", c.failed)));
    }
    Ok(Code::Ok)
}

/// The API URL, judged by the client's own rule (one verdict per check).
fn api_url(c: &mut Checks, settings: &Settings) -> bool {
    match settings.api_url() {
        Ok(u) => match crate::client::check_base_url(u) {
            Ok(()) => {
                c.ok(
                    "api url",
                    format_args!("{u} (from {})", settings.api_url_from),
                );
                true
            }
            Err(e) => {
                c.fail(
                    "api url",
                    format_args!("{e} (from {})", settings.api_url_from),
                );
                false
            }
        },
        Err(e) => {
            c.fail("api url", e);
            false
        }
    }
}

/// The API key, read as every command reads it, and where it came from.
fn api_key(c: &mut Checks, settings: &Settings) -> bool {
    match (&settings.key_source, settings.api_key()) {
        (KeySource::Env, Ok(_)) => {
            c.ok("api key", "from SECUTOOLS_API_KEY");
            true
        }
        (KeySource::File(p), Ok(_)) => {
            c.ok("api key", format_args!("from {} (mode 600)", p.display()));
            true
        }
        (KeySource::Missing, Ok(_)) => {
            c.fail("api key", "missing, yet read: please report this");
            false
        }
        (_, Err(e)) => {
            c.fail("api key", e);
            false
        }
    }
}

/// The service answers and accepts the key: a job id that cannot exist
/// gets a 404.
fn service(c: &mut Checks, client: &Client) {
    match client.status("ccl-delegate-doctor-probe") {
        Err(ClientError::NotFound { .. }) | Ok(_) => c.ok("service", "reachable, key accepted"),
        Err(e @ ClientError::Auth { .. }) => {
            c.fail("service", format_args!("the key was refused: {e}"))
        }
        Err(e) => c.fail("service", e),
    }
}

/// Each project's queue directories: present, real and writable.
fn projects(c: &mut Checks, args: &DoctorArgs, settings: &Settings) {
    let projects = super::projects_for_person(&args.projects, settings).unwrap_or_default();
    if projects.is_empty() {
        c.fail(
            "projects",
            "none configured: list `projects` in the config file or pass --project",
        );
    }
    for dir in &projects {
        let q = Queue::at(dir);
        let what = format!("project {}", q.project.display());
        if let Some(advice) = init_advice(dir, q.root.is_dir(), q.inbox.is_dir()) {
            c.fail(&what, advice);
            continue;
        }
        let verdict = q.check_dirs().and_then(|()| {
            for d in [&q.done, &q.failed] {
                if d.exists() {
                    crate::queue::check_real_dir(d)?;
                }
            }
            let probe = tempfile::Builder::new()
                .prefix(".ccl-delegate-tmp-doctor-")
                .tempfile_in(&q.root)?;
            drop(probe);
            Ok(())
        });
        match verdict {
            Ok(()) => c.ok(&what, "queue directories present and writable"),
            Err(e) => c.fail(&what, format_args!("{e:#}")),
        }
    }
}

/// The run lock's file can be made and opened; whether a reap holds it.
fn run_lock(c: &mut Checks, settings: &Settings) {
    let lock = &settings.lock_file;
    let verdict = lock
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .and_then(|_| crate::queue::open_lock_file(lock, 0));
    match verdict {
        Ok(f) => match f.try_lock() {
            Ok(()) => c.ok("run lock", lock.display()),
            Err(_) => c.ok(
                "run lock",
                format_args!("{} (a reap is running now)", lock.display()),
            ),
        },
        Err(e) => c.fail("run lock", format_args!("{}: {e}", lock.display())),
    }
}

/// With budgets, limits or a ledger: the state directory, the ledger, and
/// today's position against each budget cap and limit (the keys themselves were checked when the config
/// was read: a bad one never gets this far).
fn spending(c: &mut Checks, settings: &Settings) {
    let dir = &settings.state_dir;
    // Opt-in (policy.md): without budgets, limits or a ledger, doctor says
    // what it said before.
    let books_path = crate::books::path(dir);
    let books_there = std::fs::symlink_metadata(&books_path).is_ok()
        || std::fs::symlink_metadata(dir.join("ledger.jsonl")).is_ok();
    if !settings.policy.admission_applies() && !books_there {
        return;
    }
    if dir.exists() {
        let probe = tempfile::Builder::new()
            .prefix(".ccl-delegate-tmp-doctor-")
            .tempfile_in(dir);
        match probe {
            Ok(_) => c.ok("state dir", format_args!("{} writable", dir.display())),
            Err(e) => c.fail("state dir", format_args!("{}: {e}", dir.display())),
        }
    } else {
        c.ok(
            "state dir",
            format_args!("{} (created by the first reap)", dir.display()),
        );
    }
    if !books_there {
        c.ok("books", "none yet (the first submit or reap starts them)");
        for b in crate::policy::admit::budget_states(
            &settings.policy,
            &Default::default(),
            &Default::default(),
        ) {
            let l = b.line();
            let (what, detail) = l.split_once(": ").unwrap_or((&l, ""));
            c.ok(what, detail);
        }
        return;
    }
    let opened = crate::books::Books::open(dir, settings.lock_timeout).and_then(|mut b| {
        b.check()?;
        let n = b.len()?;
        let caps = b.budget(&settings.policy, std::time::SystemTime::now())?;
        let counts = b.counts()?;
        anyhow::Ok((n, caps, counts))
    });
    let (n, caps, counts) = match opened {
        Ok(v) => v,
        Err(e) => {
            c.fail("books", format_args!("{e:#}"));
            return;
        }
    };
    c.ok(
        "books",
        format_args!("{} ({n} ledger entries)", books_path.display()),
    );
    for b in &caps {
        let l = b.line();
        let (what, detail) = l.split_once(": ").unwrap_or((&l, ""));
        c.ok(what, detail);
    }
    for (key, max) in &settings.policy.max_in_flight {
        let (name, n) = limit_position(*key, &counts);
        c.ok(
            &format!("max_in_flight {name}"),
            format_args!("{n} in flight, limit {}", max.0),
        );
    }
}

/// A limit's name and how many jobs in flight count against it.
fn limit_position(key: crate::policy::LimitKey, counts: &crate::policy::Counts) -> (String, u64) {
    use crate::policy::LimitKey;
    let name = match key {
        LimitKey::All => "all",
        LimitKey::Gpu => "gpu",
        LimitKey::Gemini => "gemini",
        LimitKey::Claude => "claude",
        LimitKey::Auto => "auto",
    };
    let n = if key == LimitKey::All {
        // Saturating, as admission sums them: damaged counts never wrap.
        counts.values().fold(0u64, |a, n| a.saturating_add(*n))
    } else {
        counts.get(name).copied().unwrap_or(0)
    };
    (name.to_string(), n)
}

/// What to say about a project whose queue directories are missing: the
/// `init` command creates them. `None` when they are there.
fn init_advice(dir: &std::path::Path, has_root: bool, has_inbox: bool) -> Option<String> {
    let what = match (has_root, has_inbox) {
        (true, true) => return None,
        (false, _) => "no .agent-queue/ directory",
        (true, false) => "no .agent-queue/inbox/ directory",
    };
    Some(format!("{what}; run: ccl-delegate init {}", dir.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_limit_counts_its_provider_and_all_counts_every_one() {
        use crate::policy::LimitKey;
        let counts = crate::policy::Counts::from([("claude".into(), 2), ("gpu".into(), 3)]);
        let rows = [
            (LimitKey::All, "all", 5),
            (LimitKey::Claude, "claude", 2),
            (LimitKey::Gemini, "gemini", 0),
        ];
        for (key, name, n) in rows {
            assert_eq!(super::limit_position(key, &counts), (name.to_string(), n));
        }
    }

    #[test]
    fn missing_queue_directories_suggest_init() {
        let d = std::path::Path::new("/p/x");
        let rows = [
            (true, true, None),
            (
                false,
                false,
                Some("no .agent-queue/ directory; run: ccl-delegate init /p/x"),
            ),
            (
                false,
                true,
                Some("no .agent-queue/ directory; run: ccl-delegate init /p/x"),
            ),
            (
                true,
                false,
                Some("no .agent-queue/inbox/ directory; run: ccl-delegate init /p/x"),
            ),
        ];
        for (root, inbox, want) in rows {
            assert_eq!(
                super::init_advice(d, root, inbox).as_deref(),
                want,
                "{root} {inbox}"
            );
        }
    }
}
