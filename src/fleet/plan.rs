//! Rollout plans: which gateways install a release when, and when a rollout stops itself.
//!
//! A plan is retained on `affectgate/fleet/<channel>/plan` (JSON, [`RolloutPlan`]); each
//! gateway reports on its retained `affectgate/<gw>/fleet` ([`GatewayStatus`]). The operator's
//! tool keeps no state of its own: the broker holds plans and statuses, the repository holds
//! releases, so several operators (or a cron job) can act.
//!
//! * **Waves** (Bottlerocket's idea): a gateway's place is a number 0–99 from the sha256 of its
//!   id, so it is stable, spread evenly, and computable by the gateway alone. Canaries (listed
//!   ids) go first; wave `k` (cumulative percentages, e.g. `[10, 50, 100]`) starts
//!   `wave_delay_s × k` after the canaries' start.
//! * **Halt** (hawkBit's error threshold, AWS IoT Jobs' abort): once failures reach
//!   `max_failures` the plan is re-published with `halted` and its reason; a gateway never
//!   starts an install under a halted plan, so later waves never install.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The retained rollout plan of one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutPlan {
    pub channel: String,
    /// Release name in the repository (`arousal-v3`).
    pub release: String,
    /// Gateway ids that install first.
    #[serde(default)]
    pub canaries: Vec<String>,
    /// Cumulative share of the (other) gateways per wave, in percent, ascending, last = 100.
    pub waves: Vec<u8>,
    /// Seconds between the start of one wave and the next (the canaries are wave 0).
    pub wave_delay_s: u64,
    /// Failures (installs that failed or rolled back) that halt the rollout.
    pub max_failures: u32,
    /// Start of the rollout, seconds since the Unix epoch.
    pub started_s: u64,
    /// Set when the rollout was halted (automatically or by an operator): why.
    #[serde(default)]
    pub halted: Option<String>,
    /// Spread each wave's starts over this many seconds (a gateway's offset is its place
    /// within its wave scaled to it), so thousands of gateways do not hit the repository in
    /// the same second.
    #[serde(default)]
    pub jitter_s: u64,
}

/// What a gateway reports, retained, on `affectgate/<gw>/fleet`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub gateway: String,
    /// Release serving now.
    pub serving: Option<String>,
    /// Release it is working towards.
    pub target: Option<String>,
    /// `idle`, `waiting`, `downloading`, `self_test`, `health`, `succeeded`, `failed`,
    /// `rolled_back`, `refused`.
    pub state: String,
    #[serde(default)]
    pub reason: Option<String>,
    /// Seconds since the Unix epoch.
    pub at_s: u64,
}

impl GatewayStatus {
    /// Counts against the failure threshold.
    pub fn failed(&self) -> bool {
        matches!(self.state.as_str(), "failed" | "rolled_back")
    }
}

impl RolloutPlan {
    /// The plan's checks, each naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.waves.is_empty() || *self.waves.last().unwrap() != 100 {
            return Err("waves: cumulative percentages ending at 100, e.g. 10,50,100".into());
        }
        if self.waves.windows(2).any(|w| w[0] >= w[1]) || self.waves[0] == 0 {
            return Err("waves: strictly ascending percentages above 0".into());
        }
        if self.max_failures == 0 {
            return Err("max_failures: at least 1".into());
        }
        Ok(())
    }

    /// The gateway's wave: 0 for a canary, else 1 + the first wave whose cumulative share
    /// covers the gateway's place ([`place`]).
    pub fn wave_of(&self, gateway: &str) -> usize {
        if self.canaries.iter().any(|c| c == gateway) {
            return 0;
        }
        let p = place(gateway);
        1 + self
            .waves
            .iter()
            .position(|&w| p < w)
            .unwrap_or(self.waves.len() - 1)
    }

    /// When the gateway may start (seconds since the epoch): its wave's start plus its share
    /// of the jitter (canaries start at once).
    pub fn start_of(&self, gateway: &str) -> u64 {
        let wave = self.wave_of(gateway);
        let jitter = match wave {
            0 => 0,
            k => {
                // The wave's places lo..hi, spread evenly over the jitter.
                let lo = if k >= 2 { self.waves[k - 2] as u64 } else { 0 };
                let hi = (self.waves[k - 1] as u64).max(lo + 1);
                let p = (place(gateway) as u64).clamp(lo, hi - 1);
                self.jitter_s * (p - lo) / (hi - lo)
            }
        };
        self.started_s + self.wave_delay_s * wave as u64 + jitter
    }

    /// May `gateway` start installing at `now_s`? Never under a halted plan.
    pub fn may_install(&self, gateway: &str, now_s: u64) -> bool {
        self.halted.is_none() && now_s >= self.start_of(gateway)
    }

    /// The reason to halt, when the failures among `statuses` for this release reach the
    /// threshold (and the plan is not halted yet).
    pub fn halt_reason(&self, statuses: &[GatewayStatus]) -> Option<String> {
        if self.halted.is_some() {
            return None;
        }
        let failed: Vec<&GatewayStatus> = statuses
            .iter()
            .filter(|s| s.target.as_deref() == Some(&self.release) && s.failed())
            .collect();
        (failed.len() as u32 >= self.max_failures).then(|| {
            let who: Vec<String> = failed
                .iter()
                .map(|s| {
                    format!(
                        "{} ({})",
                        s.gateway,
                        s.reason.as_deref().unwrap_or(&s.state)
                    )
                })
                .collect();
            format!(
                "{} of max {} installs failed: {}",
                failed.len(),
                self.max_failures,
                who.join(", ")
            )
        })
    }
}

