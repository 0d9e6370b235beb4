//! A running node: wires config, the SIP edge, the routing log, media and records.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use carillon_media::{PortPool, Prompt};
use carillon_ops::records::{Cdr, RecordStore, RedbRecordStore};
use carillon_routing::{Command, Event};
use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::cluster::Cluster;
use crate::config::{Cidr, Config};
use crate::registrar::Registrar;
use crate::routing_log::{ProposeError, RoutingLog};
use crate::sip::SipStack;
use carillon_consensus::state_machine::AppliedEntry;
use tokio::sync::mpsc;

/// How often the node advances routing time (ring timeouts, wrap-up ends).
const TICK_MS: u64 = 100;
/// How often lapsed registrations are swept.
const EXPIRY_SWEEP_MS: u64 = 1_000;
/// A member the leader's Raft layer heard from this recently has its lease renewed by
/// the leader (`LeasesHeard`); Raft heartbeats go every 100 ms by default.
const LEASE_HEARD_WITHIN_MS: u64 = 1_500;
/// How often a cluster member renews its liveness lease (the lease itself lasts
/// `cluster.lease_ms`, 3 s by default).
const LEASE_RENEW_MS: u64 = 1_000;

/// State every task of the node shares.
pub struct Shared {
    pub node_id: String,
    /// The numeric id Raft and routing know this node by (0 for a standalone node whose
    /// id is not of the `n1` form).
    pub node_number: u64,
    pub config: Config,
    pub sip: SipStack,
    pub routing: RoutingLog,
    pub ports: Arc<PortPool>,
    pub hold_music: Arc<Prompt>,
    /// The IVR flows and the numbers that run them, changed live by the admin API.
    pub flows: crate::ivr::live::LiveFlows,
    /// Place-in-line and expected-wait announcements, when configured.
    pub announcer: Option<Arc<crate::announce::Announcer>>,
    pub records: Arc<dyn RecordStore>,
    /// Where finished calls hand their records and recordings ([`crate::record_writer`]).
    pub record_writer: crate::record_writer::RecordWriter,
    /// Call recording: settings, disk use, alarms ([`crate::recording`]).
    pub recorder: Arc<carillon_media::Recorder>,
    pub trunks: Vec<(String, Vec<Cidr>)>,
    pub counters: Counters,
    /// The live calls, for call control and supervision through the API.
    pub calls: crate::call::registry::CallRegistry,
    registrar: Mutex<Registrar>,
    active_calls: AtomicUsize,
    call_seq: AtomicU64,
    /// When this run started (ms since the epoch): names calls, and tells routing which
    /// of this node's calls belong to an earlier run.
    epoch: u64,
}

/// Running totals for the live view and status API.
#[derive(Default)]
pub struct Counters {
    pub sip_requests: AtomicU64,
    pub sip_shed: AtomicU64,
    pub sip_malformed: AtomicU64,
    pub calls_answered: AtomicU64,
    pub calls_abandoned: AtomicU64,
    pub calls_lost: AtomicU64,
    /// Left by an exit action (voicemail, refused, after hours) or an unanswered callback:
    /// handled as configured, not lost.
    pub calls_exited: AtomicU64,
    pub rtp_relayed: AtomicU64,
}

impl Counters {
    pub fn record(&self, cdr: &Cdr) {
        crate::metrics::call_recorded(cdr);
        let c = match cdr.disposition.as_str() {
            "answered" => &self.calls_answered,
            "abandoned" => &self.calls_abandoned,
            "lost" => &self.calls_lost,
            _ => &self.calls_exited,
        };
        c.fetch_add(1, Ordering::Relaxed);
        self.rtp_relayed.fetch_add(
            cdr.rtp_agent_to_caller + cdr.rtp_caller_to_agent,
            Ordering::Relaxed,
        );
    }
}

