//! The openraft type configuration shared by the log, the state machine and the network.
//!
//! A node is named `n<id>` in certificates and in the CLI; openraft sees the numeric id.

use std::fmt;

use carillon_routing::{Command, Event};
use serde::{Deserialize, Serialize};

/// A cluster member's numeric id (`n3` is 3).
pub type NodeId = u64;

/// What every member knows about another: where to reach it and where it stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The QUIC (Raft) address, `host:port`.
    pub raft_addr: String,
    /// The site this node serves (`hq`, `branch`...).
    pub site: String,
    /// The node's SIP address, `host:port`, for inter-node call legs.
    pub sip_addr: String,
    /// The node's HTTP address, `host:port`.
    pub http_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.raft_addr, self.site)
    }
}

/// One replicated log entry's application data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Proposal {
    /// A routing command for the ACD.
    Routing(Command),
    /// A routing command applied at most once however often it is proposed: a proposer
    /// that lost the answer (a forward timed out, the leader died) proposes it again under
    /// the same id, and a replica that already applied it answers with the first result.
    Once { id: ProposalId, command: Command },
}

/// Names one proposal for de-duplication: the proposing node, that node's run (a number
/// it picks at start, so a restart never reuses an id) and a counter within the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProposalId {
    pub node: NodeId,
    pub run: u64,
    pub seq: u64,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proposal::Routing(cmd) => write!(f, "routing {cmd:?}"),
            Proposal::Once { id, command } => {
                write!(f, "routing n{}/{}/{} {command:?}", id.node, id.run, id.seq)
            }
        }
    }
}

/// What applying one entry produced, returned to the proposer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The events the ACD emitted, in order.
    pub events: Vec<Event>,
    /// Set when the ACD refused the command (the entry is still in the log, and refused the
    /// same way on every replica).
    pub refused: Option<String>,
}

openraft::declare_raft_types!(
    /// Carillon's Raft types.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = NodeId,
        Node = Member,
);

/// The Raft handle the node drives.
pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachineStore>;

/// `n3` or `3` to 3.
pub fn parse_node_name(s: &str) -> Option<NodeId> {
    let digits = s.strip_prefix('n').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The name a node carries in its certificate and in the CLI.
pub fn node_name(id: NodeId) -> String {
    format!("n{id}")
}
