//! One simulated Carillon node: its Raft over the simulated disks and network, and the
//! little of the node's call logic the load needs (answer or miss an offer, hang up, get
//! ready again, renew the lease, propose the leader's Tick). Proposals go to the leader
//! the way the node's cluster module sends them: directly when this node leads, else
//! forwarded, each under a `Proposal::Once` id reused on every retry.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use carillon_consensus::config::raft_config;
use carillon_consensus::log_store::{LogStore, StoreIo};
use carillon_consensus::openraft::rt::WatchReceiver;
use carillon_consensus::openraft::ServerState;
use carillon_consensus::state_machine::{AppliedEntry, StateMachineStore};
use carillon_consensus::types::{Applied, NodeId, Proposal, ProposalId, Raft};
use carillon_routing::{AgentState, Command, Event, OfferFailure, Party};
use tokio::sync::mpsc;

use super::invariants::Observation;
use super::net::{deliver, SimNetwork};
use super::world::World;

/// Openraft's tick runs at 13/64 of the heartbeat: at 9 ms it is 1 ms, the timer's own
/// grain, so the tick's randomly phased first wait cannot move any later event.
pub const HEARTBEAT_MS: u64 = 9;
/// Each node's election timeout is drawn from the seed in this range (openraft is then
/// given a one-wide range, so its own draw is that value).
pub const ELECTION_MS_MIN: u64 = 150;
pub const ELECTION_MS_MAX: u64 = 300;
/// Snapshots are left out of the short runs (see the module's report of what is left).
const SNAPSHOT_AFTER_LOGS: u64 = 100_000;
const APPLIED_BACKLOG_MAX: usize = 256;
pub const LEASE_EVERY_MS: u64 = 500;
pub const TICK_EVERY_MS: u64 = 100;
/// How long one try of a proposal may take before it is tried again.
const PROPOSE_TRY_MS: u64 = 600;
const PROPOSE_TRIES_MAX: u32 = 6;

/// Starts (or restarts) node `id` on its disks.
pub async fn start(world: &Arc<World>, id: NodeId) -> Result<(), String> {
    let (log_disk, sm_disk, election_ms, incarnation) = {
        let mut s = world.lock();
        let election_ms = ELECTION_MS_MIN + s.rng.below(ELECTION_MS_MAX - ELECTION_MS_MIN);
        let slot = s.nodes.get_mut(&id).ok_or("no such node")?;
        slot.incarnation += 1;
        slot.seq = 0;
        (
            slot.log_disk.clone(),
            slot.sm_disk.clone(),
            election_ms,
            slot.incarnation,
        )
    };
    let label = PathBuf::from(format!("sim/n{id}"));
    let log = LogStore::open_backend(log_disk.handle(), &label.join("log"), StoreIo::Inline)
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(APPLIED_BACKLOG_MAX);
    let sm = StateMachineStore::open_backend(
        sm_disk.handle(),
        &label.join("state"),
        Some(tx),
        StoreIo::Inline,
    )
    .map_err(|e| e.to_string())?;
    let reader = sm.reader();
    let config = raft_config(
        election_ms,
        election_ms + 1,
        HEARTBEAT_MS,
        SNAPSHOT_AFTER_LOGS,
    )
    .map_err(|e| e.to_string())?;
    let net = SimNetwork {
        world: Arc::clone(world),
        me: id,
    };
    let raft = Raft::new(id, config, net, log, sm)
        .await
        .map_err(|e| e.to_string())?;
    {
        let mut s = world.lock();
        let slot = s.nodes.get_mut(&id).ok_or("no such node")?;
        slot.raft = Some(raft.clone());
        slot.reader = Some(reader);
    }
    world.trace(format_args!(
        "n{id} started (run {incarnation}, election timeout {election_ms} ms)"
    ));
    tokio::spawn(consume(Arc::clone(world), id, rx));
    tokio::spawn(watch_leader(Arc::clone(world), id, raft));
    tokio::spawn(lease_loop(Arc::clone(world), id, incarnation));
    Ok(())
}