/// Holds one of the node's concurrent-call slots until dropped.
pub struct CallSlot(Arc<Shared>);

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.0.active_calls.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    pub fn registrar(&self) -> MutexGuard<'_, Registrar> {
        // The registrar's methods do not panic; a poisoned lock still holds whole state.
        self.registrar.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn try_take_call_slot(self: &Arc<Self>) -> Option<CallSlot> {
        let max = self.config.node.max_concurrent_calls;
        let prev = self.active_calls.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.active_calls.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(CallSlot(self.clone()))
    }

    pub fn active_calls(&self) -> usize {
        self.active_calls.load(Ordering::Acquire)
    }

    /// A call id unique across restarts of this node (start time) and in the cluster
    /// (node id).
    pub fn next_call_id(&self) -> String {
        let n = self.call_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{:x}-{n}", self.node_id, self.epoch)
    }
}

#[derive(Serialize)]
pub struct Status {
    pub node: String,
    pub site: String,
    pub sip: String,
    pub calls: CallCounts,
    pub agents_registered: usize,
    pub acd: carillon_routing::AcdStats,
    pub sip_requests: u64,
    pub sip_shed: u64,
    pub sip_malformed: u64,
    pub rtp_ports_in_use: usize,
}

#[derive(Serialize)]
pub struct CallCounts {
    pub active: usize,
    pub answered: u64,
    pub abandoned: u64,
    pub lost: u64,
    pub exited: u64,
    pub rtp_relayed: u64,
}

impl Shared {
    pub fn status(&self) -> Status {
        let c = &self.counters;
        Status {
            node: self.node_id.clone(),
            site: self.config.node.site.clone(),
            sip: self.sip.listen.to_string(),
            calls: CallCounts {
                active: self.active_calls(),
                answered: c.calls_answered.load(Ordering::Relaxed),
                abandoned: c.calls_abandoned.load(Ordering::Relaxed),
                lost: c.calls_lost.load(Ordering::Relaxed),
                exited: c.calls_exited.load(Ordering::Relaxed),
                rtp_relayed: c.rtp_relayed.load(Ordering::Relaxed),
            },
            agents_registered: self.registrar().registered_count(),
            acd: self.routing.stats(),
            sip_requests: c.sip_requests.load(Ordering::Relaxed),
            sip_shed: c.sip_shed.load(Ordering::Relaxed),
            sip_malformed: c.sip_malformed.load(Ordering::Relaxed),
            rtp_ports_in_use: self.ports.in_use(),
        }
    }
}

pub struct Node;

/// A started node. Dropping it does not stop it; call [`NodeHandle::shutdown`].
pub struct NodeHandle {
    shared: Arc<Shared>,
    http_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    pub async fn start(config: Config) -> anyhow::Result<NodeHandle> {
        // Before anything is counted, so start-up work shows in /metrics too.
        crate::metrics::install();
        let data_dir = config.data_dir();
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("node.data_dir: cannot create {}", data_dir.display()))?;
        let records: Arc<dyn RecordStore> =
            Arc::new(RedbRecordStore::open(&data_dir.join("records.redb"))?);
        let recorder = crate::recording::recorder(&config)?;
        let hold_path = config.hold_music_path();
        let hold_music =
            Arc::new(Prompt::load_wav(&hold_path).with_context(|| "media.hold_music".to_string())?);
        let announcer = match &config.announcements {
            Some(a) => Some(Arc::new(crate::announce::Announcer::load(
                a.clone(),
                &config.resolve(&a.prompt_dir),
            )?)),
            None => None,
        };
        let ports = PortPool::new(config.rtp.ip, config.rtp.port_min, config.rtp.port_max)
            .context("rtp: cannot set up the port pool")?;
        let (sip, incoming) = SipStack::start(config.sip.listen).await?;
        let now = now_ms();
        let mut applied = None;
        let routing = if config.cluster.is_some() {
            let (cluster, rx) = Cluster::start(&config).await?;
            applied = Some(rx);
            RoutingLog::raft(cluster)
        } else {
            let routing = RoutingLog::local();
            for cmd in setup_commands(&config, now) {
                routing
                    .propose(cmd)
                    .await
                    .context("applying the configured queues")?;
            }
            routing
        };
        let registrar = Registrar::new(
            &config.sip.realm,
            config.phone_accounts(),
            secret_seed(),
            config.sip.registration_expires_max_s,
        );
        let flows = crate::ivr::live::LiveFlows::from_config(&config);
        let shared = Arc::new(Shared {
            node_id: config.node.id.clone(),
            node_number: config.node_number().unwrap_or(0),
            trunks: config.trunk_networks(),
            config,
            sip,
            routing,
            ports,
            hold_music,
            announcer,
            flows,
            record_writer: crate::record_writer::RecordWriter::start(Arc::clone(&records))
                .context("starting the record writer thread")?,
            records,
            recorder,
            counters: Counters::default(),
            calls: Default::default(),
            registrar: Mutex::new(registrar),
            active_calls: AtomicUsize::new(0),
            call_seq: AtomicU64::new(1),
            epoch: now,
        });
        let http = crate::http::bind(shared.config.http.listen).await?;
        let http_addr = http.local_addr()?;
        let mut tasks = vec![
            tokio::spawn(crate::edge::dispatch(shared.clone(), incoming)),
            tokio::spawn(ticker(shared.clone())),
            tokio::spawn(expiry_sweeper(shared.clone())),
            tokio::spawn(crate::http::serve(http, shared.clone())),
            tokio::spawn(crate::recording::upkeep(shared.clone())),
            tokio::spawn(crate::watchdog::run(|_| {})),
        ];
        if let Some((_, grpc)) = crate::grpc::start(shared.clone()).await? {
            tasks.push(grpc);
        }
        if let Some(rx) = applied {
            tasks.push(tokio::spawn(deliver_applied(shared.clone(), rx)));
            tasks.push(tokio::spawn(cluster_upkeep(shared.clone())));
        }
        info!(
            node = %shared.node_id,
            sip = %shared.sip.listen,
            http = %http_addr,
            "node started"
        );
        Ok(NodeHandle {
            shared,
            http_addr,
            tasks,
        })
    }
}

