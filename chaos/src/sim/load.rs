//! One run's script: found the cluster, configure routing, then a fault phase (calls
//! arriving and abandoning, agents answering or not, crashes with and without the loss of
//! unsynced writes, symmetric and one-way partitions, a site cut off, loss, duplication and
//! delay) and a healing phase in which new calls must be answered; then every open call
//! is closed so the terminal records can be counted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use carillon_consensus::types::{Member, NodeId};
use carillon_routing::{AgentState, Arrival, Command, Event, Party, QueueConfig};

use super::invariants::End;
use super::node::{self, propose, spawn_propose};
use super::world::{CallInfo, World};

const QUEUE: &str = "support";
const SKILL: &str = "s";
/// Calls placed after healing go ahead of any fault-phase call still in line.
const POST_HEAL_PRIORITY: u32 = 5;

fn sleep_ms(ms: u64) -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(ms))
}

fn site_of(id: NodeId, nodes: usize) -> &'static str {
    // The last third of the nodes (at least one) form the branch site.
    let branch_from = nodes as u64 - (nodes as u64 / 3).max(1) + 1;
    if id >= branch_from {
        "branch"
    } else {
        "hq"
    }
}

async fn wait_leader(world: &Arc<World>, within_ms: u64) -> Option<NodeId> {
    let mut waited = 0;
    while waited < within_ms {
        let rafts: Vec<_> = world
            .lock()
            .nodes
            .values()
            .filter_map(|n| n.raft.clone())
            .collect();
        for r in rafts {
            if let Some(l) = r.current_leader().await {
                return Some(l);
            }
        }
        sleep_ms(10).await;
        waited += 10;
    }
    None
}

fn alive_nodes(world: &World) -> Vec<NodeId> {
    world
        .lock()
        .nodes
        .iter()
        .filter(|(_, n)| n.alive())
        .map(|(id, _)| *id)
        .collect()
}

fn pick(world: &World, from: &[NodeId]) -> Option<NodeId> {
    if from.is_empty() {
        return None;
    }
    let i = world.draw(0, from.len() as u64) as usize;
    Some(from[i])
}