/// Kills node `id`; with `lose_unsynced` its disks keep only what was synced.
pub async fn crash(world: &Arc<World>, id: NodeId, lose_unsynced: bool) {
    let (raft, log_disk, sm_disk) = {
        let mut s = world.lock();
        let Some(slot) = s.nodes.get_mut(&id) else {
            return;
        };
        let Some(raft) = slot.raft.take() else {
            return;
        };
        slot.reader = None;
        slot.incarnation += 1;
        (raft, slot.log_disk.clone(), slot.sm_disk.clone())
    };
    // The disks stop taking writes first: whatever the stopping Raft still writes is a
    // dead process's.
    let lost = log_disk.crash(lose_unsynced) + sm_disk.crash(lose_unsynced);
    world.trace(format_args!(
        "n{id} crashed ({} unsynced writes lost)",
        lost
    ));
    let _ = raft.shutdown().await;
}

fn alive_raft(world: &World, id: NodeId) -> Option<(Raft, u64)> {
    let s = world.lock();
    let n = s.nodes.get(&id)?;
    Some((n.raft.clone()?, n.incarnation))
}

/// Proposes `cmd` through node `via`, as the node does: to the leader, retried under one id.
pub async fn propose(world: &Arc<World>, via: NodeId, cmd: Command) -> Result<Applied, String> {
    let id = {
        let mut s = world.lock();
        s.stats.proposals += 1;
        let n = s.nodes.get_mut(&via).ok_or("no such node")?;
        if !n.alive() {
            return Err(format!("n{via} is down"));
        }
        n.seq += 1;
        ProposalId {
            node: via,
            run: n.incarnation,
            seq: n.seq,
        }
    };
    let proposal = Proposal::Once { id, command: cmd };
    let mut last = String::from("no try");
    for _ in 0..PROPOSE_TRIES_MAX {
        let Some((raft, incarnation)) = alive_raft(world, via) else {
            return Err(format!("n{via} went down"));
        };
        if incarnation != id.run {
            return Err(format!("n{via} restarted"));
        }
        let leader = raft.current_leader().await;
        let ttl = Duration::from_millis(PROPOSE_TRY_MS);
        let tried = match leader {
            None => Err("no leader known".to_string()),
            Some(l) if l == via => tokio::time::timeout(ttl, raft.client_write(proposal.clone()))
                .await
                .map_err(|_| "timed out".to_string())
                .and_then(|r| r.map(|r| r.data).map_err(|e| e.to_string())),
            Some(l) => tokio::time::timeout(
                ttl,
                deliver(
                    world,
                    via,
                    l,
                    "forward",
                    proposal.clone(),
                    ttl,
                    |raft: Raft, p| async move {
                        raft.client_write(p)
                            .await
                            .map(|r| r.data)
                            .map_err(|e| e.to_string())
                    },
                ),
            )
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|r| r),
        };
        match tried {
            Ok(applied) => return Ok(applied),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last)
}

/// Fire-and-forget proposal for the load (a failure is part of the chaos).
pub fn spawn_propose(world: &Arc<World>, via: NodeId, cmd: Command, after_ms: u64) {
    let world = Arc::clone(world);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        let _ = propose(&world, via, cmd).await;
    });
}

/// Hears every entry this node applies: feeds the checks and the history, and acts on
/// the events that are this node's to act on.
async fn consume(world: Arc<World>, id: NodeId, mut rx: mpsc::Receiver<AppliedEntry>) {
    while let Some(entry) = rx.recv().await {
        world.observe(&Observation::Applied {
            node: id,
            index: entry.index,
            proposal: &entry.proposal,
        });
        let fresh = {
            let mut s = world.lock();
            let fresh = !s.history.contains_key(&entry.index);
            if fresh {
                s.history.insert(entry.index, entry.clone());
            }
            fresh
        };
        if fresh {
            world.check_committed(entry.index);
            world.trace(format_args!(
                "commit {} {} -> {} events{}",
                entry.index,
                entry.proposal,
                entry.applied.events.len(),
                entry
                    .applied
                    .refused
                    .as_deref()
                    .map(|r| format!(", refused: {r}"))
                    .unwrap_or_default()
            ));
        }
        for (k, ev) in entry.applied.events.iter().enumerate() {
            react(&world, id, entry.index, k, ev);
        }
    }
}

