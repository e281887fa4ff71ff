//! Whether `submit` may delegate one more job: budgets, then limits on jobs
//! in flight (policy.md). Pure: the I/O wrapper is `admission.rs`.

use std::time::SystemTime;

use super::{Cap, LimitKey, Policy, Provider};
use crate::inflight::Counts;
use crate::ledger::spend::Spend;

/// Allowed slack when comparing sums of floats to a cap: a cap of 0.30
/// must admit 0.10 + 0.20.
const EPSILON: f64 = 1e-9;

/// One cap's state: what the report, `status` and the refusal show.
#[derive(Clone, Debug, PartialEq)]
pub struct CapState {
    pub cap: Cap,
    pub spent: f64,
    pub reserved: f64,
    pub in_flight: u64,
}

impl CapState {
    /// `budget daily all: 12.3400 of 20.0000 CAD spent, 0.6000 reserved (4
    /// in flight)`: the line of `report`, `status` and `doctor`.
    pub fn line(&self) -> String {
        // Rounded as the JSON is, so both say the same amounts.
        format!(
            "budget {} {}: {:.4} of {:.4} CAD spent, {:.4} reserved ({} in flight)",
            self.cap.window.as_str(),
            self.cap.scope(),
            round4(self.spent),
            round4(self.cap.limit),
            round4(self.reserved),
            self.in_flight
        )
    }

    /// The object of the `budget` lists of `report --json` and `status
    /// --json`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "window": self.cap.window.as_str(),
            "provider": self.cap.scope(),
            "limit_cad": self.cap.limit,
            "spent_cad": round4(self.spent),
            "reserved_cad": round4(self.reserved),
            "in_flight": self.in_flight,
        })
    }
}

/// Four decimals, half away from zero, for the budget lines and JSON.
fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// The outcome of [`admit`].
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Admit,
    /// A cap would be passed: run the task locally (`local budget`, exit 10).
    Budget {
        state: CapState,
        estimate: f64,
    },
    /// A limit on jobs in flight is reached: try again later (exit 75).
    Defer {
        scope: &'static str,
        n: u64,
        max: u64,
    },
}

impl Decision {
    /// The stdout line of a refusal (`local budget` / `deferred ...`).
    pub fn stdout_line(&self) -> Option<String> {
        match self {
            Decision::Admit => None,
            Decision::Budget { .. } => Some("local budget".into()),
            Decision::Defer { scope, n, max } => {
                Some(format!("deferred {scope}: {n} in flight, limit {max}"))
            }
        }
    }

    /// The stderr line of a budget refusal, as policy.md words it.
    pub fn stderr_line(&self) -> Option<String> {
        match self {
            Decision::Budget { state, estimate } => Some(format!(
                "{} {} budget {:.2} CAD: spent {:.2}, reserved {:.2} ({} in flight), this job ~{:.2}",
                state.cap.scope(),
                state.cap.window.as_str(),
                state.cap.limit,
                state.spent,
                state.reserved,
                state.in_flight,
                estimate
            )),
            _ => None,
        }
    }
}

/// The estimate of one job on `provider`: the mean of that provider's last
/// completed costs (`auto`, or a provider name we do not know: all
/// providers').
pub fn estimate(spend: &Spend, provider: &str) -> f64 {
    match Provider::parse(provider) {
        Some(p) if p != Provider::Auto => spend.mean_recent(p.as_str()),
        _ => spend.mean_recent("all"),
    }
}

/// Spent, reserved and in flight for one cap.
pub fn cap_state(cap: Cap, spend: &Spend, in_flight: &Counts, now: SystemTime) -> CapState {
    let scope = cap.scope();
    let spent = spend.spent(cap.window, scope, now);
    let (reserved, n) = match cap.provider {
        Some(p) => {
            let n = in_flight.get(p.as_str()).copied().unwrap_or(0);
            (n as f64 * estimate(spend, p.as_str()), n)
        }
        None => in_flight.iter().fold((0.0, 0), |(r, n), (prov, k)| {
            (r + *k as f64 * estimate(spend, prov), n + k)
        }),
    };
    CapState {
        cap,
        spent,
        reserved,
        in_flight: n,
    }
}

