//! The messages on a Raft stream: one [`Request`] frame (a snapshot adds its chunk frames),
//! then one [`Response`] frame. Wire changes bump [`crate::tls::ALPN`].

use std::io::Cursor;

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, VoteOf};
use openraft::RaftMetrics;
use serde::{Deserialize, Serialize};

use crate::types::{Applied, Member, NodeId, Proposal, TypeConfig};

/// A request, sent as the first frame of a bidirectional stream.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Request {
    /// A candidate asks for a vote.
    Vote(VoteRequest<TypeConfig>),
    /// A would-be candidate asks whether it could win (pre-vote).
    PreVote(VoteRequest<TypeConfig>),
    /// The leader replicates entries (or sends a heartbeat).
    Append(AppendEntriesRequest<TypeConfig>),
    /// The leader sends a full snapshot: this frame, then raw chunk frames adding up to
    /// `size_bytes`.
    Snapshot {
        /// The leader's vote.
        vote: VoteOf<TypeConfig>,
        /// What the snapshot covers.
        meta: SnapshotMetaOf<TypeConfig>,
        /// The total length of the chunks that follow.
        size_bytes: u64,
    },
    /// A follower forwards a client proposal to the leader (boxed: a routing command is
    /// far larger than the other requests).
    Forward(Box<Proposal>),
    /// Ask for the node's Raft status.
    Status,
}

/// The answer, sent as the only frame the server writes on the stream.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Response {
    /// Answer to [`Request::Vote`] and [`Request::PreVote`].
    Vote(VoteResponse<TypeConfig>),
    /// Answer to [`Request::Append`].
    Append(AppendEntriesResponse<TypeConfig>),
    /// Answer to [`Request::Snapshot`].
    Snapshot(SnapshotResponse<TypeConfig>),
    /// Answer to [`Request::Forward`].
    Forward(ForwardOutcome),
    /// Answer to [`Request::Status`].
    Status(PeerStatus),
    /// The request was refused: wrong identity, malformed, too large, or Raft stopped.
    Refused(String),
}

/// What became of a forwarded proposal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardOutcome {
    /// Committed and applied; the state machine's result.
    Applied(Applied),
    /// The receiver is not the leader; here is who is, if it knows.
    NotLeader {
        /// The leader's id.
        leader_id: Option<NodeId>,
        /// The leader's addresses.
        leader: Option<Member>,
    },
    /// Raft could not take the proposal (shutting down, membership in flux...).
    Failed(String),
}

/// One node's view of the cluster, as [`super::RaftTransport::status`] returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The node that answered.
    pub id: NodeId,
    /// `Leader`, `Follower`, `Candidate`, `Learner` or `Shutdown`.
    pub state: String,
    /// The current term.
    pub term: u64,
    /// The leader it follows, if any.
    pub leader: Option<NodeId>,
    /// Index of the last entry in its log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to its state machine.
    pub last_applied: Option<u64>,
    /// Voting members in the membership it holds (the union, during a joint change).
    pub voters: Vec<NodeId>,
    /// Every member it knows, voters and learners, with addresses.
    pub members: Vec<(NodeId, Member)>,
}

impl PeerStatus {
    /// Summarise openraft's metrics.
    pub fn from_metrics(m: &RaftMetrics<TypeConfig>) -> PeerStatus {
        let membership = m.membership_config.membership();
        PeerStatus {
            id: m.id,
            state: format!("{:?}", m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.as_ref().map(|l| l.index),
            voters: membership.voter_ids().collect(),
            members: membership
                .nodes()
                .map(|(id, node)| (*id, node.clone()))
                .collect(),
        }
    }
}

/// How the transport turns a state machine's snapshot data into bytes and back. The state
/// machine chooses the type; the transport streams it in chunks.
pub trait SnapshotBytes: Sized + Send + 'static {
    /// The whole snapshot, to be sent.
    fn into_snapshot_bytes(self) -> Vec<u8>;
    /// A received snapshot, to be installed.
    fn from_snapshot_bytes(bytes: Vec<u8>) -> Self;
}

impl SnapshotBytes for Vec<u8> {
    fn into_snapshot_bytes(self) -> Vec<u8> {
        self
    }
    fn from_snapshot_bytes(bytes: Vec<u8>) -> Self {
        bytes
    }
}

impl SnapshotBytes for Cursor<Vec<u8>> {
    fn into_snapshot_bytes(self) -> Vec<u8> {
        self.into_inner()
    }
    fn from_snapshot_bytes(bytes: Vec<u8>) -> Self {
        Cursor::new(bytes)
    }
}
