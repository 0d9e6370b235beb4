//! A queue: its config and its waiting calls in line order.
//!
//! The line is sorted by (priority, highest first; then arrival sequence number), so a
//! call that comes back after a failed or revoked offer lands ahead of every call of its
//! priority that arrived after it (the head of the line, in practice) while keeping its
//! original arrival time, and a VIP whose priority is raised moves up without losing its
//! arrival order among its new peers.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::canon::{Canon, Fnv};
use crate::schedule::Schedule;
use crate::skill::{self, Need};

/// How a queue picks among eligible ready agents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// The agent ready for the longest time.
    #[default]
    LongestIdle,
    /// The next agent (by id) after the one this queue offered last, wrapping around.
    RoundRobin,
    /// The agent who answered the fewest calls (then longest idle).
    FewestCalls,
    /// The agent with the least talk time (then longest idle).
    LeastTalkTime,
    /// A fixed order: `QueueConfig::agent_order`, then unlisted agents by id.
    TopDown,
    /// A pseudo-random agent drawn from a hash of the call id and its offer count, so every
    /// replica draws the same one.
    Random,
    /// Every eligible agent (at the chosen site) rings; the first to answer wins, the
    /// others are revoked.
    RingAll,
}

/// From `after_ms` of waiting on, agents with the queue's skills at `min_level` or above
/// will do (steps only ever widen the pool).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscalationStep {
    pub after_ms: u64,
    pub min_level: u8,
}

/// What happens to a call that leaves a queue without an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitAction {
    /// The owner node takes a voicemail into this mailbox; record `Voicemail`.
    Voicemail { mailbox: String },
    /// The owner node plays this prompt (may be empty) and hangs up; record `Refused`.
    Hangup { prompt: String },
    /// The call moves to this queue, keeping its arrival time and priority.
    Queue { queue: String },
}

impl Default for ExitAction {
    fn default() -> Self {
        ExitAction::Hangup {
            prompt: String::new(),
        }
    }
}

/// A queue's live-changeable settings. Build with `..Default::default()`; a default
/// config is invalid until `name`, `skill` and `ring_timeout_ms` are set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    pub name: String,
    /// An agent needs this skill to take the queue's calls.
    pub skill: String,
    pub wrapup_ms: u64,
    pub ring_timeout_ms: u64,
    /// How long (from arrival) a call waits for an agent at its own site before any
    /// site's agent will do; 0 = any site at once (the call's site is still preferred).
    pub local_wait_ms: u64,
    /// Minimum level (1-10) of `skill`; 0 means 1.
    pub min_level: u8,
    /// Further required skills, `"name"` (any level) or `"name:level"`.
    pub extra_skills: Vec<String>,
    /// Widening steps by wait time in this queue, `after_ms` strictly increasing.
    pub escalation: Vec<EscalationStep>,
    pub strategy: Strategy,
    /// For `Strategy::TopDown`: agent ids in the order they are tried.
    pub agent_order: Vec<String>,
    /// Cross-queue fairness weight (used when `RoutingSettings::fairness` is on); 0 means 1.
    pub weight: u32,
    /// Calls waiting this long in the queue take `max_wait_action`; 0 = no limit.
    pub max_wait_ms: u64,
    pub max_wait_action: ExitAction,
    /// Calls arriving when this many wait take `queue_full_action`; 0 = no limit.
    pub queue_len_max: usize,
    pub queue_full_action: ExitAction,
    /// Overflow to `overflow_to` after this long in the queue; 0 = never by time.
    pub overflow_after_ms: u64,
    /// Overflow to `overflow_to` when no logged-in agent could ever take the call.
    pub overflow_when_no_agents: bool,
    pub overflow_to: String,
    /// Opening hours; None = always open.
    pub schedule: Option<Schedule>,
    pub after_hours_action: ExitAction,
    /// Callback attempts before the callback is given up; 0 means 1.
    pub callback_attempts_max: u32,
    /// Minimum gap between two callback attempts.
    pub callback_gap_ms: u64,
}

/// Escalation steps at most (a bound on config size).
pub const ESCALATION_STEPS_MAX: usize = 16;