/// Runs the whole script; returns the calls placed after healing.
pub async fn script(world: Arc<World>) -> End {
    let n = world.cfg.nodes;
    let ids: Vec<NodeId> = (1..=n as u64).collect();
    {
        let mut s = world.lock();
        for id in &ids {
            let skew =
                s.rng.below(2 * world.cfg.skew_ms_max + 1) as i64 - world.cfg.skew_ms_max as i64;
            s.nodes.insert(
                *id,
                super::world::NodeSlot {
                    site: site_of(*id, n).to_string(),
                    incarnation: 0,
                    raft: None,
                    reader: None,
                    log_disk: Default::default(),
                    sm_disk: Default::default(),
                    skew_ms: skew,
                    seq: 0,
                },
            );
        }
        s.links.delay_min_ms = 1;
        s.links.delay_max_ms = 10;
    }
    for id in &ids {
        if let Err(e) = node::start(&world, *id).await {
            world.trace(format_args!("n{id} failed to start: {e}"));
        }
    }
    let members: BTreeMap<NodeId, Member> = ids
        .iter()
        .map(|id| {
            (
                *id,
                Member {
                    raft_addr: format!("sim:n{id}"),
                    site: site_of(*id, n).to_string(),
                    ..Member::default()
                },
            )
        })
        .collect();
    let first = world.lock().nodes.get(&1).and_then(|s| s.raft.clone());
    if let Some(raft) = first {
        if let Err(e) = raft.initialize(members).await {
            world.trace(format_args!("initialize failed: {e}"));
        }
    }
    sample_loop(&world);
    wait_leader(&world, 3_000).await;

    // Routing set-up, through node 1 while nothing is broken yet.
    let at = world.node_clock_ms(1);
    let setup = [
        Command::ConfigureCluster {
            lease_ms: 3_000,
            at,
        },
        Command::ConfigureQueue {
            queue: QueueConfig {
                name: QUEUE.into(),
                skill: SKILL.into(),
                wrapup_ms: 100,
                ring_timeout_ms: 600,
                ..QueueConfig::default()
            },
            at,
        },
    ];
    for cmd in setup {
        let _ = propose(&world, 1, cmd).await;
    }
    for a in 0..world.cfg.agents {
        let agent = format!("a{a}");
        let home = node::agent_home(&world, &agent).unwrap_or(1);
        let cmd = Command::AgentLogin {
            agent,
            skills: vec![SKILL.into()],
            node: home,
            site: "hq".into(),
            at: world.node_clock_ms(home),
        };
        let _ = propose(&world, home, cmd).await;
    }

    let faults_from = world.now_ms();
    let faults_until = faults_from + world.cfg.fault_ms;
    tokio::spawn(faults(Arc::clone(&world), faults_until));
    tokio::spawn(arrivals(Arc::clone(&world), faults_until, false));
    sleep_ms(world.cfg.fault_ms).await;

    // Healing: every node back, every link whole, the network quiet.
    heal(&world).await;
    world.trace(format_args!("healed"));
    wait_leader(&world, 2_000).await;
    // The fault phase's callers hang up, so the calls placed now test routing itself, not
    // the length of the line left behind; agents the faults left logged out (their node's
    // lease lapsed) or not ready (a ready press lost with a crashed node) come back, as
    // their phones would re-register and they would press ready.
    close_all(&world).await;
    agents_back(&world).await;
    let mut post_heal = Vec::new();
    for k in 0..world.cfg.post_heal_calls {
        let Some(owner) = pick(&world, &alive_nodes(&world)) else {
            break;
        };
        let call = format!("h{k}");
        place_call(&world, owner, &call, POST_HEAL_PRIORITY, None);
        post_heal.push(call);
        sleep_ms(world.draw(20, 100)).await;
    }
    wait_answered(&world, &post_heal, world.cfg.heal_ms).await;

    close_all(&world).await;
    // Long enough for the last commands to reach every replica before the last sample.
    sleep_ms(300).await;
    world.sample_hashes();
    End {
        post_heal_calls: post_heal,
    }
}

/// Waits until every call in `calls` was connected in the committed history, or `within_ms`.
async fn wait_answered(world: &Arc<World>, calls: &[String], within_ms: u64) {
    let mut waited = 0;
    while waited < within_ms {
        let all = {
            let s = world.lock();
            calls.iter().all(|c| {
                s.history.values().any(|e| {
                    e.applied
                        .events
                        .iter()
                        .any(|ev| matches!(ev, Event::Connected { call, .. } if call == c))
                })
            })
        };
        if all {
            return;
        }
        sleep_ms(20).await;
        waited += 20;
    }
}

/// Samples replica state hashes every few virtual milliseconds.
fn sample_loop(world: &Arc<World>) {
    let world = Arc::clone(world);
    tokio::spawn(async move {
        loop {
            sleep_ms(world.cfg.sample_every_ms).await;
            world.sample_hashes();
        }
    });
}

/// Places one call at `owner`; the caller gives up after `patience_ms`, if given.
fn place_call(
    world: &Arc<World>,
    owner: NodeId,
    call: &str,
    priority: u32,
    patience_ms: Option<u64>,
) {
    world
        .lock()
        .calls
        .insert(call.to_string(), CallInfo { owner });
    world.lock().stats.calls += 1;
    let at = world.node_clock_ms(owner);
    let cmd = Command::Enqueue(Arrival {
        call: call.to_string(),
        queue: QUEUE.into(),
        caller: format!("+1555{call}"),
        dialled: "100".into(),
        owner,
        site: "hq".into(),
        at,
        priority,
        skills: Vec::new(),
    });
    spawn_propose(world, owner, cmd, 0);
    if let Some(p) = patience_ms {
        let cmd = Command::Abandon {
            call: call.to_string(),
            at: at + p,
        };
        spawn_propose(world, owner, cmd, p);
    }
}

