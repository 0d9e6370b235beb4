//! A queue: its config and its waiting calls in arrival order.
//!
//! Waiting calls are kept sorted by their arrival sequence number, so a call that comes
//! back after a failed or revoked offer lands ahead of every call that arrived after it
//! (the head of the line, in practice) while keeping its original arrival time. Issue 4's
//! caller priorities will widen the ordering key; nothing else here needs to change.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::canon::{Canon, Fnv};
use crate::Millis;

/// A queue's live-changeable settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    pub name: String,
    /// An agent needs this skill to take the queue's calls.
    pub skill: String,
    pub wrapup_ms: u64,
    pub ring_timeout_ms: u64,
}

impl QueueConfig {
    /// What is wrong with this config for the state machine, if anything.
    pub(crate) fn problem(&self) -> Option<&'static str> {
        if self.name.is_empty() {
            Some("the name must not be empty")
        } else if self.skill.is_empty() {
            Some("the skill must not be empty: agents are matched to the queue by it")
        } else if self.ring_timeout_ms == 0 {
            Some("ring_timeout_ms must be greater than 0")
        } else {
            None
        }
    }
}

/// One waiting call's place in line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Waiting {
    /// Arrival sequence number, unique across the whole ACD and increasing with time.
    pub(crate) seq: u64,
    pub(crate) call: String,
    pub(crate) arrived_at: Millis,
}

/// A queue and its line of waiting calls (calls being offered are not in the line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Queue {
    pub(crate) config: QueueConfig,
    /// Sorted by `seq`, oldest first.
    pub(crate) waiting: VecDeque<Waiting>,
}

impl Queue {
    pub(crate) fn new(config: QueueConfig) -> Self {
        Queue {
            config,
            waiting: VecDeque::new(),
        }
    }

    /// Puts a call in line at its arrival-order place: the back for a new call, the head
    /// for a call returned after an offer.
    pub(crate) fn insert(&mut self, entry: Waiting) {
        let at = self.waiting.partition_point(|w| w.seq < entry.seq);
        self.waiting.insert(at, entry);
    }

    pub(crate) fn head(&self) -> Option<&Waiting> {
        self.waiting.front()
    }

    pub(crate) fn pop_head(&mut self) -> Option<Waiting> {
        self.waiting.pop_front()
    }

    /// 0-based index of the call with this sequence number, if it is waiting here.
    fn index_of(&self, seq: u64) -> Option<usize> {
        let at = self.waiting.partition_point(|w| w.seq < seq);
        (self.waiting.get(at)?.seq == seq).then_some(at)
    }

    /// The waiting entry with this sequence number.
    pub(crate) fn get(&self, seq: u64) -> Option<&Waiting> {
        self.waiting.get(self.index_of(seq)?)
    }

    /// 1-based place in line.
    pub(crate) fn position(&self, seq: u64) -> Option<u32> {
        let index = self.index_of(seq)?;
        Some(u32::try_from(index + 1).unwrap_or(u32::MAX))
    }

    pub(crate) fn remove(&mut self, seq: u64) -> Option<Waiting> {
        let index = self.index_of(seq)?;
        self.waiting.remove(index)
    }

    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }
}

impl Canon for QueueConfig {
    fn canon(&self, h: &mut Fnv) {
        let QueueConfig {
            name,
            skill,
            wrapup_ms,
            ring_timeout_ms,
        } = self;
        name.canon(h);
        skill.canon(h);
        wrapup_ms.canon(h);
        ring_timeout_ms.canon(h);
    }
}

impl Canon for Waiting {
    fn canon(&self, h: &mut Fnv) {
        let Waiting {
            seq,
            call,
            arrived_at,
        } = self;
        seq.canon(h);
        call.canon(h);
        arrived_at.canon(h);
    }
}

impl Canon for Queue {
    fn canon(&self, h: &mut Fnv) {
        let Queue { config, waiting } = self;
        config.canon(h);
        waiting.canon(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> Queue {
        Queue::new(QueueConfig {
            name: "q".into(),
            skill: "s".into(),
            wrapup_ms: 0,
            ring_timeout_ms: 1,
        })
    }

    fn entry(seq: u64) -> Waiting {
        Waiting {
            seq,
            call: format!("c{seq}"),
            arrived_at: seq,
        }
    }

    #[test]
    fn returned_call_goes_ahead_of_later_arrivals() {
        let mut q = queue();
        q.insert(entry(2));
        q.insert(entry(5));
        q.insert(entry(1));
        q.insert(entry(3));
        let order: Vec<u64> = q.waiting.iter().map(|w| w.seq).collect();
        assert_eq!(order, vec![1, 2, 3, 5]);
        assert_eq!(q.position(3), Some(3));
        assert_eq!(q.position(4), None);
        assert_eq!(q.remove(2).map(|w| w.seq), Some(2));
        assert_eq!(q.position(3), Some(2));
        assert_eq!(q.pop_head().map(|w| w.seq), Some(1));
        assert_eq!(q.len(), 2);
    }
}