impl QueueConfig {
    /// What is wrong with this config for the state machine, if anything.
    pub(crate) fn problem(&self) -> Option<&'static str> {
        if self.name.is_empty() {
            Some("the name must not be empty")
        } else if self.skill.is_empty() {
            Some("the skill must not be empty: agents are matched to the queue by it")
        } else if self.ring_timeout_ms == 0 {
            Some("ring_timeout_ms must be greater than 0")
        } else if self.min_level > skill::LEVEL_MAX {
            Some("min_level must be 0-10")
        } else if self.extra_skills.iter().any(|s| skill::parse(s).is_none()) {
            Some("extra_skills must be `name` or `name:level` with level 1-10")
        } else if self.escalation.len() > ESCALATION_STEPS_MAX {
            Some("at most 16 escalation steps")
        } else if self
            .escalation
            .iter()
            .any(|s| s.min_level == 0 || s.min_level > skill::LEVEL_MAX)
        {
            Some("escalation min_level must be 1-10")
        } else if self
            .escalation
            .windows(2)
            .any(|w| w[0].after_ms >= w[1].after_ms)
        {
            Some("escalation steps must have strictly increasing after_ms")
        } else if (self.overflow_after_ms > 0 || self.overflow_when_no_agents)
            && self.overflow_to.is_empty()
        {
            Some("overflow needs overflow_to (the queue to move calls to)")
        } else if self.overflow_to == self.name {
            Some("a queue cannot overflow to itself")
        } else if self
            .schedule
            .as_ref()
            .is_some_and(|s| s.problem().is_some())
        {
            self.schedule.as_ref().and_then(Schedule::problem)
        } else {
            None
        }
    }

    /// The skills a call of this queue needs, before escalation.
    pub(crate) fn needs(&self) -> Vec<Need> {
        let mut needs = vec![Need {
            skill: self.skill.clone(),
            level: self.min_level.max(1),
        }];
        needs.extend(self.extra_skills.iter().filter_map(|s| skill::parse(s)));
        needs
    }

    /// The widest level cap after `waited_ms` in the queue (10 = no widening yet).
    pub(crate) fn level_cap(&self, waited_ms: u64) -> u8 {
        self.escalation
            .iter()
            .rev()
            .find(|s| s.after_ms <= waited_ms)
            .map_or(skill::LEVEL_MAX, |s| s.min_level)
    }

    /// The lowest level cap the queue can reach (for "could anyone ever take it").
    pub(crate) fn loosest_cap(&self) -> u8 {
        self.escalation
            .iter()
            .map(|s| s.min_level)
            .min()
            .unwrap_or(skill::LEVEL_MAX)
    }
}

/// One waiting call's place in line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Waiting {
    pub(crate) priority: u32,
    /// Arrival sequence number, unique across the whole ACD and increasing with time.
    pub(crate) seq: u64,
    pub(crate) call: String,
}

impl Waiting {
    /// Line order: higher priority first, then arrival.
    pub(crate) fn key(&self) -> (u32, u64) {
        (u32::MAX - self.priority, self.seq)
    }
}

/// Handle times kept per queue for wait estimates.
pub(crate) const RECENT_HANDLES_MAX: usize = 32;

/// A queue and its line of waiting calls (calls being offered are not in the line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Queue {
    pub(crate) config: QueueConfig,
    /// Derived from `config` (parsed once per change).
    pub(crate) needs: Vec<Need>,
    /// Sorted by `Waiting::key`.
    pub(crate) waiting: VecDeque<Waiting>,
    /// The agent this queue offered last (round robin's memory).
    pub(crate) last_offered: Option<String>,
    /// Talk plus wrap-up of the latest answered calls, newest last.
    pub(crate) recent_handle_ms: VecDeque<u64>,
}

impl Queue {
    pub(crate) fn new(config: QueueConfig) -> Self {
        Queue {
            needs: config.needs(),
            config,
            waiting: VecDeque::new(),
            last_offered: None,
            recent_handle_ms: VecDeque::new(),
        }
    }

    pub(crate) fn set_config(&mut self, config: QueueConfig) {
        self.needs = config.needs();
        self.config = config;
    }

    /// Puts a call in line at its place: the back for a new call of the lowest priority,
    /// ahead of later arrivals for a call returned after an offer.
    pub(crate) fn insert(&mut self, entry: Waiting) {
        let key = entry.key();
        let at = self.waiting.partition_point(|w| w.key() < key);
        self.waiting.insert(at, entry);
    }

    /// 0-based index of the call with this key, if it is waiting here.
    fn index_of(&self, key: (u32, u64)) -> Option<usize> {
        let at = self.waiting.partition_point(|w| w.key() < key);
        (self.waiting.get(at)?.key() == key).then_some(at)
    }

    /// The waiting entry with this key.
    pub(crate) fn get(&self, key: (u32, u64)) -> Option<&Waiting> {
        self.waiting.get(self.index_of(key)?)
    }

    /// 1-based place in line.
    pub(crate) fn position(&self, key: (u32, u64)) -> Option<u32> {
        let index = self.index_of(key)?;
        Some(u32::try_from(index + 1).unwrap_or(u32::MAX))
    }

    pub(crate) fn remove_at(&mut self, index: usize) -> Option<Waiting> {
        self.waiting.remove(index)
    }

    pub(crate) fn remove(&mut self, key: (u32, u64)) -> Option<Waiting> {
        let index = self.index_of(key)?;
        self.waiting.remove(index)
    }

    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    pub(crate) fn record_handle(&mut self, handle_ms: u64) {
        if self.recent_handle_ms.len() >= RECENT_HANDLES_MAX {
            self.recent_handle_ms.pop_front();
        }
        self.recent_handle_ms.push_back(handle_ms);
    }

    /// Mean of the recent handle times, if any.
    pub(crate) fn average_handle_ms(&self) -> Option<u64> {
        let n = self.recent_handle_ms.len() as u64;
        (n > 0).then(|| self.recent_handle_ms.iter().sum::<u64>() / n)
    }
}

