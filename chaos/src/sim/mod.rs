//! The seeded cluster simulator (`carillon chaos sim`): several Carillon Raft nodes (the
//! real openraft core, the real redb log store and ACD state machine) in one thread, over
//! a simulated network and disks, on tokio's paused clock. One u64 seed drives every
//! choice: election timeouts, message delays, loss, duplication and reordering, partitions
//! (symmetric, one-way, a site cut off), crashes with or without the loss of unsynced
//! writes, clock skew between proposers, and the call load. A fault phase is followed by a
//! healing phase (every node up, every link whole, the fault phase's calls closed, its
//! logged-out and not-ready agents back at work) in which new calls must be answered. A
//! run is about 3 virtual seconds; in the debug test profile about 0.15 s of one core.
//! The invariants (one per file under
//! [`invariants`]) are checked as the run goes and on its committed history.
//!
//! Replaying a seed replays the run (`--reproduce SEED`, the same trace). What that rests
//! on: one thread and tokio's paused clock; the stores' disk work inline on the calling
//! task ([`carillon_consensus::log_store::StoreIo::Inline`]); tokio's runtime RNG seeded
//! from the seed (it orders `select!` branches and decides which of `watch`'s notifiers a
//! receiver waits on, hence the order in which the followers' replication tasks run;
//! `rng_seed` needs `--cfg tokio_unstable`, set in the workspace's `.cargo/config.toml`);
//! and no draw from openraft's own RNG (`rand`'s thread RNG, seeded by the OS) that could
//! matter: each node's election timeout is drawn from the seed and handed to openraft as
//! a one-wide range, and the heartbeat is 9 ms so that openraft's tick is 1 ms, the
//! timer's grain, and its randomly phased first wait always ends on the same millisecond
//! (unless the draw is exactly 1 ms, about one start in a million). A longer heartbeat
//! would be a tick of several milliseconds whose phase `rand` picks.
//!
//! What it leaves out: the SIP and media planes (simulated by the few reactions of
//! `node.rs`), snapshots (runs are shorter than the snapshot policy), membership changes.

pub mod disk;
pub mod invariants;
mod load;
pub mod net;
mod node;
pub mod trace;
mod world;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

pub use invariants::Violation;
pub use world::Stats;

/// The shape of every run; the seed decides the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Raft members (3 to 7).
    pub nodes: usize,
    pub agents: usize,
    /// Virtual milliseconds of faults and load.
    pub fault_ms: u64,
    /// Virtual milliseconds after healing within which every call placed then must be
    /// answered (the run moves on as soon as they all are).
    pub heal_ms: u64,
    /// Calls placed after healing, each of which must be answered.
    pub post_heal_calls: usize,
    /// Largest clock skew of a proposer, either way.
    pub skew_ms_max: u64,
    /// How often replica state hashes are compared.
    pub sample_every_ms: u64,
    /// A bug planted in the run on purpose, to show the invariants catch it.
    pub bug: Option<Bug>,
}

/// Bugs the simulator can plant in a run (never on by default; `carillon chaos sim` has
/// no flag for them): a run with one must break an invariant, or the checks are vacuous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// One follower stores a command twice: the entry at the first index from
    /// [`net::BUG_INDEX_MIN`] that follows another command reaches it carrying that
    /// previous command again, as a replica that re-applies a command would hold it.
    ReplicaAppliesTwice,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 3,
            agents: 4,
            fault_ms: 1_200,
            heal_ms: 3_000,
            post_heal_calls: 3,
            skew_ms_max: 300,
            sample_every_ms: 50,
            bug: None,
        }
    }
}

/// What one seed's run showed.
#[derive(Clone, Debug)]
pub struct SimOutcome {
    pub seed: u64,
    pub virtual_ms: u64,
    pub commits: u64,
    pub stats: Stats,
    pub violations: Vec<Violation>,
    pub trace_hash: u64,
    pub trace_len: u64,
    /// The trace lines, when asked for.
    pub trace: Vec<String>,
}

