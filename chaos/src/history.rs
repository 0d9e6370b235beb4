//! What happened in one scenario, gathered after the fact from every node and every SIPp
//! caller: the calls placed (each named by its caller number), the node's call records,
//! the faults injected and when, and which nodes a fault took out (their calls may be lost).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::faults::NodeNum;

/// One call record (a CDR from `/api/cdrs`), the fields the checks read.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub call_id: String,
    pub sip_call_id: String,
    pub caller: String,
    pub queue: String,
    pub agent: String,
    pub arrived_at_ms: u64,
    pub offered_at_ms: Option<u64>,
    pub answered_at_ms: Option<u64>,
    pub ended_at_ms: u64,
    pub disposition: String,
    pub cause: String,
    /// The node that owned the call (from the record), e.g. "n1".
    pub node: String,
    /// The node whose API returned it.
    pub read_from: NodeNum,
}

impl Record {
    /// Reads one CDR; None when a required field is missing.
    pub fn from_json(v: &Value, read_from: NodeNum) -> Option<Record> {
        let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
        Some(Record {
            call_id: v["call_id"].as_str()?.to_string(),
            sip_call_id: s("sip_call_id"),
            caller: s("caller"),
            queue: s("queue"),
            agent: s("agent"),
            arrived_at_ms: v["arrived_at_ms"].as_u64()?,
            offered_at_ms: v["offered_at_ms"].as_u64(),
            answered_at_ms: v["answered_at_ms"].as_u64(),
            ended_at_ms: v["ended_at_ms"].as_u64()?,
            disposition: s("disposition"),
            cause: s("cause"),
            node: s("node"),
            read_from,
        })
    }
}

/// Calls placed by one SIPp caller instance.
#[derive(Clone, Debug, Serialize)]
pub struct Placed {
    /// The node called.
    pub node: NodeNum,
    /// Caller numbers are `prefix` + 1..=count.
    pub prefix: String,
    pub count: u64,
    pub sipp_ok: u64,
    pub sipp_failed: u64,
    /// The wave this caller belongs to: load during faults, or the check after healing.
    pub after_heal: bool,
}

impl Placed {
    pub fn callers(&self) -> impl Iterator<Item = String> + '_ {
        (1..=self.count).map(move |k| format!("{}{k}", self.prefix))
    }
}

/// A fault as injected, for the report and for the checks' time windows.
#[derive(Clone, Debug, Serialize)]
pub struct FaultEvent {
    /// Milliseconds since the Unix epoch (the nodes' record clock).
    pub at_ms: u64,
    pub what: String,
}

/// Everything one scenario gathered.
#[derive(Clone, Debug, Default, Serialize)]
pub struct History {
    pub placed: Vec<Placed>,
    pub records: Vec<Record>,
    pub faults: Vec<FaultEvent>,
    /// Nodes a fault took out (killed, paused, cut off, disk full): their calls may be
    /// lost, with a cause.
    pub faulted: BTreeSet<NodeNum>,
    /// Wall-clock window of the fault phase (first fault to heal).
    pub fault_window_ms: Option<(u64, u64)>,
    /// Calls the routing state still held (waiting, offering, connected) once every
    /// caller was done, and the queues as the leader showed them.
    pub open_calls_after: Option<(u64, String)>,
    /// Replica samples after healing: per node, `last_applied` -> ACD summary seen there.
    #[serde(skip)]
    pub replica_samples: BTreeMap<NodeNum, BTreeMap<u64, Value>>,
}

impl History {
    /// Records by caller number.
    pub fn by_caller(&self) -> BTreeMap<&str, Vec<&Record>> {
        let mut m: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
        for r in &self.records {
            m.entry(r.caller.as_str()).or_default().push(r);
        }
        m
    }

    /// The node number in a record's `node` field ("n2" -> 2).
    pub fn node_num(name: &str) -> Option<NodeNum> {
        name.trim_start_matches('n').parse().ok()
    }
}