impl Canon for EscalationStep {
    fn canon(&self, h: &mut Fnv) {
        let EscalationStep {
            after_ms,
            min_level,
        } = self;
        after_ms.canon(h);
        min_level.canon(h);
    }
}

impl Canon for ExitAction {
    fn canon(&self, h: &mut Fnv) {
        match self {
            ExitAction::Voicemail { mailbox } => {
                h.tag(0);
                mailbox.canon(h);
            }
            ExitAction::Hangup { prompt } => {
                h.tag(1);
                prompt.canon(h);
            }
            ExitAction::Queue { queue } => {
                h.tag(2);
                queue.canon(h);
            }
        }
    }
}

impl Canon for QueueConfig {
    fn canon(&self, h: &mut Fnv) {
        let QueueConfig {
            name,
            skill,
            wrapup_ms,
            ring_timeout_ms,
            local_wait_ms,
            min_level,
            extra_skills,
            escalation,
            strategy,
            agent_order,
            weight,
            max_wait_ms,
            max_wait_action,
            queue_len_max,
            queue_full_action,
            overflow_after_ms,
            overflow_when_no_agents,
            overflow_to,
            schedule,
            after_hours_action,
            callback_attempts_max,
            callback_gap_ms,
        } = self;
        name.canon(h);
        skill.canon(h);
        wrapup_ms.canon(h);
        ring_timeout_ms.canon(h);
        local_wait_ms.canon(h);
        min_level.canon(h);
        extra_skills.canon(h);
        escalation.canon(h);
        strategy.canon(h);
        agent_order.canon(h);
        weight.canon(h);
        max_wait_ms.canon(h);
        max_wait_action.canon(h);
        queue_len_max.canon(h);
        queue_full_action.canon(h);
        overflow_after_ms.canon(h);
        overflow_when_no_agents.canon(h);
        overflow_to.canon(h);
        schedule.canon(h);
        after_hours_action.canon(h);
        callback_attempts_max.canon(h);
        callback_gap_ms.canon(h);
    }
}

impl Canon for Waiting {
    fn canon(&self, h: &mut Fnv) {
        let Waiting {
            priority,
            seq,
            call,
        } = self;
        priority.canon(h);
        seq.canon(h);
        call.canon(h);
    }
}

impl Canon for Queue {
    fn canon(&self, h: &mut Fnv) {
        // `needs` is derived from the config.
        let Queue {
            config,
            needs: _,
            waiting,
            last_offered,
            recent_handle_ms,
        } = self;
        config.canon(h);
        waiting.canon(h);
        last_offered.canon(h);
        recent_handle_ms.canon(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> Queue {
        Queue::new(QueueConfig {
            name: "q".into(),
            skill: "s".into(),
            ring_timeout_ms: 1,
            ..QueueConfig::default()
        })
    }

    fn entry(seq: u64, priority: u32) -> Waiting {
        Waiting {
            priority,
            seq,
            call: format!("c{seq}"),
        }
    }

    #[test]
    fn returned_call_goes_ahead_of_later_arrivals() {
        let mut q = queue();
        q.insert(entry(2, 0));
        q.insert(entry(5, 0));
        q.insert(entry(1, 0));
        q.insert(entry(3, 0));
        let order: Vec<u64> = q.waiting.iter().map(|w| w.seq).collect();
        assert_eq!(order, vec![1, 2, 3, 5]);
        assert_eq!(q.position((u32::MAX, 3)), Some(3));
        assert_eq!(q.position((u32::MAX, 4)), None);
        assert_eq!(q.remove((u32::MAX, 2)).map(|w| w.seq), Some(2));
        assert_eq!(q.position((u32::MAX, 3)), Some(2));
        assert_eq!(q.remove_at(0).map(|w| w.seq), Some(1));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn higher_priority_goes_first_arrival_within_priority() {
        let mut q = queue();
        q.insert(entry(1, 0));
        q.insert(entry(2, 5));
        q.insert(entry(3, 0));
        q.insert(entry(4, 5));
        q.insert(entry(5, 9));
        let order: Vec<u64> = q.waiting.iter().map(|w| w.seq).collect();
        assert_eq!(order, vec![5, 2, 4, 1, 3]);
    }

    #[test]
    fn escalation_caps_and_config_problems() {
        let mut config = QueueConfig {
            name: "q".into(),
            skill: "s".into(),
            ring_timeout_ms: 1,
            min_level: 8,
            escalation: vec![
                EscalationStep {
                    after_ms: 30_000,
                    min_level: 5,
                },
                EscalationStep {
                    after_ms: 60_000,
                    min_level: 1,
                },
            ],
            ..QueueConfig::default()
        };
        assert_eq!(config.problem(), None);
        assert_eq!(config.level_cap(29_999), 10);
        assert_eq!(config.level_cap(30_000), 5);
        assert_eq!(config.level_cap(90_000), 1);
        assert_eq!(config.loosest_cap(), 1);
        config.escalation.swap(0, 1);
        assert!(config.problem().is_some());
        config.escalation.clear();
        config.extra_skills = vec!["x:11".into()];
        assert!(config.problem().is_some());
        config.extra_skills.clear();
        config.overflow_after_ms = 1;
        assert!(config.problem().is_some());
    }
}
