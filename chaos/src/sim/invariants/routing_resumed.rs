//! Routing resumes after healing: every call placed once the faults are healed is
//! answered before the run ends.

use std::collections::BTreeSet;

use carillon_routing::Event;

use super::{End, Invariant, Observation};

#[derive(Default)]
pub struct RoutingResumed {
    connected: BTreeSet<String>,
}

impl Invariant for RoutingResumed {
    fn name(&self) -> &'static str {
        "routing_resumed"
    }

    fn observe(&mut self, obs: &Observation<'_>) -> Result<(), String> {
        if let Observation::Committed(entry) = obs {
            for ev in &entry.applied.events {
                if let Event::Connected { call, .. } = ev {
                    self.connected.insert(call.clone());
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, end: &End) -> Result<(), String> {
        let missed: Vec<&String> = end
            .post_heal_calls
            .iter()
            .filter(|c| !self.connected.contains(*c))
            .collect();
        if missed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} of {} calls placed after healing were never answered: {:?}",
                missed.len(),
                end.post_heal_calls.len(),
                missed
            ))
        }
    }
}
