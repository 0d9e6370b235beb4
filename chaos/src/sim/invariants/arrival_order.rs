//! Within a queue and priority, callers are offered in arrival order: a call's first
//! offer comes only when no call that entered before it (same queue, same priority) still
//! waits without ever having been offered. The simulated queue has no escalation, one
//! skill every agent holds and one routing site, so the order is strict.

use std::collections::{BTreeMap, BTreeSet};

use carillon_routing::{Command, Event};

use super::one_terminal::command;
use super::{Invariant, Observation};

#[derive(Default)]
pub struct ArrivalOrder {
    /// Calls never offered yet, in log order, by (queue, priority).
    waiting: BTreeMap<(String, u32), Vec<String>>,
    /// Where each waiting call is.
    key: BTreeMap<String, (String, u32)>,
    seen: BTreeSet<String>,
}

impl ArrivalOrder {
    fn leave(&mut self, call: &str) {
        if let Some(k) = self.key.remove(call) {
            if let Some(list) = self.waiting.get_mut(&k) {
                list.retain(|c| c != call);
            }
        }
    }
}

impl Invariant for ArrivalOrder {
    fn name(&self) -> &'static str {
        "arrival_order"
    }

    fn observe(&mut self, obs: &Observation<'_>) -> Result<(), String> {
        let Observation::Committed(entry) = obs else {
            return Ok(());
        };
        if let Some(Command::Enqueue(a)) = command(&entry.proposal) {
            if entry.applied.refused.is_none() && self.seen.insert(a.call.clone()) {
                let k = (a.queue.clone(), a.priority);
                self.waiting
                    .entry(k.clone())
                    .or_default()
                    .push(a.call.clone());
                self.key.insert(a.call.clone(), k);
            }
        }
        for ev in &entry.applied.events {
            match ev {
                Event::Offered { call, .. } | Event::CallbackOffered { call, .. } => {
                    if let Some(k) = self.key.get(call) {
                        let list = self.waiting.get(k).map(Vec::as_slice).unwrap_or(&[]);
                        let ahead: Vec<&String> = list.iter().take_while(|c| *c != call).collect();
                        if !ahead.is_empty() {
                            return Err(format!(
                                "index {}: {call} offered before {:?} that entered {} priority {} earlier",
                                entry.index, ahead, k.0, k.1
                            ));
                        }
                        let call = call.clone();
                        self.leave(&call);
                    }
                }
                Event::CallFinished(rec) => self.leave(&rec.call),
                Event::CallMoved { call, .. } | Event::CallExited { call, .. } => self.leave(call),
                _ => {}
            }
        }
        Ok(())
    }
}
