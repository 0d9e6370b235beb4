//! The dialling side: one cached QUIC connection per peer, one stream per RPC, and
//! openraft's `RaftNetworkV2` on top.
//!
//! A failed dial puts the peer in a backoff window (doubling, capped at `backoff_max_ms`);
//! calls inside the window fail at once as `Unreachable`, which also makes openraft back off.
//! A call that breaks its stream drops the cached connection, and so does a call that times
//! out on a connection nothing has answered on for a while, so the next call dials afresh
//! instead of waiting out QUIC's idle timeout on a dead (or restarted) peer. A timeout on a
//! connection that other calls are being answered on is only that call being slow: closing
//! the connection then would fail every other call in flight on it.

// This is the transport adapter: dial timeouts and backoff windows need the clock.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::{RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use tokio::time::Instant;

use super::frame::{self, FrameError};
use super::wire::{Request, Response, SnapshotBytes};
use super::{NetError, NetLimits};
use crate::state_machine::StateMachineStore;
use crate::tls::server_name;
use crate::types::{Member, NodeId, TypeConfig};

/// A timed-out call drops the connection only when nothing has been answered on it for
/// this long: longer than any one call's deadline, so a burst of slow calls on a busy
/// link is not mistaken for a dead peer, and still far shorter than QUIC's idle timeout.
const SILENT_PEER_MS: u64 = 2_000;

/// The shortest deadline an AppendEntries call gets. openraft gives appends the heartbeat
/// interval (100 ms by default); a follower busy with fsyncs, or a WAN round trip, takes
/// longer than that, and every such timeout made openraft back off and send the same
/// entries again, so commits stalled exactly when load was highest. A slow follower does
/// not hold up commits (the quorum does not wait for it), so a longer deadline costs
/// nothing but the time to notice a dead one.
const APPEND_TTL_MIN_MS: u64 = 1_000;

/// The first backoff window after a failed dial; it doubles up to `backoff_max_ms`.
const BACKOFF_FIRST_MS: u64 = 50;

/// The snapshot payload type the state machine chose; the transport streams it as bytes.
pub type SnapshotData = <StateMachineStore as RaftStateMachine<TypeConfig>>::SnapshotData;

/// Connections to peers, shared by every openraft client and by forward/status calls.
pub(crate) struct Peers {
    pub(crate) my_id: NodeId,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) client_config: quinn::ClientConfig,
    pub(crate) limits: NetLimits,
    slots: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<Slot>>>>,
    /// When a call to each peer was last answered (see [`Peers::answered_within`]).
    answered: Mutex<HashMap<NodeId, Instant>>,
}

#[derive(Default)]
struct Slot {
    conn: Option<(String, quinn::Connection)>,
    failures: u32,
    retry_at: Option<Instant>,
}