/// The node's side of the call flow, drawn from the seed.
fn react(world: &Arc<World>, me: NodeId, index: u64, k: usize, ev: &Event) {
    let responsible = match ev {
        Event::Offered { owner, .. } => *owner == me,
        Event::Connected { call, .. } => {
            world.lock().calls.get(call).is_some_and(|c| c.owner == me)
        }
        Event::AgentStateChanged { agent, .. } => agent_home(world, agent) == Some(me),
        _ => false,
    };
    if !responsible || !world.lock().reacted.insert((index, k)) {
        return;
    }
    let at = world.node_clock_ms(me);
    match ev {
        Event::Offered { call, agent, .. } => {
            let ring_ms = world.draw(20, 500);
            let choice = world.draw(0, 10);
            let cmd = match choice {
                // Nobody picks up: the ring timeout (a Tick) takes the offer back.
                0 => return,
                1 => Command::OfferFailed {
                    call: call.clone(),
                    agent: agent.clone(),
                    failure: OfferFailure::NoAnswer,
                    at: at + ring_ms,
                },
                _ => Command::Connected {
                    call: call.clone(),
                    agent: agent.clone(),
                    at: at + ring_ms,
                },
            };
            spawn_propose(world, me, cmd, ring_ms);
        }
        Event::Connected { call, .. } => {
            let talk_ms = world.draw(100, 1_200);
            let cmd = Command::Ended {
                call: call.clone(),
                by: Party::Caller,
                at: at + talk_ms,
            };
            spawn_propose(world, me, cmd, talk_ms);
        }
        Event::AgentStateChanged {
            agent,
            state: AgentState::NotReady { .. },
        } => {
            let pause_ms = world.draw(100, 600);
            let cmd = Command::AgentReady {
                agent: agent.clone(),
                at: at + pause_ms,
            };
            spawn_propose(world, me, cmd, pause_ms);
        }
        _ => {}
    }
}

/// The node an agent's phone registers with: agents are spread over the nodes.
pub fn agent_home(world: &World, agent: &str) -> Option<NodeId> {
    let n: u64 = agent.strip_prefix('a')?.parse().ok()?;
    Some(n % world.cfg.nodes as u64 + 1)
}

/// Records each term this node leads.
async fn watch_leader(world: Arc<World>, id: NodeId, raft: Raft) {
    let mut rx = raft.metrics();
    drop(raft);
    let mut last_term = None;
    loop {
        let (state, term) = {
            let m = rx.borrow_watched();
            (m.state, m.current_term)
        };
        if state == ServerState::Leader && last_term != Some(term) {
            last_term = Some(term);
            world.observe(&Observation::Leader { node: id, term });
            let first = {
                let mut s = world.lock();
                let first = s.leader_terms.insert(term);
                if first {
                    s.stats.elections += 1;
                }
                first
            };
            if first {
                world.trace(format_args!("n{id} leads term {term}"));
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// NodeStarted, then a lease every `LEASE_EVERY_MS`; the leader also proposes Tick.
async fn lease_loop(world: Arc<World>, id: NodeId, incarnation: u64) {
    let site = "hq".to_string();
    let started_at = world.node_clock_ms(id);
    let mut first = true;
    let mut since_lease_ms = 0;
    loop {
        let Some((raft, inc)) = alive_raft(&world, id) else {
            return;
        };
        if inc != incarnation {
            return;
        }
        if since_lease_ms == 0 {
            let at = world.node_clock_ms(id);
            let cmd = if first {
                Command::NodeStarted {
                    node: id,
                    site: site.clone(),
                    started_at,
                    at,
                }
            } else {
                Command::NodeLease {
                    node: id,
                    site: site.clone(),
                    at,
                }
            };
            let world2 = Arc::clone(&world);
            let sent = first;
            tokio::spawn(async move {
                let r = propose(&world2, id, cmd).await;
                if sent && r.is_err() {
                    world2.trace(format_args!("n{id} could not announce its start"));
                }
            });
            first = false;
        }
        if raft.current_leader().await == Some(id) {
            let at = world.node_clock_ms(id);
            tokio::spawn(async move {
                let _ = raft
                    .client_write(Proposal::Routing(Command::Tick { at }))
                    .await;
            });
        }
        tokio::time::sleep(Duration::from_millis(TICK_EVERY_MS)).await;
        since_lease_ms = (since_lease_ms + TICK_EVERY_MS) % LEASE_EVERY_MS;
    }
}
