//! A benchmark of the state machine alone: routing decisions per second with many agents
//! and a long line, and the size of a waiting call.
//!
//! The crate reads no clock, so the caller passes one (`now`, time since any fixed
//! point); `carillon bench routing` prints the figures. Setup: one queue, `agents` agents
//! all busy, `waiting` calls in line. One decision is an `Ended` that frees an agent, who
//! is offered the head of the line at once; each cycle also answers that offer
//! (`Connected`) and enqueues a new call so the line stays `waiting` long.
//! `decisions_per_sec` times the deciding `Ended` commands alone (clock read around each);
//! `cycles_per_sec` times whole cycles (three commands and the harness).

use std::time::Duration;

use crate::{Acd, AcdLimits, Arrival, Command, Event, Party, QueueConfig};

/// What one run measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BenchFigures {
    /// Decisions (commands that ended in an offer) per second spent in those commands.
    pub decisions_per_sec: f64,
    /// Whole connect / end / enqueue cycles per second of wall time.
    pub cycles_per_sec: f64,
    /// postcard-serialized snapshot size per waiting call: (size with the line full -
    /// size with the same agents and an empty line) / waiting.
    pub bytes_per_waiting_call: f64,
    /// In-memory estimate per waiting call: the call record and line entry structs plus
    /// their strings' capacity, plus two B-tree slots; allocator overhead not counted.
    pub heap_bytes_per_waiting_call: f64,
    pub decisions: usize,
    pub elapsed: Duration,
}

fn call_id(i: usize) -> String {
    format!("call-{i:08}")
}

fn enqueue(acd: &mut Acd, i: usize, at: u64) -> Vec<Event> {
    let cmd = Command::Enqueue(Arrival {
        call: call_id(i),
        queue: "support".into(),
        caller: format!("+1555{i:07}"),
        dialled: "100".into(),
        owner: 1,
        site: "hq".into(),
        at,
        ..Arrival::default()
    });
    acd.apply(cmd).unwrap_or_default()
}

/// Builds the setup: `agents` agents each ringing one call, `waiting` calls in line.
fn setup(agents: usize, waiting: usize) -> (Acd, Vec<(String, String)>) {
    let mut acd = Acd::with_limits(AcdLimits {
        calls_max: agents + waiting + 16,
        agents_max: agents + 16,
        ..AcdLimits::default()
    });
    let queue = QueueConfig {
        name: "support".into(),
        skill: "support".into(),
        ring_timeout_ms: 30_000,
        ..QueueConfig::default()
    };
    let _ = acd.apply(Command::ConfigureQueue { queue, at: 0 });
    for a in 0..agents {
        let _ = acd.apply(Command::AgentLogin {
            agent: format!("agent-{a:05}"),
            skills: vec!["support".into()],
            node: 1,
            site: "hq".into(),
            at: 0,
        });
    }
    let mut ringing = Vec::new();
    for i in 0..agents + waiting {
        ringing.extend(offers(&enqueue(&mut acd, i, 1)));
    }
    (acd, ringing)
}

fn offers(events: &[Event]) -> impl Iterator<Item = (String, String)> + '_ {
    events.iter().filter_map(|e| match e {
        Event::Offered { call, agent, .. } => Some((call.clone(), agent.clone())),
        _ => None,
    })
}

/// Runs `decisions` decisions (bounded; at least one) and measures them with `now`.
pub fn run(
    agents: usize,
    waiting: usize,
    decisions: usize,
    now: impl Fn() -> Duration,
) -> BenchFigures {
    let agents = agents.max(1);
    let (empty, _) = setup(agents, 0);
    let (mut acd, mut ringing) = setup(agents, waiting);
    let base = postcard::to_stdvec(&empty).map_or(0, |b| b.len());
    let full = postcard::to_stdvec(&acd).map_or(0, |b| b.len());
    let bytes_per_waiting_call = if waiting == 0 {
        0.0
    } else {
        full.saturating_sub(base) as f64 / waiting as f64
    };
    let heap_bytes_per_waiting_call = heap_estimate(&acd, waiting);

    let mut next_call = agents + waiting;
    let mut t: u64 = 2;
    let mut made = 0;
    let mut deciding = Duration::ZERO;
    let start = now();
    while made < decisions.max(1) {
        let Some((call, agent)) = ringing.pop() else {
            break;
        };
        t += 1;
        let _ = acd.apply(Command::Connected {
            call: call.clone(),
            agent,
            at: t,
        });
        let before_end = now();
        let events = acd
            .apply(Command::Ended {
                call,
                by: Party::Caller,
                at: t,
            })
            .unwrap_or_default();
        deciding += now().saturating_sub(before_end);
        let before = ringing.len();
        ringing.extend(offers(&events));
        if ringing.len() > before {
            made += 1;
        }
        ringing.extend(offers(&enqueue(&mut acd, next_call, t)));
        next_call += 1;
    }
    let elapsed = now().saturating_sub(start);
    let secs = elapsed.as_secs_f64().max(1e-9);
    BenchFigures {
        decisions_per_sec: made as f64 / deciding.as_secs_f64().max(1e-9),
        cycles_per_sec: made as f64 / secs,
        bytes_per_waiting_call,
        heap_bytes_per_waiting_call,
        decisions: made,
        elapsed,
    }
}

fn heap_estimate(acd: &Acd, waiting: usize) -> f64 {
    let per_call = acd.waiting_call_heap_bytes();
    if waiting == 0 {
        0.0
    } else {
        per_call as f64 / waiting as f64
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // The benchmark's wall clock, test only.

    use super::*;

    #[test]
    fn bench_runs_and_reports() {
        let clock = std::time::Instant::now();
        let figures = run(50, 200, 500, || clock.elapsed());
        assert_eq!(figures.decisions, 500);
        assert!(figures.bytes_per_waiting_call > 10.0);
        assert!(figures.heap_bytes_per_waiting_call > 100.0);
    }

    /// The figure the issue asks for; run with
    /// `cargo test --release -p carillon-routing bench_full -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark: run it in release"]
    fn bench_full() {
        let clock = std::time::Instant::now();
        let f = run(1_000, 10_000, 200_000, || clock.elapsed());
        println!(
            "bench: routing_decisions_per_sec {:.0} decisions/s",
            f.decisions_per_sec
        );
        println!(
            "bench: routing_cycles_per_sec {:.0} cycles/s",
            f.cycles_per_sec
        );
        println!(
            "bench: bytes_per_waiting_call {:.0} bytes (postcard)",
            f.bytes_per_waiting_call
        );
        println!(
            "bench: heap_bytes_per_waiting_call {:.0} bytes (estimate)",
            f.heap_bytes_per_waiting_call
        );
    }
}
