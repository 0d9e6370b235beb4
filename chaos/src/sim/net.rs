//! The simulated network: openraft's `RaftNetworkV2` over in-memory delivery. Each
//! message (request, then answer) is dropped, delayed or duplicated as the world's links
//! and the seed decide; partitions cut directed links, so one-way and symmetric cuts and a
//! cut-off site are all sets of cut links. Concurrent messages with different delays
//! arrive reordered.

use std::future::Future;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use carillon_consensus::openraft::error::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable,
};
use carillon_consensus::openraft::network::{Backoff, RPCOption};
use carillon_consensus::openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use carillon_consensus::openraft::type_config::alias::{SnapshotOf, VoteOf};
use carillon_consensus::openraft::{EntryPayload, RaftNetworkFactory, RaftNetworkV2, Snapshot};
use carillon_consensus::state_machine::SnapshotData;
use carillon_consensus::types::{Member, NodeId, Raft, TypeConfig};

use super::world::World;
use super::Bug;

/// How long a lost message keeps its sender waiting, at most, before it gives up.
const LOST_WAIT_MS_MAX: u64 = 150;
/// openraft's wait before it retries an unreachable peer.
const BACKOFF_MS: u64 = 50;

enum Fate {
    Drop(&'static str),
    Deliver {
        delay_ms: u64,
        dup_after_ms: Option<u64>,
        incarnation: u64,
    },
}

fn decide(world: &World, from: NodeId, to: NodeId) -> Fate {
    let mut s = world.lock();
    s.stats.messages += 1;
    let incarnation = match s.nodes.get(&to) {
        Some(n) if n.alive() => n.incarnation,
        _ => {
            s.stats.dropped += 1;
            return Fate::Drop("peer down");
        }
    };
    if s.links.is_cut(from, to) {
        s.stats.dropped += 1;
        return Fate::Drop("partition");
    }
    let loss = s.links.loss_pct;
    if s.rng.chance_pct(loss) {
        s.stats.dropped += 1;
        return Fate::Drop("lost");
    }
    let (lo, hi) = (
        s.links.delay_min_ms,
        s.links.delay_max_ms.max(s.links.delay_min_ms + 1),
    );
    let delay_ms = lo + s.rng.below(hi - lo);
    let dup = s.links.dup_pct;
    let dup_after_ms = if s.rng.chance_pct(dup) {
        s.stats.duplicated += 1;
        Some(delay_ms + 1 + s.rng.below(20))
    } else {
        None
    };
    Fate::Deliver {
        delay_ms,
        dup_after_ms,
        incarnation,
    }
}

/// The target's Raft if it still runs the incarnation the message was sent to and the
/// link is still up.
fn reachable(world: &World, from: NodeId, to: NodeId, incarnation: u64) -> Option<Raft> {
    let s = world.lock();
    if s.links.is_cut(from, to) {
        return None;
    }
    let n = s.nodes.get(&to)?;
    (n.incarnation == incarnation)
        .then(|| n.raft.clone())
        .flatten()
}

/// Carries `req` from `from` to `to`, hands it to `call` on the target's Raft, and carries
/// the answer back, each way under the links' faults.
pub async fn deliver<Req, Resp, F, Fut>(
    world: &Arc<World>,
    from: NodeId,
    to: NodeId,
    kind: &'static str,
    req: Req,
    ttl: Duration,
    call: F,
) -> Result<Resp, String>
where
    Req: Clone + Send + 'static,
    Resp: Send + 'static,
    F: Fn(Raft, Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, String>> + Send + 'static,
{
    let lost_wait = ttl.min(Duration::from_millis(LOST_WAIT_MS_MAX));
    let (delay_ms, incarnation) = match decide(world, from, to) {
        Fate::Drop(why) => {
            world.trace(format_args!("{kind} n{from}->n{to} dropped ({why})"));
            tokio::time::sleep(lost_wait).await;
            return Err(format!("{kind} to n{to}: {why}"));
        }
        Fate::Deliver {
            delay_ms,
            dup_after_ms,
            incarnation,
        } => {
            world.trace(format_args!("{kind} n{from}->n{to} sent, {delay_ms} ms"));
            if let Some(after) = dup_after_ms {
                let (world, req, call) = (Arc::clone(world), req.clone(), call.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(after)).await;
                    if let Some(raft) = reachable(&world, from, to, incarnation) {
                        world.trace(format_args!("{kind} n{from}->n{to} duplicate delivered"));
                        let _ = call(raft, req).await;
                    }
                });
            }
            (delay_ms, incarnation)
        }
    };
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    let Some(raft) = reachable(world, from, to, incarnation) else {
        world.trace(format_args!("{kind} n{from}->n{to} lost in flight"));
        tokio::time::sleep(lost_wait).await;
        return Err(format!("{kind} to n{to}: lost in flight"));
    };
    let resp = call(raft, req).await?;
    // The answer travels back under the reverse link's faults.
    match decide(world, to, from) {
        Fate::Drop(why) => {
            world.trace(format_args!("{kind} answer n{to}->n{from} dropped ({why})"));
            tokio::time::sleep(lost_wait).await;
            Err(format!("{kind} answer from n{to}: {why}"))
        }
        Fate::Deliver { delay_ms, .. } => {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            if world.lock().links.is_cut(to, from) {
                world.trace(format_args!("{kind} answer n{to}->n{from} lost in flight"));
                return Err(format!("{kind} answer from n{to}: lost in flight"));
            }
            world.trace(format_args!("{kind} answer n{to}->n{from} delivered"));
            Ok(resp)
        }
    }
}