async fn arrivals(world: Arc<World>, until_ms: u64, _post: bool) {
    let mut k = 0;
    while world.now_ms() < until_ms {
        sleep_ms(world.draw(60, 250)).await;
        let Some(owner) = pick(&world, &alive_nodes(&world)) else {
            continue;
        };
        let priority = world.draw(0, 2) as u32;
        let patience = world.draw(300, 4_000);
        place_call(&world, owner, &format!("c{k}"), priority, Some(patience));
        k += 1;
    }
}

/// The fault phase's injector.
async fn faults(world: Arc<World>, until_ms: u64) {
    let n = world.cfg.nodes as u64;
    while world.now_ms() < until_ms {
        sleep_ms(world.draw(100, 500)).await;
        if world.now_ms() >= until_ms {
            break;
        }
        let last_ms = world.draw(200, 1_200);
        world.lock().stats.faults += 1;
        match world.draw(0, 7) {
            0 => {
                let alive = alive_nodes(&world);
                // Keep a majority up, so the fault phase still routes now and then.
                if (alive.len() as u64) * 2 <= n + 1 {
                    continue;
                }
                let Some(victim) = pick(&world, &alive) else {
                    continue;
                };
                let lose = world.draw(0, 2) == 1;
                world.lock().stats.crashes += 1;
                node::crash(&world, victim, lose).await;
                let w = Arc::clone(&world);
                tokio::spawn(async move {
                    sleep_ms(last_ms).await;
                    restart(&w, victim).await;
                });
            }
            1 => {
                // Symmetric: a random side against the rest.
                let side: Vec<NodeId> = (1..=n).filter(|_| world.draw(0, 2) == 1).collect();
                let rest: Vec<NodeId> = (1..=n).filter(|i| !side.contains(i)).collect();
                let mut pairs = Vec::new();
                for a in &side {
                    for b in &rest {
                        pairs.push((*a, *b));
                        pairs.push((*b, *a));
                    }
                }
                cut_for(&world, pairs, last_ms, "partition");
            }
            2 => {
                let a = world.draw(1, n + 1);
                let b = world.draw(1, n + 1);
                if a != b {
                    cut_for(&world, vec![(a, b)], last_ms, "one-way cut");
                }
            }
            3 => {
                let sites: BTreeMap<NodeId, String> = world
                    .lock()
                    .nodes
                    .iter()
                    .map(|(id, s)| (*id, s.site.clone()))
                    .collect();
                let mut pairs = Vec::new();
                for (a, sa) in &sites {
                    for (b, sb) in &sites {
                        if sa == "branch" && sb != "branch" {
                            pairs.push((*a, *b));
                            pairs.push((*b, *a));
                        }
                    }
                }
                cut_for(&world, pairs, last_ms, "site cut");
            }
            4 => {
                let pct = world.draw(5, 30) as f64;
                world.lock().links.loss_pct = pct;
                world.trace(format_args!("fault: {pct}% loss for {last_ms} ms"));
                restore_after(&world, last_ms);
            }
            5 => {
                let pct = world.draw(5, 30) as f64;
                world.lock().links.dup_pct = pct;
                world.trace(format_args!("fault: {pct}% duplication for {last_ms} ms"));
                restore_after(&world, last_ms);
            }
            _ => {
                let max = world.draw(20, 120);
                world.lock().links.delay_max_ms = max;
                world.trace(format_args!(
                    "fault: delays up to {max} ms for {last_ms} ms"
                ));
                restore_after(&world, last_ms);
            }
        }
    }
}

fn cut_for(world: &Arc<World>, pairs: Vec<(NodeId, NodeId)>, last_ms: u64, what: &str) {
    if pairs.is_empty() {
        return;
    }
    world.trace(format_args!("fault: {what} {pairs:?} for {last_ms} ms"));
    {
        let mut s = world.lock();
        for p in &pairs {
            *s.links.cut.entry(*p).or_insert(0) += 1;
        }
    }
    let world = Arc::clone(world);
    tokio::spawn(async move {
        sleep_ms(last_ms).await;
        let mut s = world.lock();
        for p in &pairs {
            if let Some(c) = s.links.cut.get_mut(p) {
                *c = c.saturating_sub(1);
            }
        }
    });
}

