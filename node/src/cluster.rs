//! The node as a member of a Raft cluster: starts the consensus crate's log, state
//! machine and QUIC transport from config, proposes routing commands (forwarding them to
//! the leader when this node follows), and answers the cluster's status and membership
//! changes for `carillon ctl cluster`.
//!
//! What it leaves to others: acting on committed events (the routing log hands them to
//! call tasks), the Raft protocol and its storage (`carillon-consensus`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use carillon_consensus::network::{NetLimits, RaftTransport};
use carillon_consensus::openraft::type_config::async_runtime::WatchReceiver;
use carillon_consensus::state_machine::{AcdReader, AppliedEntry, StateMachineStore};
use carillon_consensus::tls::NodeTls;
use carillon_consensus::types::{Applied, Member, NodeId, Proposal, ProposalId, Raft};
use carillon_routing::{Acd, Command};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{parse_node_id, Config};
use crate::routing_log::ProposeError;

/// How long a proposal may look for a leader before it is reported unavailable. Longer
/// than an election with default timeouts, so a failover does not fail calls.
const PROPOSE_DEADLINE_MS: u64 = 6_000;
/// Pause between attempts while there is no leader.
const PROPOSE_RETRY_MS: u64 = 50;
/// Applied entries the node may fall behind on before the state machine waits for it.
const APPLIED_BACKLOG_MAX: usize = 4_096;
/// How long `status` waits for each peer's own figures.
const PEER_STATUS_TIMEOUT_MS: u64 = 1_000;
/// Dial and call deadline for forwarded proposals and status calls.
const PEER_CALL_TIMEOUT_MS: u64 = 1_000;

/// Raft's figures on this node at one moment (see [`Cluster::raft_figures`]).
#[derive(Clone, Debug)]
pub struct RaftFigures {
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub voters: usize,
}

#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    /// This run of the node (ms since the epoch at start): proposal ids never repeat
    /// across restarts.
    run: u64,
    /// The next proposal's number within this run.
    seq: AtomicU64,
    raft: Raft,
    transport: RaftTransport,
    reader: AcdReader,
}

/// One member's line in `ctl cluster status`.
#[derive(Debug, Serialize)]
pub struct MemberStatus {
    pub id: String,
    pub addr: String,
    pub site: String,
    pub sip: String,
    /// `voter` or `learner`.
    pub role: &'static str,
    pub last_applied: Option<u64>,
    /// Entries this member is behind the leader's last log index, when known.
    pub lag: Option<u64>,
    pub reachable: bool,
    /// Routing's view: `up` while its liveness lease holds.
    pub up: Option<bool>,
    /// When routing last saw its lease (ms since the epoch).
    pub last_lease_at: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    /// The leader's node id (`n1`), if there is one.
    pub leader: Option<String>,
    pub term: u64,
    /// The node that answered.
    pub node: String,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub members: Vec<MemberStatus>,
}

