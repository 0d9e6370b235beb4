//! The run's report: per scenario the faults injected, the calls placed, answered,
//! abandoned and lost (by cause), each invariant's verdict and the failover times; over
//! the run, failover percentiles. Printed for people and written as JSON for programs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::history::FaultEvent;
use crate::invariants::Verdict;
use crate::proxy::ProxyCounts;

#[derive(Clone, Debug, Default, Serialize)]
pub struct CallFigures {
    pub placed: u64,
    pub answered: u64,
    pub abandoned: u64,
    pub lost: u64,
    pub lost_by_cause: BTreeMap<String, u64>,
    /// Calls placed that no node recorded (their node was faulted, or a violation).
    pub no_record: u64,
    /// Calls SIPp counted as failed.
    pub sipp_failed: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    pub passed: bool,
    /// Set when the scenario could not run to its checks (cluster did not start...).
    pub error: Option<String>,
    pub duration_ms: u64,
    pub faults: Vec<FaultEvent>,
    pub faulted_nodes: Vec<String>,
    pub calls: CallFigures,
    pub invariants: Vec<Verdict>,
    /// From the fault to a new leader agreed by the survivors.
    pub failover_ms: Option<u64>,
    /// From the fault to the next call answered anywhere in the cluster.
    pub progress_ms: Option<u64>,
    pub proxy: ProxyCounts,
    /// The run's files (configs, node logs, SIPp logs), when kept.
    pub run_dir: Option<String>,
    /// What the runner saw go wrong outside the invariants (e.g. agents not ready again
    /// after healing).
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Percentiles {
    pub count: usize,
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
}

impl Percentiles {
    pub fn of(mut xs: Vec<u64>) -> Percentiles {
        xs.sort_unstable();
        let pick = |q: f64| {
            if xs.is_empty() {
                None
            } else {
                // Nearest rank: the smallest value with at least q of the samples at or below.
                let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
                Some(xs[rank - 1])
            }
        };
        Percentiles {
            count: xs.len(),
            p50: pick(0.50),
            p99: pick(0.99),
            max: xs.last().copied(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub seed: u64,
    pub passed: bool,
    pub scenarios: Vec<ScenarioReport>,
    pub failover_ms: Percentiles,
    pub progress_ms: Percentiles,
}

impl Report {
    pub fn new(seed: u64, scenarios: Vec<ScenarioReport>) -> Report {
        let failover = scenarios.iter().filter_map(|s| s.failover_ms).collect();
        let progress = scenarios.iter().filter_map(|s| s.progress_ms).collect();
        Report {
            seed,
            passed: !scenarios.is_empty() && scenarios.iter().all(|s| s.passed),
            failover_ms: Percentiles::of(failover),
            progress_ms: Percentiles::of(progress),
            scenarios,
        }
    }

    /// The report as people read it.
    pub fn render(&self) -> String {
        let mut out: String = self.scenarios.iter().map(ScenarioReport::render).collect();
        out.push_str(&self.summary());
        out
    }

    /// The closing lines: failover percentiles and the verdict.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "failover over {} measured: p50 {} p99 {} max {}; next answer p50 {} p99 {}",
            self.failover_ms.count,
            ms(self.failover_ms.p50),
            ms(self.failover_ms.p99),
            ms(self.failover_ms.max),
            ms(self.progress_ms.p50),
            ms(self.progress_ms.p99)
        );
        let _ = writeln!(
            out,
            "chaos seed {}: {}",
            self.seed,
            if self.passed {
                "every invariant held"
            } else {
                "INVARIANTS FAILED"
            }
        );

        out
    }
}

fn ms(x: Option<u64>) -> String {
    x.map_or("-".to_string(), |v| format!("{v} ms"))
}

impl ScenarioReport {
    /// One scenario's block of the printed report.
    pub fn render(&self) -> String {
        let s = self;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "== {} : {} ({:.1} s)",
            s.name,
            if s.passed { "PASS" } else { "FAIL" },
            s.duration_ms as f64 / 1000.0
        );
        if let Some(e) = &s.error {
            let _ = writeln!(out, "   error: {e}");
        }
        for f in &s.faults {
            let _ = writeln!(out, "   fault: {}", f.what);
        }
        if !s.faulted_nodes.is_empty() {
            let _ = writeln!(out, "   faulted nodes: {}", s.faulted_nodes.join(", "));
        }
        let c = &s.calls;
        let _ = writeln!(
            out,
            "   calls: placed {} answered {} abandoned {} lost {} no-record {} (sipp failed {})",
            c.placed, c.answered, c.abandoned, c.lost, c.no_record, c.sipp_failed
        );
        for (cause, n) in &c.lost_by_cause {
            let _ = writeln!(out, "     lost {n}: {cause}");
        }
        let _ = writeln!(
            out,
            "   failover {}  next answer {}  proxy: relayed {} dropped {} delayed {} duplicated {}",
            ms(s.failover_ms),
            ms(s.progress_ms),
            s.proxy.relayed,
            s.proxy.dropped,
            s.proxy.delayed,
            s.proxy.duplicated
        );
        for v in &s.invariants {
            let _ = writeln!(
                out,
                "   [{}] {}: {}",
                if v.passed { "ok" } else { "FAIL" },
                v.name,
                v.detail
            );
        }
        for n in &s.notes {
            let _ = writeln!(out, "   note: {n}");
        }
        if let Some(d) = &s.run_dir {
            let _ = writeln!(out, "   files: {d}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = Percentiles::of((1..=100).collect());
        assert_eq!((p.p50, p.p99, p.max), (Some(50), Some(99), Some(100)));
        let one = Percentiles::of(vec![7]);
        assert_eq!((one.p50, one.p99), (Some(7), Some(7)));
        assert_eq!(Percentiles::of(Vec::new()).p50, None);
    }

    #[test]
    fn a_failed_scenario_fails_the_report() {
        let ok = ScenarioReport {
            name: "a".into(),
            passed: true,
            failover_ms: Some(1200),
            ..ScenarioReport::default()
        };
        let bad = ScenarioReport {
            name: "b".into(),
            ..ScenarioReport::default()
        };
        assert!(Report::new(1, vec![ok.clone()]).passed);
        let r = Report::new(1, vec![ok, bad]);
        assert!(!r.passed);
        assert_eq!(r.failover_ms.p50, Some(1200));
        assert!(r.render().contains("== b : FAIL"));
    }
}