/// Every configured cap's state, in [`Policy::caps`] order.
pub fn budget_states(
    policy: &Policy,
    spend: &Spend,
    in_flight: &Counts,
    now: SystemTime,
) -> Vec<CapState> {
    policy
        .caps()
        .into_iter()
        .map(|c| cap_state(c, spend, in_flight, now))
        .collect()
}

/// Budgets first (a refusal there is final: the task runs locally now
/// rather than after a wait that cannot change the answer), then the
/// provider's own limit, then the limit on all.
pub fn admit(
    policy: &Policy,
    spend: &Spend,
    in_flight: &Counts,
    provider: Provider,
    now: SystemTime,
) -> Decision {
    let est = estimate(spend, provider.as_str());
    let caps = policy.caps();
    // The provider's own caps first, as for limits: when several caps are
    // passed, the most specific one is named.
    let own = caps.iter().filter(|c| c.provider == Some(provider));
    let all = caps.iter().filter(|c| c.provider.is_none());
    for &cap in own.chain(all) {
        let state = cap_state(cap, spend, in_flight, now);
        if state.spent + state.reserved + est > cap.limit + EPSILON {
            return Decision::Budget {
                state,
                estimate: est,
            };
        }
    }
    let own = match provider {
        Provider::Gpu => LimitKey::Gpu,
        Provider::Gemini => LimitKey::Gemini,
        Provider::Claude => LimitKey::Claude,
        Provider::Auto => LimitKey::Auto,
    };
    let n_own = in_flight.get(provider.as_str()).copied().unwrap_or(0);
    let n_all: u64 = in_flight.values().sum();
    for (key, scope, n) in [
        (own, provider.as_str(), n_own),
        // The contract's form names the task's provider, whichever limit
        // is reached: `deferred gemini: 3 in flight, limit 3` for `all: 3`.
        (LimitKey::All, provider.as_str(), n_all),
    ] {
        if let Some(max) = policy.max_in_flight.get(&key)
            && n >= max.0
        {
            return Decision::Defer {
                scope,
                n,
                max: max.0,
            };
        }
    }
    Decision::Admit
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Entry;
    use crate::policy::{Budget, Cad, Caps, Count};
    use std::collections::BTreeMap;

    fn now() -> SystemTime {
        crate::timestamp::parse("2026-11-24T12:00:00Z").unwrap()
    }

    fn entry(provider: &str, cost: f64, finished_at: &str) -> Entry {
        Entry {
            job_id: Some("j".into()),
            project: "/p".into(),
            task: "t.md".into(),
            provider: provider.into(),
            model: None,
            status: "completed".into(),
            cost_cad: cost,
            tokens_in: None,
            tokens_out: None,
            delegated_at: finished_at.into(),
            finished_at: finished_at.into(),
            step: false,
        }
    }

    /// claude spent 4.80 today (mean 0.15 over its completed jobs once the
    /// yesterday entries count), gemini 1.00 this month.
    fn spend() -> Spend {
        let mut s = Spend::default();
        for _ in 0..2 {
            s.fold(&entry("claude", 0.15, "2026-11-23T10:00:00Z"));
        }
        s.fold(&entry("claude", 4.50, "2026-11-24T10:00:00Z"));
        s.fold(&entry("claude", 0.15, "2026-11-24T11:00:00Z"));
        s.fold(&entry("gemini", 1.00, "2026-11-02T11:00:00Z"));
        s
    }

    fn policy(
        daily_all: Option<f64>,
        claude_daily: Option<f64>,
        limits: &[(LimitKey, u64)],
    ) -> Policy {
        let mut providers = BTreeMap::new();
        if let Some(c) = claude_daily {
            providers.insert(
                Provider::Claude,
                Caps {
                    daily_cad: Some(Cad(c)),
                    monthly_cad: None,
                },
            );
        }
        Policy {
            budget: Budget {
                daily_cad: daily_all.map(Cad),
                monthly_cad: None,
                providers,
            },
            max_in_flight: limits.iter().map(|(k, v)| (*k, Count(*v))).collect(),
            fallback: BTreeMap::new(),
        }
    }

    fn counts(pairs: &[(&str, u64)]) -> Counts {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn admission_table() {
        use LimitKey as L;
        use Provider::*;
        let s = spend();
        // claude mean = (0.15 + 0.15 + 4.50 + 0.15) / 4 = 1.2375
        let rows: Vec<(Policy, Counts, Provider, &str)> = vec![
            (policy(None, None, &[]), counts(&[]), Claude, "admit"),
            (
                policy(Some(100.0), None, &[]),
                counts(&[("claude", 2)]),
                Claude,
                "admit",
            ),
            // 4.65 spent + 2 * 1.2375 + 1.2375 > 5
            (
                policy(None, Some(5.0), &[]),
                counts(&[("claude", 2)]),
                Claude,
                "claude daily budget 5.00 CAD: spent 4.65, reserved 2.48 (2 in flight), this job ~1.24",
            ),
            // both caps passed: the provider's own is named
            (
                policy(Some(5.0), Some(5.0), &[]),
                counts(&[("claude", 2)]),
                Claude,
                "claude daily budget 5.00 CAD: spent 4.65, reserved 2.48 (2 in flight), this job ~1.24",
            ),
            // the claude cap does not apply to gemini
            (
                policy(None, Some(5.0), &[]),
                counts(&[("claude", 2)]),
                Gemini,
                "admit",
            ),
            // gemini has no completed job today: its spend today is 0, estimate 1.00
            (policy(Some(5.9), None, &[]), counts(&[]), Gemini, "admit"),
            (
                policy(Some(5.6), None, &[]),
                counts(&[]),
                Gemini,
                "all daily budget 5.60 CAD: spent 4.65, reserved 0.00 (0 in flight), this job ~1.00",
            ),
            // exactly at the cap is allowed
            (policy(Some(5.65), None, &[]), counts(&[]), Gemini, "admit"),
            // auto in flight reserve the all-provider mean
            // (gpu has no completed job: its estimate is 0)
            (
                policy(Some(5.8), None, &[]),
                counts(&[("auto", 1)]),
                Gpu,
                "all daily budget 5.80 CAD: spent 4.65, reserved 1.19 (1 in flight), this job ~0.00",
            ),
            (
                policy(None, None, &[(L::Claude, 2)]),
                counts(&[("claude", 1)]),
                Claude,
                "admit",
            ),
            (
                policy(None, None, &[(L::Claude, 2)]),
                counts(&[("claude", 2)]),
                Claude,
                "deferred claude: 2 in flight, limit 2",
            ),
            (
                policy(None, None, &[(L::Claude, 2)]),
                counts(&[("claude", 2)]),
                Gemini,
                "admit",
            ),
            (
                policy(None, None, &[(L::All, 3)]),
                counts(&[("claude", 2), ("gpu", 1)]),
                Gemini,
                "deferred gemini: 3 in flight, limit 3",
            ),
            (
                policy(None, None, &[(L::All, 0)]),
                counts(&[]),
                Gpu,
                "deferred gpu: 0 in flight, limit 0",
            ),
            // a budget refusal wins over a deferral
            (
                policy(None, Some(1.0), &[(L::Claude, 1)]),
                counts(&[("claude", 1)]),
                Claude,
                "claude daily budget 1.00 CAD: spent 4.65, reserved 1.24 (1 in flight), this job ~1.24",
            ),
        ];
        for (i, (p, c, prov, want)) in rows.iter().enumerate() {
            let d = admit(p, &s, c, *prov, now());
            let got = match &d {
                Decision::Admit => "admit".to_string(),
                Decision::Budget { .. } => d.stderr_line().unwrap(),
                Decision::Defer { .. } => d.stdout_line().unwrap(),
            };
            assert_eq!(&got, want, "row {i}");
        }
    }

    #[test]
    fn monthly_windows_and_the_next_day() {
        let s = spend();
        let mut p = policy(None, None, &[]);
        p.budget.monthly_cad = Some(Cad(6.0));
        // this month: 0.30 + 4.65 + 1.00 = 5.95; an auto job (mean of all, 1.19) passes it
        let d = admit(&p, &s, &counts(&[]), Provider::Auto, now());
        assert_eq!(
            d.stderr_line().unwrap(),
            "all monthly budget 6.00 CAD: spent 5.95, reserved 0.00 (0 in flight), this job ~1.19"
        );
        // next month nothing is spent
        let later = crate::timestamp::parse("2026-12-01T00:00:00Z").unwrap();
        assert_eq!(
            admit(&p, &s, &counts(&[]), Provider::Auto, later),
            Decision::Admit
        );
    }
}