/// [`super::Bug::ReplicaAppliesTwice`] strikes no earlier than this index, once routing
/// is set up and commands flow.
pub const BUG_INDEX_MIN: u64 = 10;

/// Plants [`super::Bug::ReplicaAppliesTwice`] in an append request to `to`: the chosen
/// entry carries the command of the index before it.
fn plant_apply_twice(world: &World, to: NodeId, rpc: &mut AppendEntriesRequest<TypeConfig>) {
    let mut s = world.lock();
    for e in &mut rpc.entries {
        let index = e.log_id.index;
        let EntryPayload::Normal(p) = &mut e.payload else {
            continue;
        };
        let previous = index
            .checked_sub(1)
            .and_then(|i| s.bug_seen.get(&i))
            .cloned();
        s.bug_seen.insert(index, p.clone());
        if s.bug_at.is_none() && index >= BUG_INDEX_MIN && previous.is_some() {
            s.bug_at = Some((to, index));
        }
        if s.bug_at == Some((to, index)) {
            if let Some(previous) = previous {
                *p = previous;
            }
        }
    }
}

/// One node's network factory.
#[derive(Clone)]
pub struct SimNetwork {
    pub world: Arc<World>,
    pub me: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimPeer;

    async fn new_client(&mut self, target: NodeId, _node: &Member) -> SimPeer {
        SimPeer {
            world: Arc::clone(&self.world),
            from: self.me,
            to: target,
        }
    }
}

/// openraft's handle on one simulated peer.
pub struct SimPeer {
    world: Arc<World>,
    from: NodeId,
    to: NodeId,
}

fn unreachable(why: String) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(why)))
}

impl RaftNetworkV2<TypeConfig> for SimPeer {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        if self.world.cfg.bug == Some(Bug::ReplicaAppliesTwice) {
            plant_apply_twice(&self.world, self.to, &mut rpc);
        }
        deliver(
            &self.world,
            self.from,
            self.to,
            "append",
            rpc,
            option.hard_ttl(),
            |raft: Raft, rpc| async move { raft.append_entries(rpc).await.map_err(|e| e.to_string()) },
        )
        .await
        .map_err(unreachable)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        deliver(
            &self.world,
            self.from,
            self.to,
            "vote",
            rpc,
            option.hard_ttl(),
            |raft: Raft, rpc| async move { raft.vote(rpc).await.map_err(|e| e.to_string()) },
        )
        .await
        .map_err(unreachable)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        deliver(
            &self.world,
            self.from,
            self.to,
            "pre-vote",
            rpc,
            option.hard_ttl(),
            |raft: Raft, rpc| async move { raft.pre_vote(rpc).await.map_err(|e| e.to_string()) },
        )
        .await
        .map_err(unreachable)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let req = (vote, snapshot.meta, snapshot.snapshot.into_inner());
        deliver(
            &self.world,
            self.from,
            self.to,
            "snapshot",
            req,
            option.hard_ttl(),
            |raft: Raft, (vote, meta, bytes)| async move {
                let snapshot = Snapshot {
                    meta,
                    snapshot: Cursor::new(bytes),
                };
                raft.install_full_snapshot(vote, snapshot)
                    .await
                    .map_err(|e| e.to_string())
            },
        )
        .await
        .map_err(|why| StreamingError::Network(NetworkError::new(&std::io::Error::other(why))))
    }

    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(std::iter::repeat(Duration::from_millis(
            BACKOFF_MS,
        ))))
    }
}
