//! Every call that entered ends with exactly one terminal record: never two, and (once the
//! run has closed every call) never none.

use std::collections::BTreeMap;

use carillon_consensus::types::Proposal;
use carillon_routing::{Command, Event};

use super::{End, Invariant, Observation};

#[derive(Default)]
pub struct OneTerminal {
    /// Entered calls and their terminal records so far.
    records: BTreeMap<String, u32>,
}

impl Invariant for OneTerminal {
    fn name(&self) -> &'static str {
        "one_terminal_record"
    }

    fn observe(&mut self, obs: &Observation<'_>) -> Result<(), String> {
        let Observation::Committed(entry) = obs else {
            return Ok(());
        };
        if let Some(Command::Enqueue(a)) = command(&entry.proposal) {
            if entry.applied.refused.is_none() {
                self.records.entry(a.call.clone()).or_insert(0);
            }
        }
        for ev in &entry.applied.events {
            if let Event::CallFinished(rec) = ev {
                let n = self.records.entry(rec.call.clone()).or_insert(0);
                *n += 1;
                if *n > 1 {
                    return Err(format!(
                        "index {}: {} has {} terminal records (the last {:?})",
                        entry.index, rec.call, n, rec.disposition
                    ));
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, _end: &End) -> Result<(), String> {
        let open: Vec<&String> = self
            .records
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(c, _)| c)
            .collect();
        if open.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} calls entered but never ended: {:?}",
                open.len(),
                open
            ))
        }
    }
}

pub(super) fn command(p: &Proposal) -> Option<&Command> {
    match p {
        Proposal::Routing(c) => Some(c),
        Proposal::Once { command, .. } => Some(command),
    }
}
