//! Whether `submit` may delegate one more job: budgets, then the price
//! rule, then limits on jobs in flight (policy.md). Pure: the facts come
//! from the books (`crate::books`), which also carry out the decision.

use std::collections::BTreeMap;

use super::{Cap, LimitKey, Policy, Provider, Window};

/// Provider → jobs in flight.
pub type Counts = BTreeMap<String, u64>;

/// Allowed slack when comparing sums of floats to a cap: a cap of 0.30
/// must admit 0.10 + 0.20.
const EPSILON: f64 = 1e-9;

/// What the ledger says about spending, as of one instant: the facts an
/// admission needs, read by the books in one transaction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Spending {
    /// Spent today (UTC), by provider and `all`.
    pub daily: BTreeMap<String, f64>,
    /// Spent this month (UTC), by provider and `all`.
    pub monthly: BTreeMap<String, f64>,
    /// The mean cost of the last completed jobs, by provider and `all`;
    /// absent where no job of it completed.
    pub means: BTreeMap<String, f64>,
    /// For a provider in flight: one of its jobs in flight (its id, or
    /// its task while the id is not known), named by the price rule.
    pub probes: BTreeMap<String, String>,
}

impl Spending {
    /// Spent in a window by `scope` (a provider or `all`); never below 0.
    pub fn spent(&self, window: Window, scope: &str) -> f64 {
        let map = match window {
            Window::Daily => &self.daily,
            Window::Monthly => &self.monthly,
        };
        map.get(scope).copied().unwrap_or(0.0).max(0.0)
    }
}
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
    /// The provider's price is not known yet and one of its jobs is in
    /// flight: try again once it ends (exit 75).
    PriceUnknown {
        provider: Provider,
        until: String,
    },
    /// The books cannot be read or written: nothing may be spent without
    /// them (exit 75).
    BooksUnavailable {
        provider: Provider,
    },
    /// The fleet's database cannot be reached: nothing may be spent
    /// without its admission (exit 75).
    FleetUnreachable {
        provider: Provider,
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
            Decision::PriceUnknown { provider, until } => Some(format!(
                "deferred {provider}: price unknown until job {} ends",
                crate::text::clip(until, 80)
            )),
            Decision::BooksUnavailable { provider } => {
                Some(format!("deferred {provider}: books unavailable"))
            }
            Decision::FleetUnreachable { provider } => {
                Some(format!("deferred {provider}: fleet database unreachable"))
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
/// providers'), else the provider's `estimate_cad` from the config; `None`
/// when the price is not known yet.
pub fn estimate(policy: &Policy, spending: &Spending, provider: &str) -> Option<f64> {
    let known = Provider::parse(provider);
    let scope = match known {
        Some(p) if p != Provider::Auto => p.as_str(),
        _ => "all",
    };
    spending.means.get(scope).copied().or_else(|| {
        known
            .and_then(|p| policy.budget.providers.get(&p))
            .and_then(|c| c.estimate_cad)
            .map(|c| c.0)
    })
}

/// Spent, reserved and in flight for one cap.
pub fn cap_state(cap: Cap, policy: &Policy, spending: &Spending, in_flight: &Counts) -> CapState {
    let spent = spending.spent(cap.window, cap.scope());
    let est = |p: &str| estimate(policy, spending, p).unwrap_or(0.0);
    let (reserved, n) = match cap.provider {
        Some(p) => {
            let n = in_flight.get(p.as_str()).copied().unwrap_or(0);
            (n as f64 * est(p.as_str()), n)
        }
        None => in_flight.iter().fold((0.0, 0u64), |(r, n), (prov, k)| {
            (r + *k as f64 * est(prov), n.saturating_add(*k))
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
pub fn budget_states(policy: &Policy, spending: &Spending, in_flight: &Counts) -> Vec<CapState> {
    policy
        .caps()
        .into_iter()
        .map(|c| cap_state(c, policy, spending, in_flight))
        .collect()
}

/// Budgets first (a refusal there is final: the task runs locally now
/// rather than after a wait that cannot change the answer), then the price
/// rule (a provider whose price is not known has one job in flight under a
/// budget), then the provider's own limit, then the limit on all.
pub fn admit(
    policy: &Policy,
    spending: &Spending,
    in_flight: &Counts,
    provider: Provider,
) -> Decision {
    let est = estimate(policy, spending, provider.as_str());
    let caps = policy.caps();
    // The provider's own caps first, as for limits: when several caps are
    // passed, the most specific one is named.
    let own = caps.iter().filter(|c| c.provider == Some(provider));
    let all = caps.iter().filter(|c| c.provider.is_none());
    let mut budgeted = false;
    for &cap in own.chain(all) {
        budgeted = true;
        let state = cap_state(cap, policy, spending, in_flight);
        if state.spent + state.reserved + est.unwrap_or(0.0) > cap.limit + EPSILON {
            return Decision::Budget {
                state,
                estimate: est.unwrap_or(0.0),
            };
        }
    }
    let n_own = in_flight.get(provider.as_str()).copied().unwrap_or(0);
    if budgeted && est.is_none() && n_own > 0 {
        return Decision::PriceUnknown {
            provider,
            until: spending
                .probes
                .get(provider.as_str())
                .cloned()
                .unwrap_or_else(|| "in flight".into()),
        };
    }
    // `claude-code` runs locally: it is never admitted and has no limit.
    let own = match provider {
        Provider::Gpu => Some(LimitKey::Gpu),
        Provider::Gemini => Some(LimitKey::Gemini),
        Provider::Claude => Some(LimitKey::Claude),
        Provider::Auto => Some(LimitKey::Auto),
        Provider::ClaudeCode => None,
    };
    let n_all: u64 = in_flight.values().fold(0u64, |a, n| a.saturating_add(*n));
    let limits = own.map(|k| (k, n_own)).into_iter();
    for (key, n) in limits.chain([(LimitKey::All, n_all)]) {
        if let Some(max) = policy.max_in_flight.get(&key)
            && n >= max.0
        {
            // The contract's form names the task's provider, whichever
            // limit is reached: `deferred gemini: 3 in flight, limit 3`
            // for `all: 3`.
            return Decision::Defer {
                scope: provider.as_str(),
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
    use crate::policy::{Budget, Cad, Caps, Count};

    /// claude spent 4.65 today (mean 1.2375 over its last completed jobs),
    /// 1.00 of gemini this month, 5.95 of all this month; all: 1.19.
    fn spending() -> Spending {
        let m = |pairs: &[(&str, f64)]| pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        Spending {
            daily: m(&[("claude", 4.65), ("all", 4.65)]),
            monthly: m(&[("claude", 4.95), ("gemini", 1.0), ("all", 5.95)]),
            means: m(&[("claude", 1.2375), ("gemini", 1.0), ("all", 1.19)]),
            probes: [("gpu".to_string(), "j-7".to_string())].into(),
        }
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
                    ..Caps::default()
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

    fn said(d: &Decision) -> String {
        match d {
            Decision::Admit => "admit".to_string(),
            Decision::Budget { .. } => d.stderr_line().unwrap(),
            _ => d.stdout_line().unwrap(),
        }
    }

    #[test]
    fn admission_table() {
        use LimitKey as L;
        use Provider::*;
        let s = spending();
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
            (policy(Some(5.9), None, &[]), counts(&[]), Gemini, "admit"),
            (
                policy(Some(5.6), None, &[]),
                counts(&[]),
                Gemini,
                "all daily budget 5.60 CAD: spent 4.65, reserved 0.00 (0 in flight), this job ~1.00",
            ),
            // exactly at the cap is allowed
            (policy(Some(5.65), None, &[]), counts(&[]), Gemini, "admit"),
            // auto in flight reserve the all-provider mean; gpu's price is
            // unknown: its first job goes, estimated 0
            (
                policy(Some(5.8), None, &[]),
                counts(&[("auto", 1)]),
                Gpu,
                "all daily budget 5.80 CAD: spent 4.65, reserved 1.19 (1 in flight), this job ~0.00",
            ),
            (policy(Some(100.0), None, &[]), counts(&[]), Gpu, "admit"),
            // ...and while it runs, no second one under a budget
            (
                policy(Some(100.0), None, &[]),
                counts(&[("gpu", 1)]),
                Gpu,
                "deferred gpu: price unknown until job j-7 ends",
            ),
            // without a budget the price does not matter
            (policy(None, None, &[]), counts(&[("gpu", 5)]), Gpu, "admit"),
            // a claude-only budget does not hold gpu back
            (
                policy(None, Some(5.0), &[]),
                counts(&[("gpu", 5)]),
                Gpu,
                "admit",
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
            // counts never wrap
            (
                policy(None, None, &[(L::All, 5)]),
                counts(&[("claude", u64::MAX), ("gpu", 3)]),
                Gemini,
                "deferred gemini: 18446744073709551615 in flight, limit 5",
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
            assert_eq!(&said(&admit(p, &s, c, *prov)), want, "row {i}");
        }
    }

    #[test]
    fn an_estimate_from_the_config_stands_in_until_a_job_completes() {
        let mut p = policy(Some(1.0), None, &[]);
        p.budget.providers.insert(
            Provider::Gpu,
            Caps {
                estimate_cad: Some(Cad(0.4)),
                ..Caps::default()
            },
        );
        let s = Spending::default();
        // 0.4 + 0.4 + this 0.4 > 1: the third is refused, none deferred
        assert_eq!(
            said(&admit(&p, &s, &counts(&[("gpu", 1)]), Provider::Gpu)),
            "admit"
        );
        assert_eq!(
            said(&admit(&p, &s, &counts(&[("gpu", 2)]), Provider::Gpu)),
            "all daily budget 1.00 CAD: spent 0.00, reserved 0.80 (2 in flight), this job ~0.40"
        );
    }

    #[test]
    fn monthly_windows_and_negative_sums() {
        let s = spending();
        let mut p = policy(None, None, &[]);
        p.budget.monthly_cad = Some(Cad(6.0));
        // this month: 5.95; an auto job (mean of all, 1.19) passes it
        assert_eq!(
            said(&admit(&p, &s, &counts(&[]), Provider::Auto)),
            "all monthly budget 6.00 CAD: spent 5.95, reserved 0.00 (0 in flight), this job ~1.19"
        );
        // a sum below zero (a damaged store) counts as nothing spent, never
        // as room to spend more
        let neg = Spending {
            monthly: [("all".to_string(), -1000.0)].into(),
            ..spending()
        };
        assert_eq!(neg.spent(Window::Monthly, "all"), 0.0);
        assert_eq!(
            said(&admit(&p, &neg, &counts(&[("auto", 5)]), Provider::Auto)),
            "all monthly budget 6.00 CAD: spent 0.00, reserved 5.95 (5 in flight), this job ~1.19"
        );
    }
}
