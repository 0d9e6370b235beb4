//! The Raft transport: openraft's RPCs over QUIC with mutual TLS.
//!
//! One quinn endpoint per node serves and dials on a single UDP socket. Each peer gets one
//! cached connection; each RPC opens its own bidirectional stream, so a vote never queues
//! behind a large append. Frames are length-prefixed postcard, refused over
//! `message_size_max_bytes` before any allocation; snapshots go as bounded chunks on one
//! stream. Peers are authenticated by certificate ([`crate::tls`]) and every request that
//! speaks for a node is checked against the certificate's node.
//!
//! Call order: [`RaftTransport::bind`], hand [`RaftTransport::network_factory`] to
//! `Raft::new`, then [`RaftTransport::serve`] with the Raft handle; [`RaftTransport::shutdown`]
//! at the end. Followers use [`RaftTransport::forward`] to hand proposals to the leader and
//! [`RaftTransport::status`] to ask any member how it stands.
//!
//! What it leaves to others: membership (the node adds learners and changes voters through
//! openraft; the peer address is the target's [`Member::raft_addr`]) and storage.

mod client;
mod frame;
mod server;
mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

pub use client::{NetworkFactory, PeerClient};
pub use frame::FrameError;
pub use wire::{ForwardOutcome, PeerStatus, SnapshotBytes};

use crate::tls::{NodeTls, TlsError};
use crate::types::{Applied, Member, NodeId, Proposal, Raft};
use client::Peers;
use server::ServerCtx;
use wire::{Request, Response};

/// The transport's limits; every one has a unit in its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetLimits {
    /// The largest frame sent or accepted (an append batch, an answer, a snapshot chunk).
    pub message_size_max_bytes: usize,
    /// Snapshot chunk size when sending (capped by `message_size_max_bytes`).
    pub snapshot_chunk_bytes: usize,
    /// The largest whole snapshot accepted.
    pub snapshot_size_max_bytes: u64,
    /// How long a dial may take.
    pub connect_timeout_ms: u64,
    /// Deadline for forward and status calls, and for a peer to send its request.
    pub rpc_timeout_ms: u64,
    /// The longest wait between dials to an unreachable peer.
    pub backoff_max_ms: u64,
    /// Incoming connections served at once (a cluster needs one per peer).
    pub connections_max: usize,
    /// Streams (RPCs in flight) a peer may open at once on one connection. A busy
    /// follower forwards a few proposals per call; hundreds may be in flight at once.
    pub streams_per_connection_max: u32,
    /// A connection with no traffic for this long is closed (keep-alives run at a third).
    pub idle_timeout_ms: u64,
}

impl Default for NetLimits {
    fn default() -> Self {
        NetLimits {
            message_size_max_bytes: 8 << 20,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_size_max_bytes: 1 << 30,
            connect_timeout_ms: 3_000,
            rpc_timeout_ms: 5_000,
            backoff_max_ms: 5_000,
            connections_max: 64,
            streams_per_connection_max: 1024,
            idle_timeout_ms: 10_000,
        }
    }
}

/// Why a transport call failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The UDP socket could not be bound.
    #[error("cannot bind the Raft endpoint to {addr}: {source} (is the port in use?)")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TLS material does not make a QUIC configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The peer's address is not usable.
    #[error("bad peer address `{addr}`: {detail}")]
    BadAddr {
        /// The address given.
        addr: String,
        /// Why it failed.
        detail: String,
    },
    /// The peer could not be reached or failed the TLS handshake.
    #[error("cannot connect to node {peer} at {addr}: {detail}")]
    Connect {
        /// The peer.
        peer: NodeId,
        /// Its address.
        addr: String,
        /// What went wrong.
        detail: String,
    },
    /// The peer failed recently; the next dial waits for the backoff window.
    #[error("node {peer} is unreachable; next dial in {retry_in_ms} ms")]
    BackingOff {
        /// The peer.
        peer: NodeId,
        /// Time left in the window.
        retry_in_ms: u64,
    },
    /// A deadline passed.
    #[error("node {peer}: {what} timed out after {after_ms} ms")]
    Timeout {
        /// The peer.
        peer: NodeId,
        /// `connect` or `request`.
        what: &'static str,
        /// The deadline.
        after_ms: u64,
    },
    /// The stream broke.
    #[error("stream failed: {0}")]
    Stream(String),
    /// A frame could not be read or written.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer refused the request.
    #[error("the peer refused: {0}")]
    Refused(String),
    /// The peer is not the leader.
    #[error("not the leader; the leader is {}", leader_id.map_or("unknown".to_string(), |l| format!("node {l}")))]
    NotLeader {
        /// The leader's id, if the peer knows it.
        leader_id: Option<NodeId>,
        /// The leader's addresses, if the peer knows them.
        leader: Option<Member>,
    },
    /// The leader could not commit the proposal.
    #[error("the leader could not commit the proposal: {0}")]
    Proposal(String),
    /// The peer answered with the wrong kind of message.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// `serve` was called twice.
    #[error("the transport is already serving")]
    AlreadyServing,
}

impl NetError {
    /// The peer could not be reached at all (openraft should back off).
    fn is_unreachable(&self) -> bool {
        matches!(
            self,
            NetError::BadAddr { .. } | NetError::Connect { .. } | NetError::BackingOff { .. }
        )
    }

