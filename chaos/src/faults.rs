//! The fault proxy's decisions, with no sockets and no clock: given the sending and the
//! receiving node of one datagram, what happens to it (dropped, or delivered once or twice
//! after some delay). The proxy adapter (`proxy.rs`) feeds it every datagram; the runner
//! changes the [`Faults`] live through a [`FaultSwitch`].

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::rng::XorShift;

/// A node id as Raft numbers it (n1 = 1); 0 for a sender the proxy cannot place.
pub type NodeNum = u64;

/// The faults in force on the links between nodes. The default is a healthy network.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Faults {
    /// Datagrams dropped, in percent.
    pub drop_pct: f64,
    /// Added one-way delay, and a uniform jitter on top of it.
    pub delay_ms: u64,
    pub jitter_ms: u64,
    /// Datagrams delivered twice, in percent.
    pub duplicate_pct: f64,
    /// Datagrams held back by `reorder_hold_ms`, in percent, so later ones overtake them.
    pub reorder_pct: f64,
    pub reorder_hold_ms: u64,
    /// Drop everything.
    pub blackhole: bool,
    /// Directed links cut: `(from, to)` drops every datagram from `from` to `to`.
    pub cut: BTreeSet<(NodeNum, NodeNum)>,
}

impl Faults {
    /// Cuts every link between a node of `a` and a node of `b`, both ways.
    pub fn partition(&mut self, a: &[NodeNum], b: &[NodeNum]) {
        for x in a {
            for y in b {
                self.cut.insert((*x, *y));
                self.cut.insert((*y, *x));
            }
        }
    }

    /// Cuts `node` off from every other node in `all`, both ways.
    pub fn isolate(&mut self, node: NodeNum, all: &[NodeNum]) {
        let others: Vec<NodeNum> = all.iter().copied().filter(|n| *n != node).collect();
        self.partition(&[node], &others);
    }

    /// True when nothing is injected.
    pub fn is_healthy(&self) -> bool {
        *self == Faults::default()
    }
}

/// What happens to one datagram: an empty list drops it; otherwise one delivery per
/// entry, each after that many milliseconds.
pub type Deliveries = Vec<u64>;

/// The runner's handle on the faults every proxy applies; changes take effect on the
/// next datagram.
#[derive(Clone, Debug, Default)]
pub struct FaultSwitch {
    inner: Arc<Mutex<Faults>>,
}

impl FaultSwitch {
    pub fn set(&self, faults: Faults) {
        *lock(&self.inner) = faults;
    }

    /// Edits the faults in force.
    pub fn update(&self, edit: impl FnOnce(&mut Faults)) {
        edit(&mut lock(&self.inner));
    }

    /// Back to a healthy network.
    pub fn heal(&self) {
        self.set(Faults::default());
    }

    pub fn get(&self) -> Faults {
        lock(&self.inner).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock could only come from a clone or an insert; the
    // value left is still a whole Faults, so carry on with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Decides the fate of one datagram from `from` to `to` under `faults`, drawing from `rng`.
pub fn decide(faults: &Faults, from: NodeNum, to: NodeNum, rng: &mut XorShift) -> Deliveries {
    if faults.blackhole || faults.cut.contains(&(from, to)) {
        return Vec::new();
    }
    if rng.chance_pct(faults.drop_pct) {
        return Vec::new();
    }
    let mut delay = faults.delay_ms + rng.below(faults.jitter_ms + 1);
    if rng.chance_pct(faults.reorder_pct) {
        delay += faults.reorder_hold_ms;
    }
    let mut out = vec![delay];
    if rng.chance_pct(faults.duplicate_pct) {
        // The copy a moment later, as a retransmitting link would deliver it.
        out.push(delay + 1 + rng.below(5));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(f: &Faults, n: usize) -> (usize, usize, Vec<u64>) {
        let mut rng = XorShift::new(1);
        let mut dropped = 0;
        let mut copies = 0;
        let mut delays = Vec::new();
        for _ in 0..n {
            let d = decide(f, 1, 2, &mut rng);
            if d.is_empty() {
                dropped += 1;
            }
            copies += d.len();
            delays.extend(d);
        }
        (dropped, copies, delays)
    }

    #[test]
    fn healthy_network_delivers_everything_at_once() {
        let (dropped, copies, delays) = outcomes(&Faults::default(), 1000);
        assert_eq!((dropped, copies), (0, 1000));
        assert!(delays.iter().all(|d| *d == 0));
    }

    #[test]
    fn drop_rate_and_duplicates_follow_the_settings() {
        let f = Faults {
            drop_pct: 20.0,
            duplicate_pct: 10.0,
            ..Faults::default()
        };
        let (dropped, copies, _) = outcomes(&f, 10_000);
        assert!((1_800..2_200).contains(&dropped), "{dropped}");
        // 8000 delivered, about 800 of them twice.
        assert!((8_500..8_900).contains(&copies), "{copies}");
    }

    #[test]
    fn delay_with_jitter_stays_in_range() {
        let f = Faults {
            delay_ms: 200,
            jitter_ms: 20,
            ..Faults::default()
        };
        let (_, _, delays) = outcomes(&f, 1000);
        assert!(delays.iter().all(|d| (200..=220).contains(d)));
        assert!(delays.iter().any(|d| *d > 210));
    }

    #[test]
    fn a_cut_is_directed_and_partition_cuts_both_ways() {
        let mut rng = XorShift::new(3);
        let mut f = Faults::default();
        f.cut.insert((1, 3));
        assert!(decide(&f, 1, 3, &mut rng).is_empty());
        assert_eq!(decide(&f, 3, 1, &mut rng), vec![0]);
        let mut g = Faults::default();
        g.isolate(3, &[1, 2, 3]);
        for (a, b) in [(1, 3), (3, 1), (2, 3), (3, 2)] {
            assert!(decide(&g, a, b, &mut rng).is_empty(), "{a}->{b}");
        }
        assert_eq!(decide(&g, 1, 2, &mut rng), vec![0]);
        assert!(!g.is_healthy());
    }

    #[test]
    fn blackhole_drops_all_and_the_switch_heals() {
        let switch = FaultSwitch::default();
        switch.update(|f| f.blackhole = true);
        let mut rng = XorShift::new(5);
        assert!(decide(&switch.get(), 2, 1, &mut rng).is_empty());
        switch.heal();
        assert!(switch.get().is_healthy());
    }

    #[test]
    fn one_seed_one_fate() {
        let f = Faults {
            drop_pct: 30.0,
            jitter_ms: 50,
            reorder_pct: 10.0,
            reorder_hold_ms: 40,
            ..Faults::default()
        };
        let run = |seed| {
            let mut rng = XorShift::new(seed);
            (0..500)
                .map(|_| decide(&f, 1, 2, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }
}
