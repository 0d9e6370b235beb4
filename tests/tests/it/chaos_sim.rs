//! The seeded simulator: one seed replays exactly, a CI-sized batch of seeds keeps every
//! invariant, and a run with a bug planted in it breaks one. The invariants' own tests
//! (chaos/src/sim/invariants/tests.rs) also feed each a bad history.

use carillon_chaos::sim::{run_seed, run_seeds, Bug, SimConfig};

#[test]
fn one_seed_gives_the_same_trace_twice() {
    let cfg = SimConfig::default();
    let a = run_seed(7, &cfg, true).expect("the runtime builds");
    let b = run_seed(7, &cfg, true).expect("the runtime builds");
    assert!(
        a.trace_len > 100,
        "a run this short says nothing: {}",
        a.trace_len
    );
    let first_diff = a.trace.iter().zip(&b.trace).position(|(x, y)| x != y);
    assert_eq!(
        first_diff,
        None,
        "traces differ at line {first_diff:?}: {:?} vs {:?}",
        first_diff.map(|i| &a.trace[i]),
        first_diff.map(|i| &b.trace[i])
    );
    assert_eq!(a.trace_len, b.trace_len);
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.stats, b.stats);
    // Kept or not, the lines hash alike, so a batch (which keeps none) replays the same.
    let c = run_seed(7, &cfg, false).expect("the runtime builds");
    assert_eq!(c.trace_hash, a.trace_hash);
}

#[test]
fn five_hundred_seeds_keep_every_invariant() {
    let seeds: Vec<u64> = (1..=500).collect();
    // The wall clock only times the batch for the report line; no run reads it.
    #[allow(clippy::disallowed_methods)]
    let began = std::time::Instant::now();
    let summary = run_seeds(&seeds, &SimConfig::default(), 2).expect("runtimes build");
    let wall = began.elapsed().as_secs_f64();
    println!(
        "sim: {} seeds, {} failed, {:.1} virtual s, {} commits, {} faults, {} elections, \
         trace hash {:016x}; {wall:.1} s wall, {:.1} seeds/s",
        summary.seeds,
        summary.failed.len(),
        summary.virtual_ms as f64 / 1000.0,
        summary.commits,
        summary.faults,
        summary.elections,
        summary.trace_hash,
        summary.seeds as f64 / wall.max(1e-9)
    );
    let failures: Vec<String> = summary
        .failed
        .iter()
        .flat_map(|o| {
            o.violations.iter().map(move |v| {
                format!(
                    "seed {}: {} at {} ms: {} (replay: carillon chaos sim --reproduce {})",
                    o.seed, v.invariant, v.at_ms, v.detail, o.seed
                )
            })
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(summary.commits > summary.seeds * 20, "too little happened");
}

#[test]
fn a_replica_that_applies_a_command_twice_is_caught() {
    let cfg = SimConfig {
        bug: Some(Bug::ReplicaAppliesTwice),
        ..SimConfig::default()
    };
    for seed in 1..=4 {
        let o = run_seed(seed, &cfg, false).expect("the runtime builds");
        let broken: Vec<&str> = o.violations.iter().map(|v| v.invariant).collect();
        // The replica's state diverges (its state hash) and its log does (log matching):
        // whichever is seen first fills the run's violation list.
        assert!(
            broken.contains(&"committed_entries_never_change")
                || broken.contains(&"replicas_agree"),
            "seed {seed}: the planted bug went unseen: {broken:?}"
        );
    }
}
