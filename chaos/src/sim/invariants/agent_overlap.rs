//! No agent is offered or connected to two calls at once: an agent never enters a call
//! state (reserved, on call) for one call while it holds another.

use std::collections::BTreeMap;

use carillon_routing::{AgentState, Event};

use super::{Invariant, Observation};

#[derive(Default)]
pub struct AgentOverlap {
    holding: BTreeMap<String, String>,
}

impl Invariant for AgentOverlap {
    fn name(&self) -> &'static str {
        "no_agent_on_two_calls"
    }

    fn observe(&mut self, obs: &Observation<'_>) -> Result<(), String> {
        let Observation::Committed(entry) = obs else {
            return Ok(());
        };
        for ev in &entry.applied.events {
            let Event::AgentStateChanged { agent, state } = ev else {
                continue;
            };
            match state {
                AgentState::Reserved { call } | AgentState::OnCall { call } => {
                    if let Some(held) = self.holding.get(agent) {
                        if held != call {
                            return Err(format!(
                                "index {}: {agent} takes {call} while holding {held}",
                                entry.index
                            ));
                        }
                    }
                    self.holding.insert(agent.clone(), call.clone());
                }
                _ => {
                    self.holding.remove(agent);
                }
            }
        }
        Ok(())
    }
}