    /// The connection may be dead: drop it so the next call dials afresh.
    fn breaks_connection(&self) -> bool {
        matches!(
            self,
            NetError::Timeout { .. } | NetError::Stream(_) | NetError::Frame(FrameError::Io(_))
        )
    }
}

/// A node's Raft endpoint: serves peers and dials them, on one UDP socket.
#[derive(Clone)]
pub struct RaftTransport {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    peers: Arc<Peers>,
    limits: NetLimits,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl RaftTransport {
    /// Bind the endpoint on `addr` (port 0 for any free port; see [`Self::local_addr`]).
    /// Must run inside a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        tls: NodeTls,
        limits: NetLimits,
    ) -> Result<RaftTransport, NetError> {
        let mut transport = quinn::TransportConfig::default();
        let idle = Duration::from_millis(limits.idle_timeout_ms.max(1));
        transport
            .max_concurrent_bidi_streams(limits.streams_per_connection_max.into())
            .max_concurrent_uni_streams(0u32.into())
            .keep_alive_interval(Some(idle / 3))
            .max_idle_timeout(idle.try_into().ok());
        let transport = Arc::new(transport);

        let mut server_config = quinn::ServerConfig::with_crypto(tls.quic_server_crypto()?);
        server_config.transport_config(transport.clone());
        let mut client_config = quinn::ClientConfig::new(tls.quic_client_crypto()?);
        client_config.transport_config(transport);

        let endpoint = quinn::Endpoint::server(server_config, addr)
            .map_err(|source| NetError::Bind { addr, source })?;
        let peers = Arc::new(Peers::new(
            tls.id(),
            endpoint.clone(),
            client_config,
            limits.clone(),
        ));
        Ok(RaftTransport {
            inner: Arc::new(Inner {
                endpoint,
                peers,
                limits,
                accept_task: Mutex::new(None),
            }),
        })
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        let addr = self.inner.endpoint.local_addr();
        addr.map_err(|source| NetError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })
    }

    /// This node's id (from its certificate).
    pub fn node_id(&self) -> NodeId {
        self.inner.peers.my_id
    }

    /// The factory openraft uses to reach peers; clients share this transport's connections.
    pub fn network_factory(&self) -> NetworkFactory {
        NetworkFactory {
            peers: self.inner.peers.clone(),
        }
    }

    /// Start answering peers with `raft`: votes, appends and snapshots go to it, forwarded
    /// proposals go through `raft.client_write`, status reads its metrics.
    pub fn serve(&self, raft: Raft) -> Result<(), NetError> {
        // The lock only guards the task slot; a poisoned one still holds a valid Option.
        let mut task = self
            .inner
            .accept_task
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if task.is_some() {
            return Err(NetError::AlreadyServing);
        }
        let ctx = Arc::new(ServerCtx {
            raft,
            limits: self.inner.limits.clone(),
            connections: Arc::new(Semaphore::new(self.inner.limits.connections_max)),
        });
        *task = Some(tokio::spawn(server::accept_loop(
            self.inner.endpoint.clone(),
            ctx,
        )));
        Ok(())
    }

    /// Hand a proposal to `leader` (at its Raft address `addr`) and wait until it is applied.
    /// [`NetError::NotLeader`] says where to go instead.
    pub async fn forward(
        &self,
        leader: NodeId,
        addr: &str,
        p: Proposal,
    ) -> Result<Applied, NetError> {
        match self
            .call(leader, addr, &Request::Forward(Box::new(p)))
            .await?
        {
            Response::Forward(ForwardOutcome::Applied(a)) => Ok(a),
            Response::Forward(ForwardOutcome::NotLeader { leader_id, leader }) => {
                Err(NetError::NotLeader { leader_id, leader })
            }
            Response::Forward(ForwardOutcome::Failed(why)) => Err(NetError::Proposal(why)),
            other => Err(unexpected(other)),
        }
    }

    /// Ask `peer` (at `addr`) for its Raft status.
    pub async fn status(&self, peer: NodeId, addr: &str) -> Result<PeerStatus, NetError> {
        match self.call(peer, addr, &Request::Status).await? {
            Response::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    async fn call(&self, peer: NodeId, addr: &str, req: &Request) -> Result<Response, NetError> {
        let timeout = Duration::from_millis(self.inner.limits.rpc_timeout_ms);
        match self
            .inner
            .peers
            .call(peer, addr, req, None, timeout)
            .await?
        {
            Response::Refused(why) => Err(NetError::Refused(why)),
            resp => Ok(resp),
        }
    }

    /// Stop serving and close every connection; peers see the close at once.
    pub async fn shutdown(&self) {
        let task = self
            .inner
            .accept_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            task.abort();
        }
        self.inner.endpoint.close(0u32.into(), b"shutdown");
        // Give the close frames a moment to leave; a peer that missed them times out.
        let _ =
            tokio::time::timeout(Duration::from_millis(500), self.inner.endpoint.wait_idle()).await;
    }
}

fn unexpected(resp: Response) -> NetError {
    NetError::Unexpected(format!("{resp:?}"))
}

#[cfg(test)]
mod wire_test;