impl SimOutcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Virtual time a run may take in all before it counts as stuck.
const RUN_MS_MAX: u64 = 60_000;

/// Runs one seed to the end on its own current-thread runtime with a paused clock.
pub fn run_seed(seed: u64, cfg: &SimConfig, keep_trace: bool) -> anyhow::Result<SimOutcome> {
    // tokio draws from its runtime RNG to order `select!` branches and to spread `watch`
    // receivers (openraft's) over its notifiers, i.e. the order woken tasks run in: seeded.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()))
        .build()
        .context("cannot build the simulator's runtime")?;
    let cfg = cfg.clone();
    let outcome = rt.block_on(async move {
        let world = Arc::new(world::World::new(cfg, seed, keep_trace));
        let script = load::script(Arc::clone(&world));
        let end = tokio::time::timeout(Duration::from_millis(RUN_MS_MAX), script)
            .await
            .ok();
        let now = world.now_ms();
        let rafts: Vec<_> = {
            let mut s = world.lock();
            match &end {
                Some(end) => s.checks.finish(now, end),
                None => s.checks.violations.push(Violation {
                    invariant: "run_completes",
                    at_ms: now,
                    detail: format!("the run did not finish within {RUN_MS_MAX} virtual ms"),
                }),
            }
            s.nodes.values_mut().filter_map(|n| n.raft.take()).collect()
        };
        for r in rafts {
            let _ = r.shutdown().await;
        }
        let mut s = world.lock();
        let trace = std::mem::take(&mut s.trace);
        SimOutcome {
            seed,
            virtual_ms: now,
            commits: s.history.len() as u64,
            stats: s.stats.clone(),
            violations: std::mem::take(&mut s.checks.violations),
            trace_hash: trace.hash(),
            trace_len: trace.len(),
            trace: trace.into_lines(),
        }
    });
    // Tasks still parked on the paused clock end with the runtime.
    drop(rt);
    Ok(outcome)
}

/// `carillon chaos sim` options.
#[derive(clap::Args, Clone, Debug)]
pub struct SimArgs {
    /// How many seeds to run, starting at `--first-seed`.
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    #[arg(long, default_value_t = 1)]
    pub first_seed: u64,
    /// Run only this seed (a failing one, to replay it exactly).
    #[arg(long)]
    pub reproduce: Option<u64>,
    /// Write the trace of the (last) run to this file.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Raft members per run.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Virtual milliseconds of faults per run.
    #[arg(long, default_value_t = 1_200)]
    pub fault_ms: u64,
    /// Threads running seeds side by side (each seed stays on one thread).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// The figures of a batch of seeds.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub seeds: u64,
    pub failed: Vec<SimOutcome>,
    pub virtual_ms: u64,
    pub commits: u64,
    pub faults: u64,
    pub crashes: u64,
    pub elections: u64,
    pub messages: u64,
    pub dropped: u64,
    pub calls: u64,
    /// The seeds' trace hashes folded in seed order: equal for two batches that replayed
    /// alike.
    pub trace_hash: u64,
}

impl Summary {
    fn add(&mut self, o: SimOutcome) {
        self.trace_hash = self
            .trace_hash
            .rotate_left(5)
            .wrapping_mul(0x0000_0100_0000_01b3)
            ^ o.trace_hash;
        self.seeds += 1;
        self.virtual_ms += o.virtual_ms;
        self.commits += o.commits;
        self.faults += o.stats.faults;
        self.crashes += o.stats.crashes;
        self.elections += o.stats.elections;
        self.messages += o.stats.messages;
        self.dropped += o.stats.dropped;
        self.calls += o.stats.calls;
        if !o.passed() {
            self.failed.push(o);
        }
    }
}

