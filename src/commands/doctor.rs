//! `doctor`: one line per check of what a cron job or dispatcher depends on.
//! Run it after editing the crontab or the config file.

use crate::cli::DoctorArgs;
use crate::client::ClientError;
use crate::config::{KeySource, Settings};
use crate::error::{Code, fail};
use crate::queue::Queue;

struct Checks {
    failed: u32,
}

impl Checks {
    fn ok(&mut self, what: &str, detail: impl std::fmt::Display) {
        println!("ok    {what}: {detail}");
    }
    fn fail(&mut self, what: &str, detail: impl std::fmt::Display) {
        self.failed += 1;
        println!("FAIL  {what}: {detail}");
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
    match settings.api_url() {
        Ok(u) => c.ok(
            "api url",
            format_args!("{u} (from {})", settings.api_url_from),
        ),
        Err(e) => c.fail("api url", e),
    }
    match (&settings.key_source, settings.api_key()) {
        (KeySource::Env, Ok(_)) => c.ok("api key", "from SECUTOOLS_API_KEY"),
        (KeySource::File(p), Ok(_)) => {
            c.ok("api key", format_args!("from {} (mode 600)", p.display()))
        }
        (_, Err(e)) => c.fail("api key", e),
        (KeySource::Missing, Ok(_)) => unreachable!("a missing key is an error"),
    }
    if args.offline {
        println!("skip  service: --offline");
    } else if let Ok(client) = settings.client() {
        // A job id that cannot exist: 404 proves the service answers and
        // accepted the key.
        match client.status("ccl-delegate-doctor-probe") {
            Err(ClientError::NotFound { .. }) | Ok(_) => c.ok("service", "reachable, key accepted"),
            Err(e @ ClientError::Auth { .. }) => {
                c.fail("service", format_args!("the key was refused: {e}"))
            }
            Err(e) => c.fail("service", e),
        }
    } else {
        c.fail("service", "not tried: the URL or key above is missing");
    }
    let projects = super::status::projects_for_person(&args.projects, settings).unwrap_or_default();
    if projects.is_empty() {
        c.fail(
            "projects",
            "none configured: list `projects` in the config file or pass --project",
        );
    }
    for dir in &projects {
        let q = Queue::at(dir);
        let what = format!("project {}", q.project.display());
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
    if c.failed > 0 {
        return Err(fail(Code::Other, format!("{} check(s) failed", c.failed)));
    }
    Ok(Code::Ok)
}
