//! The shared state of one simulated run: the nodes, the links between them, the seeded
//! generator every random choice comes from, the trace and the invariant checks.
//!
//! Everything runs on one current-thread tokio runtime with a paused clock, so the order
//! in which tasks touch this state, and so every draw from the generator, follows from the
//! seed alone. The lock is never held across an await.

// The simulated clock: tokio's paused clock, which only the simulation moves.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use carillon_consensus::state_machine::{AcdReader, AppliedEntry};
use carillon_consensus::types::{NodeId, Raft};

use super::disk::SimDisk;
use super::invariants::{Checks, Observation, Violation};
use super::trace::Trace;
use super::SimConfig;
use crate::rng::XorShift;

/// One node as the world sees it, alive or not.
pub struct NodeSlot {
    pub site: String,
    /// Bumped at every start and crash, so tasks of an older run know to stop.
    pub incarnation: u64,
    pub raft: Option<Raft>,
    pub reader: Option<AcdReader>,
    pub log_disk: SimDisk,
    pub sm_disk: SimDisk,
    /// Added to this node's clock when it stamps a command's `at`.
    pub skew_ms: i64,
    /// Proposal counter within the current run.
    pub seq: u64,
}

impl NodeSlot {
    pub fn alive(&self) -> bool {
        self.raft.is_some()
    }
}

/// The faults on the network, as they stand.
#[derive(Debug, Default)]
pub struct Links {
    /// Directed links cut, counted, so overlapping partitions heal independently.
    pub cut: BTreeMap<(NodeId, NodeId), u32>,
    pub loss_pct: f64,
    pub dup_pct: f64,
    pub delay_min_ms: u64,
    pub delay_max_ms: u64,
}

impl Links {
    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.cut.get(&(from, to)).is_some_and(|n| *n > 0)
    }
}

/// A call the load placed.
#[derive(Clone, Debug)]
pub struct CallInfo {
    pub owner: NodeId,
}

/// Figures of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub messages: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub faults: u64,
    pub crashes: u64,
    pub elections: u64,
    pub calls: u64,
    pub proposals: u64,
}

pub struct WorldState {
    pub rng: XorShift,
    pub trace: Trace,
    pub nodes: BTreeMap<NodeId, NodeSlot>,
    pub links: Links,
    pub checks: Checks,
    /// The committed history: the first replica to apply an index names its entry.
    pub history: BTreeMap<u64, AppliedEntry>,
    /// The highest index fed to the history invariants so far.
    pub checked_to: u64,
    pub calls: BTreeMap<String, CallInfo>,
    /// Entries whose events the owning node already acted on.
    pub reacted: BTreeSet<(u64, usize)>,
    pub leader_terms: BTreeSet<u64>,
    pub stats: Stats,
    /// Where a planted bug struck: (the follower, the index), once chosen.
    pub bug_at: Option<(NodeId, u64)>,
    /// Commands seen in append requests by index, while a bug is planted.
    pub bug_seen: BTreeMap<u64, carillon_consensus::types::Proposal>,
}

pub struct World {
    pub cfg: SimConfig,
    start: tokio::time::Instant,
    state: Mutex<WorldState>,
}

impl World {
    pub fn new(cfg: SimConfig, seed: u64, keep_trace: bool) -> World {
        World {
            cfg,
            start: tokio::time::Instant::now(),
            state: Mutex::new(WorldState {
                rng: XorShift::new(seed),
                trace: Trace::new(keep_trace),
                nodes: BTreeMap::new(),
                links: Links::default(),
                checks: Checks::default(),
                history: BTreeMap::new(),
                checked_to: 0,
                calls: BTreeMap::new(),
                reacted: BTreeSet::new(),
                leader_terms: BTreeSet::new(),
                stats: Stats::default(),
                bug_at: None,
                bug_seen: BTreeMap::new(),
            }),
        }
    }

    /// Virtual milliseconds since the run began.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn lock(&self) -> MutexGuard<'_, WorldState> {
        // One thread runs the world; a poisoned lock only follows a panic that already
        // failed the run.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a trace line.
    pub fn trace(&self, what: std::fmt::Arguments<'_>) {
        let now = self.now_ms();
        self.lock().trace.push(now, what);
    }

    /// A value in `lo..hi` from the seed.
    pub fn draw(&self, lo: u64, hi: u64) -> u64 {
        lo + self.lock().rng.below(hi.saturating_sub(lo))
    }

    pub fn observe(&self, obs: &Observation<'_>) {
        let now = self.now_ms();
        self.lock().checks.observe(now, obs);
    }

    /// Feeds the entry first applied at `index` to the history invariants, so they run at
    /// every commit rather than once at the end and report a violation at the virtual time
    /// it happened. The replica applying `index` first has applied every index below it,
    /// so the entries arrive in log order (only routing entries are in the history; blank
    /// and membership entries leave gaps in the numbering).
    pub fn check_committed(&self, index: u64) {
        let now = self.now_ms();
        let mut s = self.lock();
        let s = &mut *s;
        if index <= s.checked_to {
            s.checks.violations.push(Violation {
                invariant: "history_in_log_order",
                at_ms: now,
                detail: format!("index {index} committed after index {}", s.checked_to),
            });
            return;
        }
        if let Some(e) = s.history.get(&index) {
            s.checks.observe(now, &Observation::Committed(e));
            s.checked_to = index;
        }
    }

    /// The `at` a node stamps on a command: its own, possibly skewed, clock.
    pub fn node_clock_ms(&self, node: NodeId) -> u64 {
        let skew = self.lock().nodes.get(&node).map_or(0, |n| n.skew_ms);
        // Virtual time starts at a fixed epoch so a negative skew stays above zero.
        (EPOCH_MS + self.now_ms()).saturating_add_signed(skew)
    }

    /// Samples every live replica's applied index and state hash.
    pub fn sample_hashes(&self) {
        let now = self.now_ms();
        let mut s = self.lock();
        let samples: Vec<(NodeId, u64, u64)> = s
            .nodes
            .iter()
            .filter_map(|(id, n)| {
                let r = n.reader.as_ref()?;
                Some((*id, r.last_applied_index()?, r.state_hash()))
            })
            .collect();
        for (node, index, hash) in samples {
            s.checks
                .observe(now, &Observation::Hash { node, index, hash });
        }
    }
}

/// Where every node's clock starts, in milliseconds.
pub const EPOCH_MS: u64 = 1_000_000;
