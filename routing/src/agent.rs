//! Agents, their states, and the roster that indexes ready agents by idle time.
//!
//! The roster is the only place that changes an agent's state, so the ready index (which
//! strategies walk to pick an agent) cannot drift from the agents themselves.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::canon::{Canon, Fnv};
use crate::{Millis, NodeId};

/// Where an agent stands, as the node and wallboards see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentState {
    LoggedOut,
    Ready,
    NotReady {
        reason: String,
    },
    /// Being offered (ringing) `call`.
    Reserved {
        call: String,
    },
    OnCall {
        call: String,
    },
    WrapUp {
        until: Millis,
    },
}

impl AgentState {
    /// Every state name, in the order [`AgentState::name`] and the stats use.
    pub const NAMES: [&'static str; 6] = [
        "logged_out",
        "ready",
        "not_ready",
        "reserved",
        "on_call",
        "wrap_up",
    ];

    /// A stable snake_case name for stats, metrics and messages.
    pub fn name(&self) -> &'static str {
        match self {
            AgentState::LoggedOut => "logged_out",
            AgentState::Ready => "ready",
            AgentState::NotReady { .. } => "not_ready",
            AgentState::Reserved { .. } => "reserved",
            AgentState::OnCall { .. } => "on_call",
            AgentState::WrapUp { .. } => "wrap_up",
        }
    }

    /// The state in words, for error messages.
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            AgentState::LoggedOut => "logged out",
            AgentState::Ready => "ready",
            AgentState::NotReady { .. } => "not ready",
            AgentState::Reserved { .. } => "reserved for a call (ringing)",
            AgentState::OnCall { .. } => "on a call",
            AgentState::WrapUp { .. } => "in wrap-up",
        }
    }

    /// The call this state ties the agent to, if any.
    pub fn call(&self) -> Option<&str> {
        match self {
            AgentState::Reserved { call } | AgentState::OnCall { call } => Some(call),
            _ => None,
        }
    }
}

/// One agent as the ACD knows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Agent {
    /// Skill name -> level 1-10.
    pub(crate) skills: BTreeMap<String, u8>,
    pub(crate) state: AgentState,
    /// When the agent last became ready; meaningful only while `Ready`.
    pub(crate) idle_since: Millis,
    /// The phone unregistered during a call: log out when the call ends.
    pub(crate) logout_pending: bool,
    /// The node holding the phone's registration, and its site.
    pub(crate) node: NodeId,
    pub(crate) site: String,
    /// The proposer's time (`at`, on that node's own clock) of the log-in that last set
    /// `node`: a run of that node which started later never saw this registration.
    pub(crate) located_at: Millis,
    /// Why the agent was logged out by the ACD itself (e.g. `node-down`); cleared at login.
    pub(crate) logout_reason: Option<String>,
    /// A supervisor forced not-ready during a call: applied when it ends.
    pub(crate) not_ready_after_call: Option<String>,
    /// Offers missed in a row (no answer).
    pub(crate) missed: u32,
    /// Calls answered and talk time, for the fewest-calls and least-talk strategies.
    pub(crate) calls_answered: u64,
    pub(crate) talk_ms: u64,
}

impl Agent {
    /// Reserved, on a call or wrapping up: counts toward the site's occupancy.
    /// The agent's level in `skill`, 0 without it.
    pub(crate) fn level(&self, skill: &str) -> u8 {
        self.skills.get(skill).copied().unwrap_or(0)
    }

    pub(crate) fn busy(&self) -> bool {
        matches!(
            self.state,
            AgentState::Reserved { .. } | AgentState::OnCall { .. } | AgentState::WrapUp { .. }
        )
    }
}

/// All agents ever seen (logged-out ones stay, to keep their identity and skills), plus
/// an index of ready agents ordered by (idle since, id): longest idle first, ties by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Roster {
    agents: BTreeMap<String, Agent>,
    /// Derived from `agents`; kept in step by `set_state`.
    ready: BTreeSet<(Millis, String)>,
}

impl Roster {
    pub(crate) fn get(&self, id: &str) -> Option<&Agent> {
        self.agents.get(id)
    }

    /// The agent with its id as stored (borrowed from the roster).
    pub(crate) fn get_entry(&self, id: &str) -> Option<(&str, &Agent)> {
        self.agents
            .get_key_value(id)
            .map(|(id, agent)| (id.as_str(), agent))
    }

    pub(crate) fn len(&self) -> usize {
        self.agents.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Agent)> {
        self.agents.iter()
    }

    pub(crate) fn any_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Ready agents, longest idle first (ties by id).
    pub(crate) fn ready_by_idle(&self) -> impl Iterator<Item = (&str, &Agent)> {
        self.ready.iter().filter_map(|(_, id)| {
            let agent = self.agents.get(id)?;
            Some((id.as_str(), agent))
        })
    }

