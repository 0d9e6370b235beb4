//! The node's IVR flows as they are now: the config's `[[flows]]` and its numbers' `flow`
//! at start, then changed live through the admin API (`carillon ctl flows ...`).
//!
//! A new or replaced flow is validated exactly as at config load (its steps, the queues and
//! flows it names, loops that must wait for the caller) and compiled once; a call takes a
//! copy of the compiled flow when it arrives, so a change reaches the next call and never
//! one already in its menu. Flows are this node's, like its config: in a cluster, change
//! each node that answers the numbers.

use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::config::{compile, FlowConfig, FLOWS_MAX};
use super::Flow;
use crate::config::Config;

/// Why a change was refused, in words for the operator.
pub type Refusal = String;

/// One flow as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowListing {
    pub name: String,
    pub start: String,
    pub steps: usize,
    /// Numbers that run this flow.
    pub numbers: Vec<String>,
}

pub struct LiveFlows {
    inner: RwLock<Inner>,
}

struct Inner {
    /// As written (config or API), in the order they were defined.
    flows: Vec<FlowConfig>,
    compiled: BTreeMap<String, Flow>,
    /// Dialled number to flow name, for numbers that run one.
    numbers: BTreeMap<String, String>,
}

impl LiveFlows {
    /// The config's flows, compiled (the config was validated at load, so each compiles;
    /// one that does not is left out rather than stopping the node).
    pub fn from_config(config: &Config) -> LiveFlows {
        let compiled = (0..config.flows.len())
            .filter_map(|i| compile(config, i).ok())
            .map(|f| (f.name.clone(), f))
            .collect();
        let numbers = config
            .numbers
            .iter()
            .filter_map(|n| Some((n.number.clone(), n.flow.clone()?)))
            .collect();
        LiveFlows {
            inner: RwLock::new(Inner {
                flows: config.flows.clone(),
                compiled,
                numbers,
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // The writers below validate before they touch the maps: a poisoned lock still
        // holds a consistent table.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The flow a call to `number` runs now, if any.
    pub fn for_number(&self, number: &str) -> Option<Flow> {
        let inner = self.read();
        let name = inner.numbers.get(number)?;
        inner.compiled.get(name).cloned()
    }

    pub fn list(&self) -> Vec<FlowListing> {
        let inner = self.read();
        inner
            .flows
            .iter()
            .map(|f| FlowListing {
                name: f.name.clone(),
                start: f.start.clone(),
                steps: f.steps.len(),
                numbers: inner
                    .numbers
                    .iter()
                    .filter(|(_, flow)| **flow == f.name)
                    .map(|(n, _)| n.clone())
                    .collect(),
            })
            .collect()
    }

    /// Adds the flow written in `toml` (the keys of one `[[flows]]` entry, its steps as
    /// `[[steps]]`), or replaces the flow of that name. Returns its name.
    pub fn set(&self, config: &Config, toml: &str) -> Result<String, Refusal> {
        let flow: FlowConfig =
            toml::from_str(toml).map_err(|e| format!("the flow is not valid: {e}"))?;
        if flow.name.trim().is_empty() {
            return Err("name: must not be empty".into());
        }
        let mut inner = self.write();
        let mut flows = inner.flows.clone();
        let at = match flows.iter().position(|f| f.name == flow.name) {
            Some(i) => {
                flows[i] = flow;
                i
            }
            None if flows.len() >= FLOWS_MAX => {
                return Err(format!("at most {FLOWS_MAX} flows per node"));
            }
            None => {
                flows.push(flow);
                flows.len() - 1
            }
        };
        // A flow is checked against the node's config (its queues) and the flows beside
        // it, as the config loader checks it.
        let mut candidate = config.clone();
        candidate.flows = flows;
        let compiled = compile(&candidate, at).map_err(|(key, why)| {
            let prefix = format!("flows[{at}].");
            format!("{}: {why}", key.strip_prefix(&prefix).unwrap_or(&key))
        })?;
        let name = compiled.name.clone();
        inner.flows = candidate.flows;
        inner.compiled.insert(name.clone(), compiled);
        Ok(name)
    }

    /// Removes a flow no number runs.
    pub fn delete(&self, name: &str) -> Result<(), Refusal> {
        let mut inner = self.write();
        if !inner.compiled.contains_key(name) {
            return Err(format!("no flow named `{name}`"));
        }
        let users: Vec<&String> = inner
            .numbers
            .iter()
            .filter(|(_, f)| *f == name)
            .map(|(n, _)| n)
            .collect();
        if !users.is_empty() {
            return Err(format!(
                "numbers {users:?} run flow `{name}`; detach them first"
            ));
        }
        inner.flows.retain(|f| f.name != name);
        inner.compiled.remove(name);
        Ok(())
    }

    /// Makes calls to `number` (one of the config's numbers) run `flow`, or no flow.
    pub fn attach(&self, config: &Config, number: &str, flow: Option<&str>) -> Result<(), Refusal> {
        if !config.numbers.iter().any(|n| n.number == number) {
            return Err(format!(
                "no number `{number}` in this node's config ([[numbers]])"
            ));
        }
        let mut inner = self.write();
        match flow {
            Some(name) => {
                if !inner.compiled.contains_key(name) {
                    return Err(format!("no flow named `{name}`"));
                }
                inner.numbers.insert(number.to_string(), name.to_string());
            }
            None => {
                inner.numbers.remove(number);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = r#"
[node]
id = "n1"
data_dir = "data"
[sip]
listen = "127.0.0.1:5060"
realm = "test"
[rtp]
ip = "127.0.0.1"
port_min = 20000
port_max = 20100
[http]
listen = "127.0.0.1:8080"
[media]
hold_music = "hold.wav"
[[queues]]
name = "support"
skill = "support"
[[queues]]
name = "sales"
skill = "sales"
[[numbers]]
number = "200"
queue = "support"
flow = "front"
[[numbers]]
number = "300"
queue = "sales"
[[flows]]
name = "front"
start = "q"
[[flows.steps]]
id = "q"
kind = "queue"
queue = "support"
"#;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("n.toml");
        std::fs::write(&path, text).expect("config");
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    const SALES_FLOW: &str = r#"
name = "front"
start = "q"
[[steps]]
id = "q"
kind = "queue"
queue = "sales"
priority = 3
"#;

    fn queue_of(f: &Flow) -> String {
        match &f.steps[f.start].kind {
            super::super::StepKind::Queue { queue, .. } => queue.clone(),
            other => panic!("not a queue step: {other:?}"),
        }
    }

    #[test]
    fn a_replaced_flow_reaches_the_next_call_only() {
        let c = config();
        let live = LiveFlows::from_config(&c);
        let before = live.for_number("200").expect("200 runs a flow");
        assert_eq!(queue_of(&before), "support");
        assert_eq!(live.set(&c, SALES_FLOW), Ok("front".into()));
        assert_eq!(
            queue_of(&live.for_number("200").expect("still a flow")),
            "sales"
        );
        // The copy a call already took is its own.
        assert_eq!(queue_of(&before), "support");
        assert!(live.for_number("300").is_none());
    }

    #[test]
    fn a_bad_flow_is_refused_by_key_and_the_old_one_stays() {
        let c = config();
        let live = LiveFlows::from_config(&c);
        let bad = SALES_FLOW.replace("\"sales\"", "\"nowhere\"");
        let err = live.set(&c, &bad).expect_err("unknown queue");
        assert!(err.starts_with("steps[0].queue"), "{err}");
        assert!(err.contains("nowhere"), "{err}");
        let err = live
            .set(&c, "name = \"x\"\nstart = \"a\"\nbogus = 1")
            .expect_err("bad key");
        assert!(err.contains("bogus"), "{err}");
        let loops =
            "name = \"l\"\nstart = \"a\"\n[[steps]]\nid = \"a\"\nkind = \"play\"\nprompt = \"x.wav\"\nnext = \"a\"";
        let err = live.set(&c, loops).expect_err("a loop without a menu");
        assert!(err.contains("loop"), "{err}");
        assert_eq!(
            queue_of(&live.for_number("200").expect("unchanged")),
            "support"
        );
    }

    #[test]
    fn numbers_attach_and_flows_in_use_are_kept() {
        let c = config();
        let live = LiveFlows::from_config(&c);
        let other = SALES_FLOW.replace("name = \"front\"", "name = \"sales-front\"");
        assert_eq!(live.set(&c, &other), Ok("sales-front".into()));
        live.attach(&c, "300", Some("sales-front")).expect("attach");
        assert_eq!(
            queue_of(&live.for_number("300").expect("attached")),
            "sales"
        );
        let err = live.delete("sales-front").expect_err("in use");
        assert!(err.contains("300"), "{err}");
        live.attach(&c, "300", None).expect("detach");
        live.delete("sales-front").expect("no longer used");
        assert!(live.attach(&c, "999", Some("front")).is_err());
        assert!(live.attach(&c, "300", Some("sales-front")).is_err());
        let listed = live.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].numbers, vec!["200".to_string()]);
    }
}