/// A gateway's place 0–99 in the rollout order: the first two bytes of sha256(id), mod 100.
pub fn place(gateway: &str) -> u8 {
    let h = Sha256::digest(gateway.as_bytes());
    (u16::from_be_bytes([h[0], h[1]]) % 100) as u8
}

/// `affectgate/fleet/<channel>/plan`.
pub fn plan_topic(channel: &str) -> String {
    format!("affectgate/fleet/{channel}/plan")
}

/// `affectgate/<gateway>/fleet`.
pub fn status_topic(gateway: &str) -> String {
    format!("affectgate/{gateway}/fleet")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> RolloutPlan {
        RolloutPlan {
            channel: "stable".into(),
            release: "arousal-v3".into(),
            canaries: vec!["lab-1".into()],
            waves: vec![10, 50, 100],
            wave_delay_s: 600,
            max_failures: 2,
            started_s: 1_000,
            halted: None,
            jitter_s: 0,
        }
    }

    #[test]
    fn jitter_spreads_a_wave_over_its_seconds_and_never_delays_canaries() {
        let mut p = plan();
        p.jitter_s = 300;
        assert_eq!(p.start_of("lab-1"), 1_000, "canary");
        let starts: Vec<u64> = (0..2_000)
            .map(|i| format!("home-{i}"))
            .filter(|g| p.wave_of(g) == 3)
            .map(|g| p.start_of(&g) - (1_000 + 3 * 600))
            .collect();
        assert!(starts.iter().all(|&o| o < 300), "within the jitter");
        // Wave 3 holds places 50–99: offsets 0–294 s, spread over the whole jitter.
        let (lo, hi) = (*starts.iter().min().unwrap(), *starts.iter().max().unwrap());
        assert!(lo < 10 && hi > 285, "{lo}..{hi}");
        let first_half = starts.iter().filter(|&&o| o < 150).count() as f64;
        let share = first_half / starts.len() as f64;
        assert!((0.4..0.6).contains(&share), "even: {share}");
        p.jitter_s = 0;
        assert!((0..100).all(|i| {
            let g = format!("home-{i}");
            p.start_of(&g) == 1_000 + 600 * p.wave_of(&g) as u64
        }));
    }

    #[test]
    fn waves_are_stable_and_spread_as_planned() {
        let p = plan();
        assert_eq!(p.wave_of("lab-1"), 0);
        let mut per_wave = [0usize; 4];
        for i in 0..10_000 {
            let id = format!("home-{i}");
            let w = p.wave_of(&id);
            assert_eq!(w, p.wave_of(&id), "stable");
            per_wave[w] += 1;
        }
        // 10 %, 40 %, 50 % of 10 000, within 2 percentage points.
        for (w, want) in [(1, 1_000), (2, 4_000), (3, 5_000)] {
            assert!(
                (per_wave[w] as i64 - want).abs() < 200,
                "wave {w}: {per_wave:?}"
            );
        }
        let g = (0..)
            .map(|i| format!("home-{i}"))
            .find(|id| p.wave_of(id) == 2)
            .unwrap();
        assert!(!p.may_install(&g, 1_000 + 1_199));
        assert!(p.may_install(&g, 1_000 + 1_200));
        assert!(p.may_install("lab-1", 1_000));
    }

    #[test]
    fn failures_at_the_threshold_halt_and_a_halted_plan_installs_nowhere() {
        let mut p = plan();
        let st = |g: &str, state: &str, target: &str| GatewayStatus {
            gateway: g.into(),
            serving: Some("arousal-v2".into()),
            target: Some(target.into()),
            state: state.into(),
            reason: Some(format!("{g}: self-test NaN")),
            at_s: 1_100,
        };
        let mut s = vec![
            st("lab-1", "failed", "arousal-v3"),
            st("a", "succeeded", "arousal-v3"),
        ];
        assert_eq!(p.halt_reason(&s), None, "1 of max 2");
        s.push(st("b", "failed", "arousal-v2")); // another release's failure does not count
        assert_eq!(p.halt_reason(&s), None);
        s.push(st("c", "rolled_back", "arousal-v3"));
        let why = p.halt_reason(&s).unwrap();
        assert!(
            why.starts_with("2 of max 2 installs failed")
                && why.contains("lab-1")
                && why.contains("c ("),
            "{why}"
        );
        p.halted = Some(why);
        assert!(!p.may_install("lab-1", u64::MAX));
        assert_eq!(p.halt_reason(&s), None, "already halted");
    }

    #[test]
    fn plans_are_checked() {
        let mut p = plan();
        assert_eq!(p.validate(), Ok(()));
        p.waves = vec![10, 50];
        assert!(p.validate().unwrap_err().contains("100"));
        p.waves = vec![50, 10, 100];
        assert!(p.validate().unwrap_err().contains("ascending"));
        p.waves = vec![100];
        p.max_failures = 0;
        assert!(p.validate().unwrap_err().contains("max_failures"));
    }
}