impl NodeHandle {
    pub fn status(&self) -> serde_json::Value {
        serde_json::to_value(self.shared.status()).unwrap_or_default()
    }

    pub fn cdrs(&self) -> Vec<Cdr> {
        self.shared
            .records
            .list_cdrs(0, usize::MAX)
            .unwrap_or_default()
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn sip_addr(&self) -> SocketAddr {
        self.shared.sip.listen
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub async fn shutdown(self) {
        self.shared.sip.shutdown();
        // Records of calls that ended are stored before the process goes.
        self.shared.record_writer.flush().await;
        // Tasks first: lease renewals and ticks must not propose to a stopped Raft.
        for t in &self.tasks {
            t.abort();
        }
        if let Some(cluster) = self.shared.routing.cluster() {
            cluster.shutdown().await;
        }
    }
}

/// The commands that put the configured routing into the routing state: the lease length
/// (in a cluster), the routing rules, every queue, then the VIP list. Proposing them again
/// is harmless: a queue's config is replaced in place and its calls keep their place, and
/// settings and VIPs are replaced whole.
fn setup_commands(config: &Config, now: u64) -> Vec<Command> {
    let mut cmds = Vec::new();
    if let Some(cluster) = &config.cluster {
        cmds.push(Command::ConfigureCluster {
            lease_ms: cluster.lease_ms,
            at: now,
        });
    }
    cmds.push(Command::ConfigureRouting {
        settings: config.routing_settings(),
        at: now,
    });
    for q in &config.queues {
        let queue = config.routing_queue(q);
        cmds.push(Command::ConfigureQueue { queue, at: now });
    }
    for (caller, vip) in config.routing_vips() {
        cmds.push(Command::SetVip {
            caller,
            vip: Some(vip),
            at: now,
        });
    }
    cmds
}

/// Feeds every entry the cluster applies here to the call tasks it concerns.
async fn deliver_applied(shared: Arc<Shared>, mut rx: mpsc::Receiver<AppliedEntry>) {
    while let Some(entry) = rx.recv().await {
        for event in &entry.applied.events {
            match event {
                Event::NodeDown { node } => {
                    warn!(node = %format!("n{node}"), "cluster member declared down: its calls are lost, its agents unavailable");
                }
                Event::NodeUp { node } => {
                    info!(node = %format!("n{node}"), "cluster member up");
                    if *node == shared.node_number {
                        tokio::spawn(relogin_agents(shared.clone()));
                    }
                }
                _ => {}
            }
        }
        shared.routing.deliver(entry.applied.events);
    }
}

/// After this node was declared down and came back, routing has logged out the agents
/// whose phones are registered here: log them in again.
async fn relogin_agents(shared: Arc<Shared>) {
    let agents = shared.registrar().registered_agents();
    for agent in agents {
        let skills = shared
            .registrar()
            .account(&agent)
            .map(|a| a.skills.clone())
            .unwrap_or_default();
        let cmd = Command::AgentLogin {
            agent: agent.clone(),
            skills,
            node: shared.node_number,
            site: shared.config.node.site.clone(),
            at: now_ms(),
        };
        if let Err(e) = shared.routing.propose(cmd).await {
            warn!(%agent, error = %e, "could not log the agent in again");
        }
    }
}

/// A cluster member's standing duties: put the configured queues in once a leader is
/// there, then renew this node's liveness lease every second.
async fn cluster_upkeep(shared: Arc<Shared>) {
    let node = shared.node_number;
    let site = shared.config.node.site.clone();
    for cmd in setup_commands(&shared.config, now_ms()) {
        loop {
            match shared.routing.propose(cmd.clone()).await {
                Ok(()) => break,
                Err(ProposeError::Refused(why)) => {
                    warn!(%why, "routing refused a configured setting");
                    break;
                }
                Err(e) => {
                    info!(error = %e, "waiting for the cluster to accept the configuration");
                    tokio::time::sleep(Duration::from_millis(LEASE_RENEW_MS)).await;
                }
            }
        }
    }
    info!("configuration committed to the cluster");
    // This run's first lease also closes whatever an earlier run left in the replicated
    // state (calls whose process is gone). Retried until it commits: without it a node
    // back within its lease would leave those calls connected for good.
    let started = Command::NodeStarted {
        node,
        site: site.clone(),
        started_at: shared.epoch,
        at: now_ms(),
    };
    loop {
        match shared.routing.propose(started.clone()).await {
            Ok(()) => break,
            Err(ProposeError::Refused(why)) => {
                warn!(%why, "routing refused this node's start");
                break;
            }
            Err(e) => {
                info!(error = %e, "waiting for the cluster to record this node's start");
                tokio::time::sleep(Duration::from_millis(LEASE_RENEW_MS)).await;
            }
        }
    }
    let mut every = tokio::time::interval(Duration::from_millis(LEASE_RENEW_MS));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let lease = Command::NodeLease {
            node,
            site: site.clone(),
            at: now_ms(),
        };
        // Each renewal on its own: one stuck on a leader that just died must not hold
        // back the next (a proposal gives up within PROPOSE_DEADLINE_MS, so few overlap).
        let routing = shared.routing.clone();
        tokio::spawn(async move {
            if let Err(e) = routing.propose(lease).await {
                warn!(error = %e, "could not renew this node's lease");
            }
        });
        // The leader vouches for the members its Raft layer hears from: a member busy with
        // calls answers appends even while its own lease proposals wait behind its calls.
        let heard = shared
            .routing
            .cluster()
            .map(|c| c.heard_within(Duration::from_millis(LEASE_HEARD_WITHIN_MS)))
            .unwrap_or_default();
        if !heard.is_empty() {
            let routing = shared.routing.clone();
            let cmd = Command::LeasesHeard {
                nodes: heard,
                at: now_ms(),
            };
            tokio::spawn(async move {
                if let Err(e) = routing.propose(cmd).await {
                    warn!(error = %e, "could not renew the leases of the members heard");
                }
            });
        }
    }
}

async fn ticker(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(Duration::from_millis(TICK_MS));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        // In a cluster only the leader advances routing time, so timers fire once.
        if let Some(cluster) = shared.routing.cluster() {
            if !cluster.is_leader() {
                continue;
            }
        }
        if let Err(e) = shared.routing.propose(Command::Tick { at: now_ms() }).await {
            warn!(error = %e, "tick refused");
        }
    }
}

async fn expiry_sweeper(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(Duration::from_millis(EXPIRY_SWEEP_MS));
    loop {
        every.tick().await;
        let now = now_ms();
        let lapsed = shared.registrar().expire(now);
        for agent in lapsed {
            info!(%agent, "registration lapsed");
            crate::edge::logout(&shared, &agent, now).await;
        }
    }
}

/// A per-process secret for nonces, from the OS-seeded hasher keys std keeps.
fn secret_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.finish()
}