/// Runs `seeds` on `threads` threads; each seed is independent and deterministic.
pub fn run_seeds(seeds: &[u64], cfg: &SimConfig, threads: usize) -> anyhow::Result<Summary> {
    let threads = threads.clamp(1, 16);
    let chunks: Vec<Vec<u64>> = (0..threads)
        .map(|t| seeds.iter().skip(t).step_by(threads).copied().collect())
        .collect();
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || -> anyhow::Result<Vec<SimOutcome>> {
                    chunk.iter().map(|s| run_seed(*s, cfg, false)).collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a simulation thread panicked"))
            })
            .collect::<Vec<_>>()
    });
    let mut summary = Summary::default();
    let mut all = Vec::new();
    for r in results {
        all.extend(r??);
    }
    all.sort_by_key(|o| o.seed);
    for o in all {
        summary.add(o);
    }
    Ok(summary)
}

/// `carillon chaos sim`: runs the seeds, prints a summary and every failing seed with the
/// command that replays it; fails when any seed does.
pub fn run_cli(args: SimArgs) -> anyhow::Result<()> {
    let cfg = SimConfig {
        nodes: args.nodes.clamp(3, 7),
        fault_ms: args.fault_ms,
        ..SimConfig::default()
    };
    let seeds: Vec<u64> = match args.reproduce {
        Some(s) => vec![s],
        None => (args.first_seed..args.first_seed.saturating_add(args.seeds)).collect(),
    };
    if let Some(path) = &args.trace {
        let last = *seeds.last().context("no seeds to run")?;
        let o = run_seed(last, &cfg, true)?;
        std::fs::write(path, o.trace.join("\n") + "\n")
            .with_context(|| format!("cannot write the trace to {}", path.display()))?;
        println!(
            "trace of seed {last}: {} events (hash {:016x}) written to {}",
            o.trace_len,
            o.trace_hash,
            path.display()
        );
    }
    // The wall clock only times the batch for the summary line; no run reads it.
    #[allow(clippy::disallowed_methods)]
    let began = std::time::Instant::now();
    let summary = run_seeds(&seeds, &cfg, args.threads)?;
    let wall = began.elapsed().as_secs_f64();
    for o in &summary.failed {
        for v in &o.violations {
            println!(
                "FAIL seed {}: {} at {} ms: {}",
                o.seed, v.invariant, v.at_ms, v.detail
            );
        }
        println!(
            "  replay it: carillon chaos sim --reproduce {} --nodes {} --fault-ms {} --trace sim-{}.trace",
            o.seed, cfg.nodes, cfg.fault_ms, o.seed
        );
    }
    println!(
        "sim: {} seeds, {} failed; {:.1} virtual s, {} commits, {} faults ({} crashes), {} elections, {} calls, {} messages ({} dropped); trace hash {:016x}; {:.1} s wall, {:.1} seeds/s",
        summary.seeds,
        summary.failed.len(),
        summary.virtual_ms as f64 / 1000.0,
        summary.commits,
        summary.faults,
        summary.crashes,
        summary.elections,
        summary.calls,
        summary.messages,
        summary.dropped,
        summary.trace_hash,
        wall,
        summary.seeds as f64 / wall.max(1e-9)
    );
    if summary.failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} of {} seeds broke an invariant (first: seed {})",
            summary.failed.len(),
            summary.seeds,
            summary.failed[0].seed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_keeps_the_invariants() {
        let cfg = SimConfig::default();
        let a = run_seed(1, &cfg, true).expect("the runtime builds");
        println!(
            "seed 1: {} virtual ms, {} commits, {:?}, {} trace lines",
            a.virtual_ms, a.commits, a.stats, a.trace_len
        );
        assert!(a.passed(), "{:?}", a.violations);
        assert!(a.commits > 20, "too little happened: {} commits", a.commits);
    }

    #[test]
    fn a_seed_replays_to_the_same_trace() {
        let cfg = SimConfig::default();
        let a = run_seed(1, &cfg, true).expect("the runtime builds");
        let b = run_seed(1, &cfg, true).expect("the runtime builds");
        let diff = a.trace.iter().zip(&b.trace).position(|(x, y)| x != y);
        assert_eq!(diff, None, "{:?}", diff.map(|i| (&a.trace[i], &b.trace[i])));
        assert_eq!(a.trace_hash, b.trace_hash);
    }
}