impl Peers {
    pub(crate) fn new(
        my_id: NodeId,
        endpoint: quinn::Endpoint,
        client_config: quinn::ClientConfig,
        limits: NetLimits,
    ) -> Peers {
        Peers {
            my_id,
            endpoint,
            client_config,
            limits,
            slots: Mutex::new(HashMap::new()),
            answered: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, peer: NodeId) -> Arc<tokio::sync::Mutex<Slot>> {
        // A poisoned map only means another thread panicked mid-insert; the map is still a
        // valid cache, so keep using it.
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(peer).or_default().clone()
    }

    /// The live connection to `peer` at `addr`, dialling if there is none. Concurrent
    /// callers for one peer wait for a single dial.
    pub(crate) async fn connection(
        &self,
        peer: NodeId,
        addr: &str,
    ) -> Result<quinn::Connection, NetError> {
        let slot = self.slot(peer);
        let mut slot = slot.lock().await;
        if let Some((cached_addr, conn)) = &slot.conn {
            if cached_addr == addr && conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        slot.conn = None;
        let now = Instant::now();
        if let Some(retry_at) = slot.retry_at {
            if retry_at > now {
                return Err(NetError::BackingOff {
                    peer,
                    retry_in_ms: (retry_at - now).as_millis() as u64,
                });
            }
        }
        match self.dial(peer, addr).await {
            Ok(conn) => {
                slot.failures = 0;
                slot.retry_at = None;
                slot.conn = Some((addr.to_string(), conn.clone()));
                Ok(conn)
            }
            Err(e) => {
                slot.failures = slot.failures.saturating_add(1);
                let wait_ms = backoff_ms(slot.failures, self.limits.backoff_max_ms);
                slot.retry_at = Some(Instant::now() + Duration::from_millis(wait_ms));
                tracing::debug!(peer, addr, error = %e, wait_ms, "dial failed; backing off");
                Err(e)
            }
        }
    }

    /// Drop the cached connection to `peer` if it is still `conn` (a newer one stays).
    pub(crate) async fn invalidate(&self, peer: NodeId, conn: &quinn::Connection) {
        let slot = self.slot(peer);
        let mut slot = slot.lock().await;
        if let Some((_, cached)) = &slot.conn {
            if cached.stable_id() == conn.stable_id() {
                cached.close(0u32.into(), b"rpc failed");
                slot.conn = None;
            }
        }
    }

    async fn dial(&self, peer: NodeId, addr: &str) -> Result<quinn::Connection, NetError> {
        let sock = resolve(addr).await?;
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), sock, &server_name(peer))
            .map_err(|e| NetError::Connect {
                peer,
                addr: addr.to_string(),
                detail: e.to_string(),
            })?;
        let timeout = Duration::from_millis(self.limits.connect_timeout_ms);
        match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(NetError::Connect {
                peer,
                addr: addr.to_string(),
                detail: e.to_string(),
            }),
            Err(_) => Err(NetError::Timeout {
                peer,
                what: "connect",
                after_ms: self.limits.connect_timeout_ms,
            }),
        }
    }

    /// One request, one response, on a fresh stream of the peer's connection.
    pub(crate) async fn call(
        &self,
        peer: NodeId,
        addr: &str,
        req: &Request,
        snapshot: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Response, NetError> {
        let conn = self.connection(peer, addr).await?;
        let exchange = exchange(&conn, req, snapshot, &self.limits);
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(NetError::Timeout {
                peer,
                what: "request",
                after_ms: timeout.as_millis() as u64,
            }),
        };
        match &result {
            Ok(_) => {
                self.lock_answered().insert(peer, Instant::now());
            }
            Err(NetError::Timeout { .. })
                if self.answered_within(peer, Duration::from_millis(SILENT_PEER_MS)) =>
            {
                tracing::debug!(peer, "call timed out on a live connection; keeping it");
            }
            Err(e) if e.breaks_connection() => self.invalidate(peer, &conn).await,
            Err(_) => {}
        }
        result
    }

    /// Whether some call to `peer` was answered within the last `window`.
    fn answered_within(&self, peer: NodeId, window: Duration) -> bool {
        self.lock_answered()
            .get(&peer)
            .is_some_and(|at| at.elapsed() < window)
    }

    fn lock_answered(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Instant>> {
        // Only Instants are stored: a poisoned map is still a valid map.
        self.answered.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn exchange(
    conn: &quinn::Connection,
    req: &Request,
    snapshot: Option<&[u8]>,
    limits: &NetLimits,
) -> Result<Response, NetError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| NetError::Stream(e.to_string()))?;
    frame::write_msg(&mut send, req, limits.message_size_max_bytes).await?;
    if let Some(bytes) = snapshot {
        let chunk = limits
            .snapshot_chunk_bytes
            .clamp(1, limits.message_size_max_bytes);
        for piece in bytes.chunks(chunk) {
            frame::write_raw(&mut send, piece, limits.message_size_max_bytes).await?;
        }
    }
    send.finish().map_err(|e| NetError::Stream(e.to_string()))?;
    match frame::read_msg(&mut recv, limits.message_size_max_bytes).await {
        Ok(resp) => Ok(resp),
        Err(FrameError::Closed) => Err(NetError::Stream(
            "the peer closed the stream without answering".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, NetError> {
    if let Ok(sock) = addr.parse() {
        return Ok(sock);
    }
    let bad = |detail: String| NetError::BadAddr {
        addr: addr.to_string(),
        detail,
    };
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("the name resolves to no address".into()))
}

/// Backoff after `failures` consecutive failed dials: 50, 100, 200... ms, capped.
fn backoff_ms(failures: u32, max_ms: u64) -> u64 {
    let shift = failures.saturating_sub(1).min(20);
    (BACKOFF_FIRST_MS << shift).min(max_ms)
}

/// Makes one [`PeerClient`] per target for openraft; all share the transport's connections.
#[derive(Clone)]
pub struct NetworkFactory {
    pub(crate) peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            peers: self.peers.clone(),
            target,
            addr: node.raft_addr.clone(),
        }
    }
}

/// openraft's handle on one peer.
pub struct PeerClient {
    peers: Arc<Peers>,
    target: NodeId,
    addr: String,
}

impl PeerClient {
    async fn rpc(
        &self,
        action: RPCTypes,
        req: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<TypeConfig>> {
        let ttl = match action {
            RPCTypes::AppendEntries => option
                .hard_ttl()
                .max(Duration::from_millis(APPEND_TTL_MIN_MS)),
            _ => option.hard_ttl(),
        };
        match self
            .peers
            .call(self.target, &self.addr, &req, None, ttl)
            .await
        {
            Ok(Response::Refused(why)) => Err(RPCError::Network(NetworkError::from_string(
                format!("{} refused {action}: {why}", self.target),
            ))),
            Ok(resp) => Ok(resp),
            Err(e) => Err(self.to_rpc_error(action, ttl, e)),
        }
    }

    fn to_rpc_error(&self, action: RPCTypes, ttl: Duration, e: NetError) -> RPCError<TypeConfig> {
        match e {
            NetError::Timeout { .. } => RPCError::Timeout(Timeout {
                action,
                id: self.peers.my_id,
                target: self.target,
                timeout: ttl,
            }),
            e if e.is_unreachable() => RPCError::Unreachable(Unreachable::new(&e)),
            e => RPCError::Network(NetworkError::new(&e)),
        }
    }

    fn unexpected(&self, action: RPCTypes, resp: &Response) -> RPCError<TypeConfig> {
        RPCError::Network(NetworkError::from_string(format!(
            "{} answered {action} with an unexpected message: {resp:?}",
            self.target
        )))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .rpc(RPCTypes::AppendEntries, Request::Append(rpc), &option)
            .await?
        {
            Response::Append(r) => Ok(r),
            other => Err(self.unexpected(RPCTypes::AppendEntries, &other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .rpc(RPCTypes::Vote, Request::Vote(rpc), &option)
            .await?
        {
            Response::Vote(r) => Ok(r),
            other => Err(self.unexpected(RPCTypes::Vote, &other)),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .rpc(RPCTypes::Vote, Request::PreVote(rpc), &option)
            .await?
        {
            Response::Vote(r) => Ok(r),
            other => Err(self.unexpected(RPCTypes::Vote, &other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let bytes = snapshot.snapshot.into_snapshot_bytes();
        let req = Request::Snapshot {
            vote,
            meta: snapshot.meta,
            size_bytes: bytes.len() as u64,
        };
        let ttl = option.hard_ttl();
        let send = self
            .peers
            .call(self.target, &self.addr, &req, Some(&bytes), ttl);
        let result = tokio::select! {
            r = send => r,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let action = RPCTypes::InstallSnapshot;
        match result {
            Ok(Response::Snapshot(r)) => Ok(r),
            Ok(Response::Refused(why)) => Err(StreamingError::Network(NetworkError::from_string(
                format!("{} refused the snapshot: {why}", self.target),
            ))),
            Ok(other) => Err(match self.unexpected(action, &other) {
                RPCError::Network(n) => StreamingError::Network(n),
                _ => StreamingError::Network(NetworkError::from_string("unexpected answer")),
            }),
            Err(e) => Err(match self.to_rpc_error(action, ttl, e) {
                RPCError::Timeout(t) => StreamingError::Timeout(t),
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                RPCError::Network(n) => StreamingError::Network(n),
                RPCError::RemoteError(r) => {
                    StreamingError::Network(NetworkError::from_string(r.to_string()))
                }
            }),
        }
    }

    fn backoff(&self) -> Option<Backoff> {
        let max_ms = self.peers.limits.backoff_max_ms;
        Some(Backoff::new(
            (1u32..).map(move |n| Duration::from_millis(backoff_ms(n, max_ms))),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let seq: Vec<u64> = (1..=7).map(|n| backoff_ms(n, 1_000)).collect();
        assert_eq!(seq, vec![50, 100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(backoff_ms(u32::MAX, 1_000), 1_000);
    }
}