impl Cluster {
    /// Opens the stores under `data_dir`, binds the QUIC transport and starts Raft. The
    /// returned receiver carries every applied entry, in log order.
    pub async fn start(config: &Config) -> anyhow::Result<(Cluster, mpsc::Receiver<AppliedEntry>)> {
        let section = config
            .cluster
            .as_ref()
            .context("cluster: no [cluster] section")?;
        let id = config
            .node_number()
            .context("node.id: not a cluster node id (n1, n2...)")?;
        let data_dir = config.data_dir();
        let tls = NodeTls::load(
            &config.resolve(&section.ca),
            &config.resolve(&section.cert),
            &config.resolve(&section.key),
            id,
        )
        .context("cluster: loading certificates")?;
        let log = carillon_consensus::log_store::LogStore::open(&data_dir.join("raft-log.redb"))
            .context("cluster: opening the Raft log")?;
        let (applied_tx, applied_rx) = mpsc::channel(APPLIED_BACKLOG_MAX);
        let sm = StateMachineStore::open(&data_dir.join("raft-state.redb"), Some(applied_tx))
            .context("cluster: opening the state machine")?;
        let reader = sm.reader();
        let raft_config = carillon_consensus::config::raft_config(
            section.election_timeout_min_ms,
            section.election_timeout_max_ms,
            section.heartbeat_ms,
            section.snapshot_after_logs,
        )
        .context("cluster: Raft settings")?;
        // Forwarded proposals and status calls give up on a dead peer within a second, so a
        // proposal stuck on a leader that just died moves on to the next one quickly.
        let limits = NetLimits {
            connect_timeout_ms: PEER_CALL_TIMEOUT_MS,
            rpc_timeout_ms: PEER_CALL_TIMEOUT_MS,
            ..NetLimits::default()
        };
        let transport = RaftTransport::bind(section.listen, tls, limits)
            .with_context(|| format!("cluster.listen: cannot bind {}", section.listen))?;
        // Raft::new replays the committed log after the stored snapshot (up to
        // snapshot_after_logs entries) before it returns, when nobody drains the applied
        // channel yet: those entries are the previous run's, so they are not sent.
        let replay = sm.clone();
        replay.pause_events();
        let raft = Raft::new(id, raft_config, transport.network_factory(), log, sm)
            .await
            .context("cluster: starting Raft")?;
        let replayed = replay.resume_events();
        drop(replay);
        if replayed > 0 {
            info!(
                entries = replayed,
                "replayed the committed log after the last snapshot"
            );
        }
        transport
            .serve(raft.clone())
            .context("cluster: serving Raft peers")?;
        if section.bootstrap {
            let members: BTreeMap<NodeId, Member> = section
                .members
                .iter()
                .filter_map(|m| {
                    Some((
                        parse_node_id(&m.id)?,
                        Member {
                            raft_addr: m.raft.to_string(),
                            site: m.site.clone(),
                            sip_addr: m.sip.to_string(),
                            http_addr: m.http.to_string(),
                        },
                    ))
                })
                .collect();
            match raft.is_initialized().await {
                Ok(true) => info!("cluster log already initialised"),
                Ok(false) => match raft.initialize(members).await {
                    Ok(()) => info!("cluster initialised from config"),
                    // Another founding member got there first: fine, its membership is
                    // the same list.
                    Err(e) => info!(error = %e, "cluster initialisation skipped"),
                },
                Err(e) => warn!(error = %e, "cannot tell whether the cluster is initialised"),
            }
        }
        info!(node = id, raft = %section.listen, "cluster member started");
        Ok((
            Cluster {
                inner: Arc::new(Inner {
                    id,
                    run: crate::clock::now_ms(),
                    seq: AtomicU64::new(0),
                    raft,
                    transport,
                    reader,
                }),
            },
            applied_rx,
        ))
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// Raft's own figures, for /metrics (no peer is asked, unlike [`Self::status`]).
    pub fn raft_figures(&self) -> RaftFigures {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        RaftFigures {
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.as_ref().map(|l| l.index),
            voters: m.membership_config.voter_ids().count(),
        }
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow_watched().current_leader
    }

    /// Resolves once Raft's view of the leader differs from `current` (never, if the
    /// metrics channel closes: the caller's own deadline ends the wait).
    async fn leader_other_than(&self, current: Option<NodeId>) {
        let mut metrics = self.inner.raft.metrics();
        loop {
            if metrics.borrow_watched().current_leader != current {
                return;
            }
            if metrics.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The other members whose Raft layer answered this node, as leader, within `within`
    /// (an acknowledged append or heartbeat); empty unless this node leads.
    pub fn heard_within(&self, within: Duration) -> Vec<NodeId> {
        let heard = self.inner.raft.metrics().borrow_watched().heartbeat.clone();
        let Some(heard) = heard else {
            return Vec::new();
        };
        // Raft's own clock (its instants are its runtime's), read through its trait.
        use carillon_consensus::openraft::Instant as _;
        heard
            .iter()
            .filter(|(id, _)| **id != self.inner.id)
            .filter_map(|(id, at)| (at.as_ref()?.elapsed() <= within).then_some(*id))
            .collect()
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.inner.id)
    }

    pub fn read<T>(&self, f: impl FnOnce(&Acd) -> T) -> T {
        self.inner.reader.with_acd(f)
    }

    pub fn last_applied(&self) -> u64 {
        self.inner.reader.last_applied_index().unwrap_or(0)
    }

    /// The current membership (a shared pointer: this runs for every INVITE and every
    /// offer, so it must not copy the whole metrics).
    fn membership(
        &self,
    ) -> std::sync::Arc<
        carillon_consensus::openraft::type_config::alias::StoredMembershipOf<
            carillon_consensus::types::TypeConfig,
        >,
    > {
        self.inner
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone()
    }

    /// A member's published addresses, from the current membership.
    pub fn member(&self, id: NodeId) -> Option<Member> {
        let membership = self.membership();
        let found = membership
            .nodes()
            .find(|(nid, _)| **nid == id)
            .map(|(_, m)| m.clone());
        found
    }

    /// The member whose SIP address is `addr` (an inter-node leg's source), other than
    /// this node.
    pub fn peer_by_sip(&self, addr: std::net::SocketAddr) -> Option<NodeId> {
        let membership = self.membership();
        let text = addr.to_string();
        let found = membership
            .nodes()
            .find(|(id, m)| **id != self.inner.id && m.sip_addr == text)
            .map(|(id, _)| *id);
        found
    }

    /// Commits one routing command, through the leader wherever it is.
    pub async fn propose(&self, cmd: Command) -> Result<(), ProposeError> {
        let id = ProposalId {
            node: self.inner.id,
            run: self.inner.run,
            seq: self.inner.seq.fetch_add(1, Ordering::Relaxed),
        };
        // One id for every attempt: a retry after a lost answer is applied at most once.
        let applied = self
            .propose_raw(Proposal::Once { id, command: cmd })
            .await?;
        match applied.refused {
            Some(why) => Err(ProposeError::Refused(why)),
            None => Ok(()),
        }
    }

    async fn propose_raw(&self, proposal: Proposal) -> Result<Applied, ProposeError> {
        let started = crate::clock::instant();
        let mut last_error = String::from("no leader yet");
        while started.elapsed() < Duration::from_millis(PROPOSE_DEADLINE_MS) {
            match self.leader() {
                Some(leader) if leader == self.inner.id => {
                    match self.inner.raft.client_write(proposal.clone()).await {
                        Ok(resp) => return Ok(resp.data),
                        Err(e) => last_error = e.to_string(),
                    }
                }
                Some(leader) => match self.member(leader) {
                    Some(m) => {
                        // A leader that died mid-call would hold this attempt for the whole
                        // peer timeout; as soon as Raft names a new leader, go to it instead.
                        let forward =
                            self.inner
                                .transport
                                .forward(leader, &m.raft_addr, proposal.clone());
                        tokio::select! {
                            answer = forward => match answer {
                                Ok(applied) => return Ok(applied),
                                Err(e) => last_error = format!("forwarding to n{leader}: {e}"),
                            },
                            () = self.leader_other_than(Some(leader)) => {
                                last_error = format!("n{leader} stopped leading");
                                continue;
                            }
                        }
                    }
                    None => last_error = format!("leader n{leader} is not in the membership"),
                },
                None => {
                    // Wake as soon as an election ends rather than polling blindly.
                    let _ = tokio::time::timeout(
                        Duration::from_millis(PROPOSE_RETRY_MS * 4),
                        self.leader_other_than(None),
                    )
                    .await;
                    continue;
                }
            }
            tokio::time::sleep(Duration::from_millis(PROPOSE_RETRY_MS)).await;
        }
        Err(ProposeError::Unavailable(last_error))
    }

    /// Leader, term, members and how far each has applied.
    pub async fn status(&self) -> ClusterStatus {
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        let voters: BTreeSet<NodeId> = metrics.membership_config.voter_ids().collect();
        let last_log = metrics.last_log_index;
        let mut members = Vec::new();
        let leases = self.read(|acd| acd.nodes());
        let nodes: Vec<(NodeId, Member)> = metrics
            .membership_config
            .nodes()
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        for (id, m) in nodes {
            let (last_applied, reachable) = if id == self.inner.id {
                (metrics.last_applied.as_ref().map(|l| l.index), true)
            } else {
                let asked = tokio::time::timeout(
                    Duration::from_millis(PEER_STATUS_TIMEOUT_MS),
                    self.inner.transport.status(id, &m.raft_addr),
                )
                .await;
                match asked {
                    Ok(Ok(peer)) => (peer.last_applied, true),
                    _ => (None, false),
                }
            };
            members.push(MemberStatus {
                id: format!("n{id}"),
                addr: m.raft_addr.clone(),
                site: m.site.clone(),
                sip: m.sip_addr.clone(),
                role: if voters.contains(&id) {
                    "voter"
                } else {
                    "learner"
                },
                last_applied,
                lag: match (last_log, last_applied) {
                    (Some(l), Some(a)) => Some(l.saturating_sub(a)),
                    _ => None,
                },
                reachable,
                up: leases.iter().find(|(n, _)| *n == id).map(|(_, s)| s.up),
                last_lease_at: leases
                    .iter()
                    .find(|(n, _)| *n == id)
                    .map(|(_, s)| s.last_lease_at),
            });
        }
        ClusterStatus {
            leader: metrics.current_leader.map(|l| format!("n{l}")),
            term: metrics.current_term,
            node: format!("n{}", self.inner.id),
            last_log_index: last_log,
            last_applied: metrics.last_applied.as_ref().map(|l| l.index),
            members,
        }
    }

    /// Adds a learner, waits for it to catch up, then promotes it to voter. Only the
    /// leader can change membership; a follower names the leader in its error.
    pub async fn add_node(&self, id: NodeId, member: Member) -> anyhow::Result<()> {
        self.require_leader()?;
        self.inner
            .raft
            .add_learner(id, member, true)
            .await
            .with_context(|| format!("adding n{id} as a learner"))?;
        info!(node = id, "learner caught up; promoting to voter");
        self.inner
            .raft
            .change_membership(
                carillon_consensus::openraft::ChangeMembers::AddVoterIds([id].into()),
                false,
            )
            .await
            .with_context(|| format!("promoting n{id} to voter"))?;
        Ok(())
    }

    /// Removes a member (voter or learner).
    pub async fn remove_node(&self, id: NodeId) -> anyhow::Result<()> {
        self.require_leader()?;
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        let is_voter = metrics.membership_config.voter_ids().any(|v| v == id);
        let known = metrics.membership_config.nodes().any(|(n, _)| *n == id);
        anyhow::ensure!(known, "n{id} is not a member of this cluster");
        if is_voter {
            // retain = false drops the node with its vote in one change: a leader removing
            // itself steps down after this, so no second change may follow.
            self.inner
                .raft
                .change_membership(
                    carillon_consensus::openraft::ChangeMembers::RemoveVoters([id].into()),
                    false,
                )
                .await
                .with_context(|| format!("removing voter n{id}"))?;
            return Ok(());
        }
        self.inner
            .raft
            .change_membership(
                carillon_consensus::openraft::ChangeMembers::RemoveNodes([id].into()),
                false,
            )
            .await
            .with_context(|| format!("removing node n{id}"))?;
        Ok(())
    }

    fn require_leader(&self) -> anyhow::Result<()> {
        match self.leader() {
            Some(l) if l == self.inner.id => Ok(()),
            Some(l) => {
                let addr = self
                    .member(l)
                    .map(|m| m.http_addr)
                    .unwrap_or_else(|| "unknown".into());
                anyhow::bail!(
                    "n{} is not the leader; ask the leader n{l} (HTTP {addr})",
                    self.inner.id
                )
            }
            None => anyhow::bail!("there is no leader right now; retry in a few seconds"),
        }
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            warn!(error = %e, "Raft did not shut down cleanly");
        }
        self.inner.transport.shutdown().await;
    }
}