    /// Adds a logged-out agent with these skills.
    pub(crate) fn add(&mut self, id: &str, skills: BTreeMap<String, u8>) {
        self.agents.insert(
            id.to_owned(),
            Agent {
                skills,
                state: AgentState::LoggedOut,
                idle_since: 0,
                logout_pending: false,
                node: 0,
                site: String::new(),
                located_at: 0,
                logout_reason: None,
                not_ready_after_call: None,
                missed: 0,
                calls_answered: 0,
                talk_ms: 0,
            },
        );
    }

    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut Agent> {
        self.agents.get_mut(id)
    }

    /// Records where the agent's phone is registered now.
    pub(crate) fn set_location(&mut self, id: &str, node: NodeId, site: &str, at: Millis) {
        if let Some(agent) = self.agents.get_mut(id) {
            agent.node = node;
            agent.located_at = at;
            if agent.site != site {
                agent.site = site.to_owned();
            }
            agent.logout_reason = None;
        }
    }

    pub(crate) fn set_logout_reason(&mut self, id: &str, reason: &str) {
        if let Some(agent) = self.agents.get_mut(id) {
            agent.logout_reason = Some(reason.to_owned());
        }
    }

    pub(crate) fn set_skills(&mut self, id: &str, skills: BTreeMap<String, u8>) {
        if let Some(agent) = self.agents.get_mut(id) {
            agent.skills = skills;
        }
    }

    pub(crate) fn set_logout_pending(&mut self, id: &str, pending: bool) {
        if let Some(agent) = self.agents.get_mut(id) {
            agent.logout_pending = pending;
        }
    }

    /// Moves an agent to `state`; `idle_since` is recorded when the state is `Ready`.
    /// Returns false (and changes nothing) for an unknown agent.
    pub(crate) fn set_state(&mut self, id: &str, state: AgentState, idle_since: Millis) -> bool {
        let Some(agent) = self.agents.get_mut(id) else {
            return false;
        };
        if agent.state == AgentState::Ready {
            self.ready.remove(&(agent.idle_since, id.to_owned()));
        }
        if state == AgentState::Ready {
            agent.idle_since = idle_since;
            self.ready.insert((idle_since, id.to_owned()));
        }
        if state == AgentState::LoggedOut {
            agent.logout_pending = false;
            agent.not_ready_after_call = None;
        }
        agent.state = state;
        true
    }

    /// Checks that the ready index matches the agents exactly.
    pub(crate) fn check_index(&self) -> Result<(), String> {
        let expected: BTreeSet<(Millis, String)> = self
            .agents
            .iter()
            .filter(|(_, a)| a.state == AgentState::Ready)
            .map(|(id, a)| (a.idle_since, id.clone()))
            .collect();
        if expected == self.ready {
            Ok(())
        } else {
            Err(format!(
                "ready index {:?} does not match ready agents {:?}",
                self.ready, expected
            ))
        }
    }
}

impl Canon for AgentState {
    fn canon(&self, h: &mut Fnv) {
        match self {
            AgentState::LoggedOut => h.tag(0),
            AgentState::Ready => h.tag(1),
            AgentState::NotReady { reason } => {
                h.tag(2);
                reason.canon(h);
            }
            AgentState::Reserved { call } => {
                h.tag(3);
                call.canon(h);
            }
            AgentState::OnCall { call } => {
                h.tag(4);
                call.canon(h);
            }
            AgentState::WrapUp { until } => {
                h.tag(5);
                until.canon(h);
            }
        }
    }
}

impl Canon for Agent {
    fn canon(&self, h: &mut Fnv) {
        let Agent {
            skills,
            state,
            idle_since,
            logout_pending,
            node,
            site,
            located_at,
            logout_reason,
            not_ready_after_call,
            missed,
            calls_answered,
            talk_ms,
        } = self;
        skills.canon(h);
        state.canon(h);
        idle_since.canon(h);
        logout_pending.canon(h);
        node.canon(h);
        site.canon(h);
        located_at.canon(h);
        logout_reason.canon(h);
        not_ready_after_call.canon(h);
        missed.canon(h);
        calls_answered.canon(h);
        talk_ms.canon(h);
    }
}

impl Canon for Roster {
    fn canon(&self, h: &mut Fnv) {
        // The ready index is derived from the agents; hashing it too would add nothing.
        let Roster { agents, ready: _ } = self;
        agents.canon(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_index_orders_by_idle_then_id() {
        let mut roster = Roster::default();
        for id in ["b", "a", "c"] {
            roster.add(id, BTreeMap::new());
        }
        roster.set_state("b", AgentState::Ready, 10);
        roster.set_state("a", AgentState::Ready, 10);
        roster.set_state("c", AgentState::Ready, 5);
        let order: Vec<&str> = roster.ready_by_idle().map(|(id, _)| id).collect();
        assert_eq!(order, vec!["c", "a", "b"]);
        roster.set_state(
            "c",
            AgentState::NotReady {
                reason: "break".into(),
            },
            0,
        );
        let order: Vec<&str> = roster.ready_by_idle().map(|(id, _)| id).collect();
        assert_eq!(order, vec!["a", "b"]);
        assert_eq!(roster.check_index(), Ok(()));
        assert!(!roster.set_state("nobody", AgentState::Ready, 1));
    }
}