fn restore_after(world: &Arc<World>, last_ms: u64) {
    let world = Arc::clone(world);
    tokio::spawn(async move {
        sleep_ms(last_ms).await;
        let mut s = world.lock();
        s.links.loss_pct = 0.0;
        s.links.dup_pct = 0.0;
        s.links.delay_max_ms = 10;
    });
}

async fn restart(world: &Arc<World>, id: NodeId) {
    let down = world.lock().nodes.get(&id).is_some_and(|s| !s.alive());
    if down {
        if let Err(e) = node::start(world, id).await {
            world.trace(format_args!("n{id} failed to restart: {e}"));
        }
    }
}

async fn heal(world: &Arc<World>) {
    {
        let mut s = world.lock();
        s.links.cut.clear();
        s.links.loss_pct = 0.0;
        s.links.dup_pct = 0.0;
        s.links.delay_min_ms = 1;
        s.links.delay_max_ms = 10;
    }
    let ids: Vec<NodeId> = world.lock().nodes.keys().copied().collect();
    for id in ids {
        restart(world, id).await;
    }
}

/// Rounds of [`close_once`] at most: a call can enter, or connect, while a round runs.
const CLOSE_ROUNDS_MAX: u32 = 5;

/// Ends every call the committed history shows open, through its owner, until none is.
async fn close_all(world: &Arc<World>) {
    for _ in 0..CLOSE_ROUNDS_MAX {
        if close_once(world).await == 0 {
            return;
        }
        sleep_ms(50).await;
    }
}

/// Puts every agent the committed history shows logged out or not ready back to work.
async fn agents_back(world: &Arc<World>) {
    let mut last: BTreeMap<String, AgentState> = BTreeMap::new();
    {
        let s = world.lock();
        for e in s.history.values() {
            for ev in &e.applied.events {
                if let Event::AgentStateChanged { agent, state } = ev {
                    last.insert(agent.clone(), state.clone());
                }
            }
        }
    }
    for (agent, state) in last {
        let home = node::agent_home(world, &agent).unwrap_or(1);
        let at = world.node_clock_ms(home);
        let cmd = match state {
            AgentState::LoggedOut => Command::AgentLogin {
                agent,
                skills: vec![SKILL.into()],
                node: home,
                site: "hq".into(),
                at,
            },
            AgentState::NotReady { .. } => Command::AgentReady { agent, at },
            _ => continue,
        };
        let _ = propose(world, home, cmd).await;
    }
}

/// Ends every call the committed history still shows open, through its owner; returns
/// how many it tried to end.
async fn close_once(world: &Arc<World>) -> usize {
    let mut open: BTreeMap<String, bool> = BTreeMap::new();
    {
        let s = world.lock();
        for e in s.history.values() {
            if let Some(Command::Enqueue(a)) = match &e.proposal {
                carillon_consensus::types::Proposal::Routing(c) => Some(c),
                carillon_consensus::types::Proposal::Once { command, .. } => Some(command),
            } {
                if e.applied.refused.is_none() {
                    open.entry(a.call.clone()).or_insert(false);
                }
            }
            for ev in &e.applied.events {
                match ev {
                    Event::Connected { call, .. } => {
                        open.insert(call.clone(), true);
                    }
                    Event::CallFinished(r) => {
                        open.remove(&r.call);
                    }
                    _ => {}
                }
            }
        }
    }
    let count = open.len();
    for (call, connected) in open {
        let owner = world.lock().calls.get(&call).map_or(1, |c| c.owner);
        let at = world.node_clock_ms(owner);
        let cmd = if connected {
            Command::Ended {
                call: call.clone(),
                by: Party::System,
                at,
            }
        } else {
            Command::Abandon {
                call: call.clone(),
                at,
            }
        };
        let _ = propose(world, owner, cmd).await;
    }
    count
}
