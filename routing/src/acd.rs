//! The ACD state machine: applies commands, keeps the invariants, and matches calls to
//! agents after every command.
//!
//! Each handler checks everything that could make its command fail before it changes
//! anything, so a refused command leaves the state exactly as it was. Timers fire only on
//! `Tick`: a `Connected` that arrives after the ring deadline but before the Tick that would
//! have revoked the offer still connects the call.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::agent::{AgentState, Roster};
use crate::call::{Call, CallState, Callback, Ending, Preferred};
use crate::canon::{Canon, Fnv};
use crate::cluster::{NodeStatus, LEASE_MS_DEFAULT};
use crate::command::{Arrival, Command, ForcedState, OfferFailure, Party, RoutingSettings, Vip};
use crate::error::RoutingError;
use crate::event::{Disposition, Event, ExitReason, RevokeReason};
use crate::queue::{ExitAction, Queue, QueueConfig, Strategy, Waiting};
use crate::skill::{self, Need};
use crate::stats::{AcdStats, QueueStats, Totals};
use crate::strategy::{self, Want};
use crate::{Millis, NodeId};

/// Bounds on what the ACD holds, so hostile or runaway input cannot grow it without end.
/// They are part of the replicated state: every replica must use the same values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcdLimits {
    /// Live calls (waiting, offered or connected) across all queues.
    pub calls_max: usize,
    /// Agents ever logged in (logged-out agents are kept).
    pub agents_max: usize,
    pub queues_max: usize,
    /// Nodes ever registered by a lease.
    pub nodes_max: usize,
}

impl Default for AcdLimits {
    fn default() -> Self {
        AcdLimits {
            calls_max: 100_000,
            agents_max: 100_000,
            queues_max: 10_000,
            nodes_max: 1_000,
        }
    }
}

impl Canon for AcdLimits {
    fn canon(&self, h: &mut Fnv) {
        let AcdLimits {
            calls_max,
            agents_max,
            queues_max,
            nodes_max,
        } = self;
        calls_max.canon(h);
        agents_max.canon(h);
        queues_max.canon(h);
        nodes_max.canon(h);
    }
}

/// VIP numbers kept at most.
pub const VIPS_MAX: usize = 100_000;
/// Live blacklist entries kept at most.
pub const BLACKLIST_MAX: usize = 100_000;
/// Skills per agent or per call at most.
pub const SKILLS_MAX: usize = 64;
/// Queue moves (overflows) per call at most: beyond, the call is refused (a loop).
pub const MOVES_MAX: u32 = 8;
const DAY_MS: u64 = 86_400_000;

/// A waiting call's expected wait, for announcements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitEstimate {
    /// 1-based place in line.
    pub position: u32,
    /// position x recent average handle time / staffed agents; None without history or
    /// without a logged-in agent who could take the call.
    pub expected_wait_ms: Option<u64>,
}

/// A click-to-dial call as `StartOutbound` brings it.
struct Outbound {
    call: String,
    agent: String,
    number: String,
    owner: NodeId,
    site: String,
}

/// Order of candidates across queues: (priority, inverted; fairness term; arrival).
type Rank = (u32, u64, u64);

/// The contact center's routing state: queues, agents, live calls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acd {
    /// The latest command time seen; never goes backwards.
    now: Millis,
    /// The next call's arrival sequence number (its place in line for life).
    next_seq: u64,
    limits: AcdLimits,
    queues: BTreeMap<String, Queue>,
    roster: Roster,
    calls: BTreeMap<String, Call>,
    totals: Totals,
    /// Nodes that have leased at least once.
    nodes: BTreeMap<NodeId, NodeStatus>,
    lease_ms: u64,
    /// The last Tick's time. Ticks come only from a leader, several a second; a gap
    /// longer than a sixth of a lease means there was no leader to commit anyone's lease
    /// renewal, so every live node is given a fresh lease when ticking resumes (an
    /// election must not take the survivors down with the node that died).
    last_tick_at: Millis,
    settings: RoutingSettings,
    vips: BTreeMap<String, Vip>,
    /// Last-agent affinity: caller -> (agent, when answered).
    last_agent: BTreeMap<String, (String, Millis)>,
    /// Derived from `last_agent`, oldest first, for eviction.
    last_agent_age: BTreeSet<(Millis, String)>,
    /// Live blacklist changes: caller -> blocked. Overrides each node's configured list.
    #[serde(default)]
    blacklist: BTreeMap<String, bool>,
}

impl Default for Acd {
    fn default() -> Self {
        Acd::new()
    }
}

impl Acd {
    pub fn new() -> Self {
        Acd::with_limits(AcdLimits::default())
    }

    pub fn with_limits(limits: AcdLimits) -> Self {
        Acd {
            now: 0,
            next_seq: 0,
            limits,
            queues: BTreeMap::new(),
            roster: Roster::default(),
            calls: BTreeMap::new(),
            totals: Totals::default(),
            nodes: BTreeMap::new(),
            lease_ms: LEASE_MS_DEFAULT,
            last_tick_at: 0,
            settings: RoutingSettings::default(),
            vips: BTreeMap::new(),
            last_agent: BTreeMap::new(),
            last_agent_age: BTreeSet::new(),
            blacklist: BTreeMap::new(),
        }
    }

    /// Apply one command; returns events in order. An Err leaves the state unchanged.
    /// `at` older than the current `now` is clamped (now = max(now, at)).
    pub fn apply(&mut self, cmd: Command) -> Result<Vec<Event>, RoutingError> {
        let at = cmd.at();
        let now = self.now.max(at);
        let mut events = Vec::new();
        match cmd {
            Command::ConfigureQueue { queue, .. } => self.configure_queue(queue)?,
            Command::AgentLogin {
                agent,
                skills,
                node,
                site,
                ..
            } => {
                self.check_node_up(node)?;
                let location = (node, site.as_str(), at);
                self.agent_login(&agent, &skills, location, now, &mut events)?
            }
            Command::AgentLogout { agent, .. } => self.agent_logout(&agent, &mut events)?,
            Command::AgentReady { agent, .. } => self.agent_ready(&agent, now, &mut events)?,
            Command::AgentNotReady { agent, reason, .. } => {
                self.agent_not_ready(&agent, reason, &mut events)?
            }
            Command::Enqueue(arrival) => {
                self.check_node_up(arrival.owner)?;
                self.enqueue(arrival, now, &mut events)?
            }
            Command::Abandon { call, .. } => self.abandon(&call, now, &mut events)?,
            Command::Connected { call, agent, .. } => {
                self.connected(&call, &agent, now, &mut events)?
            }
            Command::TakenOver {
                call, supervisor, ..
            } => self.taken_over(&call, supervisor, now, &mut events)?,
            Command::OfferFailed {
                call,
                agent,
                failure,
                ..
            } => self.offer_failed(&call, &agent, failure, now, &mut events)?,
            Command::Ended { call, by, .. } => self.ended(&call, by, now, &mut events)?,
            Command::Lost { call, cause, .. } => self.lost(&call, cause, now, &mut events)?,
            Command::Tick { .. } => self.tick(now, &mut events),
            Command::NodeLease { node, site, .. } => {
                self.node_lease(node, site, now, &mut events)?
            }
            Command::LeasesHeard { nodes, .. } => self.leases_heard(&nodes, now)?,
            Command::NodeStarted {
                node,
                site,
                started_at,
                ..
            } => {
                self.close_earlier_run(node, started_at, now, &mut events);
                self.node_lease(node, site, now, &mut events)?
            }
            Command::ConfigureCluster { lease_ms, .. } => {
                if lease_ms == 0 {
                    return Err(RoutingError::InvalidClusterConfig(
                        "lease_ms must be greater than 0",
                    ));
                }
                self.lease_ms = lease_ms;
            }
            Command::ConfigureRouting { settings, .. } => self.settings = settings,
            Command::SetAgentSkills { agent, skills, .. } => {
                self.agent(&agent)?;
                let skills = parse_skills(&skills)?;
                self.roster.set_skills(&agent, skills);
            }
            Command::ForceAgentState { agent, state, .. } => {
                self.force_state(&agent, state, now, &mut events)?
            }
            Command::SetVip { caller, vip, .. } => self.set_vip(caller, vip)?,
            Command::RequestCallback { call, number, .. } => {
                self.request_callback(&call, number)?
            }
            Command::CallbackNoAnswer { call, .. } => {
                self.callback_no_answer(&call, now, &mut events)?
            }
            Command::TransferToQueue { call, queue, .. } => {
                self.transfer_to_queue(&call, queue, now, &mut events)?
            }
            Command::TransferToAgent {
                call,
                agent,
                wait_ms,
                ..
            } => self.transfer_to_agent(&call, &agent, wait_ms, now, &mut events)?,
            Command::Pickup { call, agent, .. } => self.pickup(&call, &agent, now, &mut events)?,
            Command::StartOutbound {
                call,
                agent,
                number,
                owner,
                site,
                ..
            } => {
                self.check_node_up(owner)?;
                let outbound = Outbound {
                    call,
                    agent,
                    number,
                    owner,
                    site,
                };
                self.start_outbound(outbound, now, &mut events)?
            }
            Command::SetBlacklist {
                caller, blocked, ..
            } => self.set_blacklist(caller, blocked)?,
        }
        self.now = now;
        self.match_calls(now, &mut events);
        Ok(events)
    }

    pub fn now(&self) -> Millis {
        self.now
    }

    pub fn limits(&self) -> AcdLimits {
        self.limits
    }

    pub fn settings(&self) -> &RoutingSettings {
        &self.settings
    }

    pub fn agent_state(&self, agent: &str) -> Option<&AgentState> {
        self.roster.get(agent).map(|a| &a.state)
    }

    /// The node holding the agent's registration; None if unknown or logged out.
    pub fn agent_node(&self, agent: &str) -> Option<NodeId> {
        let agent = self.roster.get(agent)?;
        (agent.state != AgentState::LoggedOut).then_some(agent.node)
    }

    /// The site of the agent's registration; None if unknown or logged out.
    pub fn agent_site(&self, agent: &str) -> Option<&str> {
        let agent = self.roster.get(agent)?;
        (agent.state != AgentState::LoggedOut).then_some(agent.site.as_str())
    }

    /// Why the ACD itself logged the agent out (e.g. `node-down`), until they log in again.
    pub fn agent_logout_reason(&self, agent: &str) -> Option<&str> {
        self.roster.get(agent)?.logout_reason.as_deref()
    }

    /// The agent's skills with their levels.
    pub fn agent_skills(&self, agent: &str) -> Option<&BTreeMap<String, u8>> {
        self.roster.get(agent).map(|a| &a.skills)
    }

    /// The node holding a live call's caller leg.
    pub fn call_owner(&self, call: &str) -> Option<NodeId> {
        self.calls.get(call).map(|c| c.owner)
    }

    /// The queue a live call is in now (it may have moved by overflow).
    pub fn call_queue(&self, call: &str) -> Option<&str> {
        self.calls.get(call).map(|c| c.queue.as_str())
    }

    /// A live call's current priority.
    pub fn call_priority(&self, call: &str) -> Option<u32> {
        self.calls.get(call).map(|c| c.priority)
    }

    /// Every node that has leased, in id order.
    pub fn nodes(&self) -> Vec<(NodeId, NodeStatus)> {
        self.nodes.iter().map(|(id, n)| (*id, n.clone())).collect()
    }

    /// The lease length in force.
    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    /// Whether the live blacklist blocks (`Some(true)`) or lets in (`Some(false)`)
    /// `caller`; `None` leaves it to the node's configured list.
    pub fn blacklisted(&self, caller: &str) -> Option<bool> {
        self.blacklist.get(caller).copied()
    }

    /// Every live blacklist change, by caller.
    pub fn blacklist(&self) -> &BTreeMap<String, bool> {
        &self.blacklist
    }

    pub fn vip(&self, caller: &str) -> Option<&Vip> {
        self.vips.get(caller)
    }

    /// The agent who last answered this caller, if remembered.
    pub fn last_agent_of(&self, caller: &str) -> Option<&str> {
        self.last_agent.get(caller).map(|(agent, _)| agent.as_str())
    }

    /// The queue's config, if it was configured.
    pub fn queue_config(&self, queue: &str) -> Option<&QueueConfig> {
        self.queues.get(queue).map(|q| &q.config)
    }

    /// Calls waiting in line (not being offered); 0 for an unknown queue.
    pub fn queue_depth(&self, queue: &str) -> usize {
        self.queues.get(queue).map_or(0, Queue::len)
    }

    /// 1-based place in line of a waiting call; None if it is not waiting (unknown,
    /// being offered or connected).
    pub fn waiting_position(&self, call: &str) -> Option<u32> {
        let call = self.calls.get(call)?;
        if call.state != CallState::Waiting {
            return None;
        }
        self.queues.get(&call.queue)?.position(call.key())
    }

    /// Position and expected wait of a waiting call, for announcements.
    pub fn wait_estimate(&self, call_id: &str) -> Option<WaitEstimate> {
        let position = self.waiting_position(call_id)?;
        let call = self.calls.get(call_id)?;
        let queue = self.queues.get(&call.queue)?;
        let needs = if call.needs.is_empty() {
            &queue.needs
        } else {
            &call.needs
        };
        let want = self.want(queue, needs, queue.config.loosest_cap(), call, true, None);
        let staffed = self
            .roster
            .iter()
            .filter(|(_, a)| a.state != AgentState::LoggedOut && want.fits(a))
            .count() as u64;
        let expected_wait_ms = queue
            .average_handle_ms()
            .filter(|_| staffed > 0)
            .map(|aht| u64::from(position).saturating_mul(aht) / staffed);
        Some(WaitEstimate {
            position,
            expected_wait_ms,
        })
    }

    /// Heap estimate of all waiting calls: structs plus string capacities plus a B-tree
    /// slot (key + value) for the call map; allocator and node overhead not counted.
    pub fn waiting_call_heap_bytes(&self) -> usize {
        let mut total = 0;
        for (id, call) in self
            .calls
            .iter()
            .filter(|(_, c)| c.state == CallState::Waiting)
        {
            total += std::mem::size_of::<String>() + std::mem::size_of::<Call>();
            total += id.capacity() * 2; // the map key and the line entry's copy
            total += call.queue.capacity() + call.caller.capacity() + call.dialled.capacity();
            total += call.site.capacity() + std::mem::size_of::<Waiting>();
        }
        total
    }

    pub fn stats(&self) -> AcdStats {
        let mut queues: BTreeMap<String, QueueStats> = self
            .queues
            .keys()
            .map(|name| (name.clone(), QueueStats::default()))
            .collect();
        for call in self.calls.values() {
            let Some(stats) = queues.get_mut(&call.queue) else {
                continue;
            };
            match call.state {
                CallState::Waiting => stats.waiting += 1,
                CallState::Offered { .. } => stats.offering += 1,
                CallState::Connected { .. } => stats.connected += 1,
            }
            if !matches!(call.state, CallState::Connected { .. }) {
                let wait_ms = self.now.saturating_sub(call.arrived_at);
                stats.longest_wait_ms = stats.longest_wait_ms.max(wait_ms);
            }
        }
        let mut agents: BTreeMap<String, u64> = AgentState::NAMES
            .iter()
            .map(|name| ((*name).to_owned(), 0))
            .collect();
        for (_, agent) in self.roster.iter() {
            *agents.entry(agent.state.name().to_owned()).or_insert(0) += 1;
        }
        AcdStats {
            now: self.now,
            queues,
            agents,
            totals: self.totals,
        }
    }

    /// FNV-1a over a canonical encoding of the whole state: equal on every replica that
    /// applied the same commands, on any platform.
    pub fn state_hash(&self) -> u64 {
        let mut h = Fnv::new();
        self.canon(&mut h);
        h.finish()
    }

    /// Checks the state's internal consistency, including DESIGN.md invariant 1 (no agent
    /// offered or connected to two calls) and line order in every queue. For tests and
    /// the chaos harness; `Err` describes the first violation found.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.roster.check_index()?;
        for (id, call) in &self.calls {
            let outbound =
                call.queue.is_empty() && matches!(call.state, CallState::Connected { .. });
            let queue = self.queues.get(&call.queue);
            if queue.is_none() && !outbound {
                return Err(format!("call {id} is in unknown queue {}", call.queue));
            }
            let tied: Vec<(&String, AgentState)> = match &call.state {
                CallState::Waiting => {
                    let in_line = queue
                        .and_then(|q| q.get(call.key()))
                        .is_some_and(|w| w.call == *id);
                    if !in_line {
                        return Err(format!("waiting call {id} is not in its queue's line"));
                    }
                    continue;
                }
                CallState::Offered { agents, .. } => {
                    if agents.is_empty() {
                        return Err(format!("call {id} is offered to nobody"));
                    }
                    let distinct: BTreeSet<&String> = agents.iter().collect();
                    if distinct.len() != agents.len() {
                        return Err(format!("call {id} offers one agent twice"));
                    }
                    agents
                        .iter()
                        .map(|a| (a, AgentState::Reserved { call: id.clone() }))
                        .collect()
                }
                // Taken over: no agent holds the call any more.
                CallState::Connected { .. } if call.taken_over_by.is_some() => continue,
                CallState::Connected { agent, .. } => {
                    vec![(agent, AgentState::OnCall { call: id.clone() })]
                }
            };
            for (agent, expected) in tied {
                let actual = self.agent_state(agent);
                if actual != Some(&expected) {
                    return Err(format!(
                        "call {id} is {} with agent {agent}, whose state is {actual:?}",
                        call.state.name()
                    ));
                }
            }
        }
        for (id, agent) in self.roster.iter() {
            if let Some(call_id) = agent.state.call() {
                let points_back = self
                    .calls
                    .get(call_id)
                    .is_some_and(|call| match &call.state {
                        CallState::Offered { agents, .. } => agents.contains(id),
                        CallState::Connected { agent: a, .. } => {
                            a == id && call.taken_over_by.is_none()
                        }
                        CallState::Waiting => false,
                    });
                if !points_back {
                    return Err(format!(
                        "agent {id} is {} for call {call_id}, which is not theirs",
                        agent.state.name()
                    ));
                }
            }
            if agent.logout_pending && !matches!(agent.state, AgentState::OnCall { .. }) {
                return Err(format!(
                    "agent {id} has a pending logout while not on a call"
                ));
            }
        }
        for (node, status) in self.nodes.iter().filter(|(_, n)| !n.up) {
            if let Some((id, _)) = self.calls.iter().find(|(_, c)| c.owner == *node) {
                return Err(format!("call {id} is owned by node n{node}, which is down"));
            }
            let reachable = self.roster.iter().find(|(_, a)| {
                a.node == *node
                    && a.state != AgentState::LoggedOut
                    && !(a.logout_pending && matches!(a.state, AgentState::OnCall { .. }))
            });
            if let Some((id, _)) = reachable {
                return Err(format!(
                    "agent {id} is reachable at node n{node} (site {}), which is down",
                    status.site
                ));
            }
        }
        let mut in_lines = 0;
        for (name, queue) in &self.queues {
            in_lines += queue.len();
            let sorted = queue
                .waiting
                .iter()
                .zip(queue.waiting.iter().skip(1))
                .all(|(a, b)| a.key() < b.key());
            if !sorted {
                return Err(format!("queue {name} is not in line order"));
            }
            for w in &queue.waiting {
                let ok = self.calls.get(&w.call).is_some_and(|c| {
                    c.state == CallState::Waiting && c.queue == *name && c.key() == w.key()
                });
                if !ok {
                    return Err(format!(
                        "queue {name} holds {} which is not waiting there",
                        w.call
                    ));
                }
            }
        }
        let waiting = self
            .calls
            .values()
            .filter(|c| c.state == CallState::Waiting)
            .count();
        if waiting != in_lines {
            return Err(format!(
                "{waiting} waiting calls but {in_lines} places in lines"
            ));
        }
        if self.last_agent.len() != self.last_agent_age.len() {
            return Err("last-agent age index out of step".into());
        }
        Ok(())
    }

    fn configure_queue(&mut self, config: QueueConfig) -> Result<(), RoutingError> {
        if let Some(problem) = config.problem() {
            return Err(RoutingError::InvalidQueueConfig {
                queue: config.name,
                problem,
            });
        }
        if let Some(queue) = self.queues.get_mut(&config.name) {
            queue.set_config(config);
            return Ok(());
        }
        if self.queues.len() >= self.limits.queues_max {
            return Err(RoutingError::LimitReached {
                what: "the number of queues (queues_max)",
                max: self.limits.queues_max,
            });
        }
        self.queues.insert(config.name.clone(), Queue::new(config));
        Ok(())
    }

    /// `location`: the node that holds the registration, its site, and the proposer's `at`.
    fn agent_login(
        &mut self,
        agent: &str,
        skills: &[String],
        location: (NodeId, &str, Millis),
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        let (node, site, at) = location;
        let skills = parse_skills(skills)?;
        match self.roster.get(agent).map(|a| &a.state) {
            None => {
                if self.roster.len() >= self.limits.agents_max {
                    return Err(RoutingError::LimitReached {
                        what: "the number of agents (agents_max)",
                        max: self.limits.agents_max,
                    });
                }
                self.roster.add(agent, skills);
            }
            Some(AgentState::LoggedOut) => self.roster.set_skills(agent, skills),
            Some(state) => {
                // A re-registration (maybe at another node): new skills and location, and a
                // pending logout is called off. An agent set not ready because their phone
                // could not be reached is reachable again.
                let unreachable = matches!(state, AgentState::NotReady { reason }
                    if reason == OfferFailure::Unreachable.reason_code());
                self.roster.set_skills(agent, skills);
                self.roster.set_logout_pending(agent, false);
                self.roster.set_location(agent, node, site, at);
                if unreachable {
                    self.set_agent(agent, AgentState::Ready, now, events);
                }
                return Ok(());
            }
        }
        self.roster.set_location(agent, node, site, at);
        self.set_agent(agent, AgentState::Ready, now, events);
        Ok(())
    }

    fn agent_logout(&mut self, agent: &str, events: &mut Vec<Event>) -> Result<(), RoutingError> {
        let state = self.agent(agent)?.state.clone();
        match state {
            AgentState::LoggedOut => {}
            AgentState::OnCall { .. } => self.roster.set_logout_pending(agent, true),
            AgentState::Reserved { call } => {
                self.withdraw(&call, agent, RevokeReason::AgentGone, events);
                self.set_agent(agent, AgentState::LoggedOut, 0, events);
            }
            AgentState::Ready | AgentState::NotReady { .. } | AgentState::WrapUp { .. } => {
                self.set_agent(agent, AgentState::LoggedOut, 0, events);
            }
        }
        Ok(())
    }

    fn agent_ready(
        &mut self,
        agent: &str,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        let state = &self.agent(agent)?.state;
        match state {
            AgentState::Ready => {}
            AgentState::NotReady { .. } | AgentState::WrapUp { .. } => {
                self.set_agent(agent, AgentState::Ready, now, events);
            }
            AgentState::LoggedOut | AgentState::Reserved { .. } | AgentState::OnCall { .. } => {
                return Err(RoutingError::AgentInvalidState {
                    agent: agent.to_owned(),
                    state: state.describe(),
                    action: "go ready",
                });
            }
        }
        Ok(())
    }

    fn agent_not_ready(
        &mut self,
        agent: &str,
        reason: String,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        let state = &self.agent(agent)?.state;
        match state {
            AgentState::NotReady { reason: current } if *current == reason => {}
            AgentState::Ready | AgentState::NotReady { .. } | AgentState::WrapUp { .. } => {
                self.set_agent(agent, AgentState::NotReady { reason }, 0, events);
            }
            AgentState::LoggedOut | AgentState::Reserved { .. } | AgentState::OnCall { .. } => {
                return Err(RoutingError::AgentInvalidState {
                    agent: agent.to_owned(),
                    state: state.describe(),
                    action: "go not ready (reject a ringing offer with OfferFailed)",
                });
            }
        }
        Ok(())
    }

    fn force_state(
        &mut self,
        agent: &str,
        forced: ForcedState,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        let state = self.agent(agent)?.state.clone();
        if state == AgentState::LoggedOut && forced != ForcedState::LoggedOut {
            return Err(RoutingError::AgentInvalidState {
                agent: agent.to_owned(),
                state: state.describe(),
                action: "be forced ready or not ready (no phone is registered)",
            });
        }
        if let AgentState::OnCall { .. } = state {
            if let Some(a) = self.roster.get_mut(agent) {
                match forced {
                    ForcedState::LoggedOut => a.logout_pending = true,
                    ForcedState::NotReady { reason } => a.not_ready_after_call = Some(reason),
                    // A pending logout stays: the phone is gone, only a new
                    // registration calls it off.
                    ForcedState::Ready => a.not_ready_after_call = None,
                }
            }
            return Ok(());
        }
        if let AgentState::Reserved { call } = &state {
            self.withdraw(call, agent, RevokeReason::Supervisor, events);
        }
        let target = match forced {
            ForcedState::Ready if state == AgentState::Ready => return Ok(()),
            ForcedState::Ready => AgentState::Ready,
            ForcedState::NotReady { reason } => AgentState::NotReady { reason },
            ForcedState::LoggedOut => AgentState::LoggedOut,
        };
        if target != state {
            self.set_agent(agent, target, now, events);
        }
        Ok(())
    }

    fn set_vip(&mut self, caller: String, vip: Option<Vip>) -> Result<(), RoutingError> {
        match vip {
            None => {
                self.vips.remove(&caller);
            }
            Some(vip) => {
                if !self.vips.contains_key(&caller) && self.vips.len() >= VIPS_MAX {
                    return Err(RoutingError::LimitReached {
                        what: "the number of VIP numbers (VIPS_MAX)",
                        max: VIPS_MAX,
                    });
                }
                self.vips.insert(caller, vip);
            }
        }
        Ok(())
    }

    fn enqueue(
        &mut self,
        arrival: Arrival,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        let Arrival {
            call,
            queue,
            caller,
            dialled,
            owner,
            site,
            at: _,
            priority,
            skills,
        } = arrival;
        if self.calls.contains_key(&call) {
            return Err(RoutingError::DuplicateCall(call));
        }
        if self.calls.len() >= self.limits.calls_max {
            return Err(RoutingError::LimitReached {
                what: "the number of live calls (calls_max)",
                max: self.limits.calls_max,
            });
        }
        if !self.queues.contains_key(&queue) {
            return Err(RoutingError::UnknownQueue(queue));
        }
        if skills.len() > SKILLS_MAX {
            return Err(RoutingError::InvalidSkills(format!(
                "at most {SKILLS_MAX} skills"
            )));
        }
        let mut needs = Vec::with_capacity(skills.len());
        for text in &skills {
            needs.push(skill::parse(text).ok_or_else(|| {
                RoutingError::InvalidSkills(format!("`{text}` is not `name` or `name:1-10`"))
            })?);
        }
        let mut call_priority = priority;
        let preferred = self.preferred_for(&caller, now, &mut call_priority);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.calls.insert(
            call.clone(),
            Call {
                queue,
                caller,
                dialled,
                arrived_at: now,
                seq,
                state: CallState::Waiting,
                first_offered_at: None,
                offers: 0,
                last_agent: None,
                owner,
                site,
                priority: call_priority,
                needs,
                queued_at: now,
                first_queue: None,
                moves: 0,
                preferred,
                callback: None,
                taken_over_by: None,
            },
        );
        self.totals.entered += 1;
        self.admit(&call, now, events);
        Ok(())
    }

    /// VIP first, then last-agent affinity: the agent this caller waits for, if any. A VIP
    /// whose agent is not logged in gets the raised priority at once.
    fn preferred_for(&self, caller: &str, now: Millis, priority: &mut u32) -> Option<Preferred> {
        let logged_in = |agent: &str| {
            self.roster
                .get(agent)
                .is_some_and(|a| a.state != AgentState::LoggedOut)
        };
        if let Some(vip) = self.vips.get(caller) {
            if vip.wait_ms > 0 && logged_in(&vip.agent) {
                return Some(Preferred {
                    agent: vip.agent.clone(),
                    until: now.saturating_add(vip.wait_ms),
                    then_priority: Some(vip.priority),
                });
            }
            *priority = (*priority).max(vip.priority);
            return None;
        }
        let s = &self.settings;
        if s.affinity_days == 0 || s.affinity_wait_ms == 0 {
            return None;
        }
        let (agent, at) = self.last_agent.get(caller)?;
        let window_ms = u64::from(s.affinity_days).saturating_mul(DAY_MS);
        (now.saturating_sub(*at) <= window_ms && logged_in(agent)).then(|| Preferred {
            agent: agent.clone(),
            until: now.saturating_add(s.affinity_wait_ms),
            then_priority: None,
        })
    }

    /// Puts a call that is in no line into its queue's line, unless the queue's entry
    /// rules send it elsewhere (closed, full, nobody could take it): those exits and
    /// moves are followed until the call is in a line or finished.
    fn admit(&mut self, call_id: &str, now: Millis, events: &mut Vec<Event>) {
        loop {
            let Some(call) = self.calls.get(call_id) else {
                return;
            };
            let Some(queue) = self.queues.get(&call.queue) else {
                let action = ExitAction::default();
                self.exit(call_id, action, ExitReason::BadOverflow, now, events);
                return;
            };
            let config = &queue.config;
            let exit = if config.schedule.as_ref().is_some_and(|s| !s.is_open(now)) {
                Some((config.after_hours_action.clone(), ExitReason::AfterHours))
            } else if config.queue_len_max > 0 && queue.len() >= config.queue_len_max {
                Some((config.queue_full_action.clone(), ExitReason::QueueFull))
            } else if config.overflow_when_no_agents && !self.anyone_could(call) {
                let to = config.overflow_to.clone();
                Some((ExitAction::Queue { queue: to }, ExitReason::NoAgents))
            } else {
                None
            };
            let Some((action, reason)) = exit else {
                let entry = Waiting {
                    priority: call.priority,
                    seq: call.seq,
                    call: call_id.to_owned(),
                };
                if let Some(queue) = self.queues.get_mut(&call.queue) {
                    queue.insert(entry);
                }
                return;
            };
            if !self.exit(call_id, action, reason, now, events) {
                return;
            }
        }
    }

    /// Takes an exit action for a call that is in no line. Returns true if the call moved
    /// to another queue (the caller then admits it there).
    fn exit(
        &mut self,
        call_id: &str,
        action: ExitAction,
        reason: ExitReason,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> bool {
        let Some(call) = self.calls.get_mut(call_id) else {
            return false;
        };
        let (disposition, reason, action) = match action {
            ExitAction::Queue { queue } => {
                if call.moves < MOVES_MAX && self.queues.contains_key(&queue) {
                    events.push(Event::CallMoved {
                        call: call_id.to_owned(),
                        from: call.queue.clone(),
                        to: queue.clone(),
                        reason,
                    });
                    let from = std::mem::replace(&mut call.queue, queue);
                    call.first_queue.get_or_insert(from);
                    call.queued_at = now;
                    call.moves += 1;
                    return true;
                }
                (
                    Disposition::Refused,
                    ExitReason::BadOverflow,
                    ExitAction::default(),
                )
            }
            action @ ExitAction::Voicemail { .. } => (Disposition::Voicemail, reason, action),
            action @ ExitAction::Hangup { .. } => (Disposition::Refused, reason, action),
        };
        events.push(Event::CallExited {
            call: call_id.to_owned(),
            owner: call.owner,
            action,
            reason,
        });
        let cause = reason.name().to_owned();
        self.finish(call_id, Ending::Exit { disposition, cause }, now, events);
        false
    }

    /// Whether some logged-in agent could take this call once escalation is complete.
    fn anyone_could(&self, call: &Call) -> bool {
        let Some(queue) = self.queues.get(&call.queue) else {
            return false;
        };
        let needs = if call.needs.is_empty() {
            &queue.needs
        } else {
            &call.needs
        };
        let want = self.want(queue, needs, queue.config.loosest_cap(), call, true, None);
        self.roster
            .iter()
            .any(|(_, a)| a.state != AgentState::LoggedOut && want.fits(a))
    }

    fn abandon(
        &mut self,
        call_id: &str,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        let call = self.call(call_id)?;
        let (state, queue, key) = (call.state.clone(), call.queue.clone(), call.key());
        let position = match state {
            CallState::Waiting => self.queues.get_mut(&queue).and_then(|line| {
                let position = line.position(key);
                line.remove(key);
                position
            }),
            // Being offered is being at the front of the line.
            CallState::Offered { agents, .. } => {
                for agent in agents {
                    self.revoke_to_ready(call_id, &agent, RevokeReason::CallerGone, now, events);
                }
                Some(1)
            }
            CallState::Connected { .. } => {
                return Err(RoutingError::CallInvalidState {
                    call: call_id.to_owned(),
                    state: state.name(),
                    action: "be abandoned (a connected call ends with Ended)",
                })
            }
        };
        self.finish(call_id, Ending::Abandoned { position }, now, events);
        Ok(())
    }

    fn connected(
        &mut self,
        call_id: &str,
        agent: &str,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        self.check_offered_to(call_id, agent, "connect again")?;
        let mut others = Vec::new();
        let mut caller = String::new();
        if let Some(call) = self.calls.get_mut(call_id) {
            if let CallState::Offered { agents, .. } = &call.state {
                others = agents.iter().filter(|a| *a != agent).cloned().collect();
            }
            call.state = CallState::Connected {
                agent: agent.to_owned(),
                answered_at: now,
            };
            call.last_agent = Some(agent.to_owned());
            caller.clone_from(&call.caller);
        }
        // Ring-all: the first answer wins.
        for other in others {
            self.revoke_to_ready(
                call_id,
                &other,
                RevokeReason::AnsweredElsewhere,
                now,
                events,
            );
        }
        events.push(Event::Connected {
            call: call_id.to_owned(),
            agent: agent.to_owned(),
        });
        let state = AgentState::OnCall {
            call: call_id.to_owned(),
        };
        self.set_agent(agent, state, 0, events);
        if let Some(a) = self.roster.get_mut(agent) {
            a.missed = 0;
            a.calls_answered += 1;
        }
        self.remember_agent(caller, agent, now);
        Ok(())
    }

    /// Last-agent affinity memory, bounded: the oldest caller is forgotten first.
    fn remember_agent(&mut self, caller: String, agent: &str, now: Millis) {
        if self.settings.affinity_days == 0 || caller.is_empty() {
            return;
        }
        if let Some((_, at)) = self.last_agent.get(&caller) {
            self.last_agent_age.remove(&(*at, caller.clone()));
        }
        self.last_agent_age.insert((now, caller.clone()));
        self.last_agent.insert(caller, (agent.to_owned(), now));
        while self.last_agent.len() > self.settings.affinity_callers_max.max(1) {
            let Some((_, oldest)) = self.last_agent_age.pop_first() else {
                break;
            };
            self.last_agent.remove(&oldest);
        }
    }

    fn offer_failed(
        &mut self,
        call_id: &str,
        agent: &str,
        failure: OfferFailure,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        self.check_offered_to(call_id, agent, "fail an offer")?;
        self.take_off_offer(call_id, agent);
        if failure == OfferFailure::NoAnswer {
            self.missed(agent, now, events);
        } else {
            let reason = failure.reason_code().to_owned();
            self.set_agent(agent, AgentState::NotReady { reason }, 0, events);
        }
        Ok(())
    }

    /// An agent let an offer ring out: not ready `no-answer` after `missed_offers_max` in
    /// a row, else back to ready (at the back of the idle order).
    fn missed(&mut self, agent: &str, now: Millis, events: &mut Vec<Event>) {
        let max = self.settings.missed_offers_max.max(1);
        let Some(a) = self.roster.get_mut(agent) else {
            return;
        };
        a.missed += 1;
        if a.missed >= max {
            a.missed = 0;
            let reason = OfferFailure::NoAnswer.reason_code().to_owned();
            self.set_agent(agent, AgentState::NotReady { reason }, 0, events);
        } else {
            self.set_agent(agent, AgentState::Ready, now, events);
        }
    }

    fn ended(
        &mut self,
        call_id: &str,
        by: Party,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        let call = self.call(call_id)?;
        let CallState::Connected { agent, answered_at } = &call.state else {
            return Err(RoutingError::CallInvalidState {
                call: call_id.to_owned(),
                state: call.state.name(),
                action: "end (only a connected call ends; use Abandon or Lost)",
            });
        };
        let (agent, queue) = (agent.clone(), call.queue.clone());
        let talk_ms = now.saturating_sub(*answered_at);
        if call.taken_over_by.is_some() {
            // The agent was released (and their talk time counted) at the take-over.
            self.finish(call_id, Ending::Answered { by }, now, events);
            return Ok(());
        }
        if let Some(a) = self.roster.get_mut(&agent) {
            a.talk_ms = a.talk_ms.saturating_add(talk_ms);
        }
        if let Some(q) = self.queues.get_mut(&queue) {
            let handle_ms = talk_ms.saturating_add(q.config.wrapup_ms);
            q.record_handle(handle_ms);
        }
        self.after_call(&agent, &queue, now, events);
        self.finish(call_id, Ending::Answered { by }, now, events);
        Ok(())
    }

    fn taken_over(
        &mut self,
        call_id: &str,
        supervisor: String,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        let call = self.call(call_id)?;
        let (CallState::Connected { agent, answered_at }, None) =
            (&call.state, &call.taken_over_by)
        else {
            return Err(RoutingError::CallInvalidState {
                call: call_id.to_owned(),
                state: call.state.name(),
                action: "be taken over (only a connected call, once)",
            });
        };
        let (agent, queue) = (agent.clone(), call.queue.clone());
        let talk_ms = now.saturating_sub(*answered_at);
        if let Some(a) = self.roster.get_mut(&agent) {
            a.talk_ms = a.talk_ms.saturating_add(talk_ms);
        }
        if let Some(call) = self.calls.get_mut(call_id) {
            call.taken_over_by = Some(supervisor);
        }
        self.after_call(&agent, &queue, now, events);
        Ok(())
    }

    fn lost(
        &mut self,
        call_id: &str,
        cause: String,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        self.call(call_id)?;
        self.close_lost(call_id, cause, now, events);
        Ok(())
    }

    /// Closes a live call as lost, whatever its state.
    fn close_lost(&mut self, call_id: &str, cause: String, now: Millis, events: &mut Vec<Event>) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        let (state, queue, key) = (call.state.clone(), call.queue.clone(), call.key());
        let taken_over = call.taken_over_by.is_some();
        match state {
            CallState::Waiting => {
                if let Some(line) = self.queues.get_mut(&queue) {
                    line.remove(key);
                }
            }
            CallState::Offered { agents, .. } => {
                for agent in agents {
                    self.revoke_to_ready(call_id, &agent, RevokeReason::CallerGone, now, events);
                }
            }
            CallState::Connected { .. } if taken_over => {}
            CallState::Connected { agent, .. } => self.after_call(&agent, &queue, now, events),
        }
        self.finish(call_id, Ending::Lost { cause }, now, events);
    }

    fn request_callback(&mut self, call_id: &str, number: String) -> Result<(), RoutingError> {
        let call = self.call(call_id)?;
        if call.state != CallState::Waiting || call.callback.is_some() {
            return Err(RoutingError::CallInvalidState {
                call: call_id.to_owned(),
                state: if call.callback.is_some() {
                    "already a callback"
                } else {
                    call.state.name()
                },
                action: "become a callback (only a waiting caller can leave a number)",
            });
        }
        if number.is_empty() {
            return Err(RoutingError::CallInvalidState {
                call: call_id.to_owned(),
                state: "waiting",
                action: "become a callback without a number",
            });
        }
        if let Some(call) = self.calls.get_mut(call_id) {
            call.callback = Some(Callback {
                number,
                attempts: 0,
                not_before: 0,
            });
        }
        Ok(())
    }

    fn callback_no_answer(
        &mut self,
        call_id: &str,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        let call = self.call(call_id)?;
        let (CallState::Connected { agent, .. }, Some(_)) = (&call.state, &call.callback) else {
            return Err(RoutingError::CallInvalidState {
                call: call_id.to_owned(),
                state: call.state.name(),
                action: "fail a callback (only a connected callback can)",
            });
        };
        let agent = agent.clone();
        let (attempts_max, gap_ms) = self.queues.get(&call.queue).map_or((1, 0), |q| {
            (
                q.config.callback_attempts_max.max(1),
                q.config.callback_gap_ms,
            )
        });
        // No talk, no wrap-up: the agent is free at once (unless leaving).
        self.release_agent(&agent, 0, now, events);
        let Some(call) = self.calls.get_mut(call_id) else {
            return Ok(());
        };
        let attempts = call.callback.as_ref().map_or(0, |c| c.attempts) + 1;
        if let Some(cb) = call.callback.as_mut() {
            cb.attempts = attempts;
            cb.not_before = now.saturating_add(gap_ms);
        }
        if attempts >= attempts_max {
            let ending = Ending::Exit {
                disposition: Disposition::CallbackUnanswered,
                cause: "callback-no-answer".into(),
            };
            self.finish(call_id, ending, now, events);
        } else {
            self.return_to_line(call_id);
        }
        Ok(())
    }

    /// Takes a connected call off its agent as a call ends for them: talk time counted,
    /// the agent released (wrap-up). Returns the agent. The call is left in no state the
    /// caller of this must set.
    fn release_connected(
        &mut self,
        call_id: &str,
        action: &'static str,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<String, RoutingError> {
        let call = self.call(call_id)?;
        let CallState::Connected { agent, answered_at } = &call.state else {
            return Err(RoutingError::CallInvalidState {
                call: call_id.to_owned(),
                state: call.state.name(),
                action,
            });
        };
        let (agent, queue) = (agent.clone(), call.queue.clone());
        let talk_ms = now.saturating_sub(*answered_at);
        if let Some(a) = self.roster.get_mut(&agent) {
            a.talk_ms = a.talk_ms.saturating_add(talk_ms);
        }
        if let Some(q) = self.queues.get_mut(&queue) {
            let handle_ms = talk_ms.saturating_add(q.config.wrapup_ms);
            q.record_handle(handle_ms);
        }
        self.after_call(&agent, &queue, now, events);
        Ok(agent)
    }

    fn transfer_to_queue(
        &mut self,
        call_id: &str,
        queue: String,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        if !self.queues.contains_key(&queue) {
            return Err(RoutingError::UnknownQueue(queue));
        }
        let call = self.call(call_id)?;
        if call.queue.is_empty() {
            return Err(RoutingError::CallInvalidState {
                call: call_id.to_owned(),
                state: "an outbound call",
                action: "be transferred to a queue",
            });
        }
        self.release_connected(
            call_id,
            "be transferred (only a connected call is)",
            now,
            events,
        )?;
        if let Some(call) = self.calls.get_mut(call_id) {
            call.state = CallState::Waiting;
            let from = std::mem::replace(&mut call.queue, queue);
            if from != call.queue {
                call.first_queue.get_or_insert(from);
            }
            call.queued_at = now;
            call.preferred = None;
        }
        self.admit(call_id, now, events);
        Ok(())
    }

    fn transfer_to_agent(
        &mut self,
        call_id: &str,
        agent: &str,
        wait_ms: u64,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        let target = self.agent(agent)?;
        if target.state == AgentState::LoggedOut {
            return Err(RoutingError::AgentInvalidState {
                agent: agent.to_owned(),
                state: target.state.describe(),
                action: "take a transfer",
            });
        }
        let call = self.call(call_id)?;
        if call.queue.is_empty() {
            return Err(RoutingError::CallInvalidState {
                call: call_id.to_owned(),
                state: "an outbound call",
                action: "be transferred to an agent",
            });
        }
        if matches!(&call.state, CallState::Connected { agent: a, .. } if a == agent) {
            return Err(RoutingError::CallInvalidState {
                call: call_id.to_owned(),
                state: "connected to that agent already",
                action: "be transferred to them",
            });
        }
        let ready = target.state == AgentState::Ready;
        self.release_connected(
            call_id,
            "be transferred (only a connected call is)",
            now,
            events,
        )?;
        let Some(call) = self.calls.get_mut(call_id) else {
            return Ok(());
        };
        call.queued_at = now;
        call.preferred = Some(Preferred {
            agent: agent.to_owned(),
            until: now.saturating_add(wait_ms),
            then_priority: None,
        });
        if ready {
            let ring_timeout_ms = self
                .queues
                .get(&call.queue)
                .map_or(0, |q| q.config.ring_timeout_ms);
            self.offer(
                call_id.to_owned(),
                vec![agent.to_owned()],
                ring_timeout_ms,
                now,
                events,
            );
        } else {
            self.return_to_line(call_id);
        }
        Ok(())
    }

    fn pickup(
        &mut self,
        call_id: &str,
        agent: &str,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        let picker = self.agent(agent)?;
        if !matches!(
            picker.state,
            AgentState::Ready | AgentState::NotReady { .. } | AgentState::WrapUp { .. }
        ) {
            return Err(RoutingError::AgentInvalidState {
                agent: agent.to_owned(),
                state: picker.state.describe(),
                action: "pick up a call",
            });
        }
        let call = self.call(call_id)?;
        if call.callback.is_some() {
            return Err(RoutingError::CallInvalidState {
                call: call_id.to_owned(),
                state: "a callback",
                action: "be picked up",
            });
        }
        let (state, queue, key) = (call.state.clone(), call.queue.clone(), call.key());
        match state {
            CallState::Waiting => {
                if let Some(line) = self.queues.get_mut(&queue) {
                    line.remove(key);
                }
            }
            CallState::Offered { agents, .. } => {
                for other in agents {
                    self.revoke_to_ready(call_id, &other, RevokeReason::PickedUp, now, events);
                }
            }
            CallState::Connected { .. } => {
                return Err(RoutingError::CallInvalidState {
                    call: call_id.to_owned(),
                    state: state.name(),
                    action: "be picked up (it is answered already)",
                })
            }
        }
        let ring_timeout_ms = self
            .queues
            .get(&queue)
            .map_or(0, |q| q.config.ring_timeout_ms);
        self.offer(
            call_id.to_owned(),
            vec![agent.to_owned()],
            ring_timeout_ms,
            now,
            events,
        );
        Ok(())
    }

    fn start_outbound(
        &mut self,
        o: Outbound,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        if self.calls.contains_key(&o.call) {
            return Err(RoutingError::DuplicateCall(o.call));
        }
        if self.calls.len() >= self.limits.calls_max {
            return Err(RoutingError::LimitReached {
                what: "the number of live calls (calls_max)",
                max: self.limits.calls_max,
            });
        }
        let agent = self.agent(&o.agent)?;
        if !matches!(agent.state, AgentState::Ready | AgentState::NotReady { .. }) {
            return Err(RoutingError::AgentInvalidState {
                agent: o.agent,
                state: agent.state.describe(),
                action: "place a call",
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.calls.insert(
            o.call.clone(),
            Call {
                queue: String::new(),
                caller: o.agent.clone(),
                dialled: o.number,
                arrived_at: now,
                seq,
                state: CallState::Connected {
                    agent: o.agent.clone(),
                    answered_at: now,
                },
                first_offered_at: None,
                offers: 0,
                last_agent: Some(o.agent.clone()),
                owner: o.owner,
                site: o.site,
                priority: 0,
                needs: Vec::new(),
                queued_at: now,
                first_queue: None,
                moves: 0,
                preferred: None,
                callback: None,
                taken_over_by: None,
            },
        );
        self.totals.entered += 1;
        let state = AgentState::OnCall { call: o.call };
        self.set_agent(&o.agent, state, 0, events);
        Ok(())
    }

    fn set_blacklist(&mut self, caller: String, blocked: bool) -> Result<(), RoutingError> {
        if !self.blacklist.contains_key(&caller) && self.blacklist.len() >= BLACKLIST_MAX {
            return Err(RoutingError::LimitReached {
                what: "the number of live blacklist entries (BLACKLIST_MAX)",
                max: BLACKLIST_MAX,
            });
        }
        self.blacklist.insert(caller, blocked);
        Ok(())
    }

    fn check_node_up(&self, node: NodeId) -> Result<(), RoutingError> {
        match self.nodes.get(&node) {
            Some(status) if !status.up => Err(RoutingError::NodeDown(node)),
            _ => Ok(()),
        }
    }

    fn node_lease(
        &mut self,
        node: NodeId,
        site: String,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        if let Some(status) = self.nodes.get_mut(&node) {
            status.last_lease_at = now;
            if status.site != site {
                status.site = site;
            }
            if !status.up {
                status.up = true;
                events.push(Event::NodeUp { node });
            }
            return Ok(());
        }
        if self.nodes.len() >= self.limits.nodes_max {
            return Err(RoutingError::LimitReached {
                what: "the number of nodes (nodes_max)",
                max: self.limits.nodes_max,
            });
        }
        self.nodes.insert(
            node,
            NodeStatus {
                site,
                up: true,
                last_lease_at: now,
            },
        );
        events.push(Event::NodeUp { node });
        Ok(())
    }

    fn leases_heard(&mut self, nodes: &[NodeId], now: Millis) -> Result<(), RoutingError> {
        if nodes.len() > self.limits.nodes_max {
            return Err(RoutingError::LimitReached {
                what: "the number of nodes (nodes_max)",
                max: self.limits.nodes_max,
            });
        }
        for node in nodes {
            if let Some(status) = self.nodes.get_mut(node).filter(|s| s.up) {
                status.last_lease_at = status.last_lease_at.max(now);
            }
        }
        Ok(())
    }

    /// Marks down every watched node whose last lease is older than `lease_ms`.
    fn lapse_nodes(&mut self, now: Millis, events: &mut Vec<Event>) {
        let lease_ms = self.lease_ms;
        let lapsed: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.up && now.saturating_sub(n.last_lease_at) > lease_ms)
            .map(|(id, _)| *id)
            .collect();
        for node in lapsed {
            self.node_down(node, now, events);
        }
    }

    /// Closes the calls an earlier run of `node` owned (those that arrived before this run
    /// started; close_lost frees their agents and withdraws their offers), and logs out the
    /// agents whose registrations died with that run (located there before it started).
    fn close_earlier_run(
        &mut self,
        node: NodeId,
        started_at: Millis,
        now: Millis,
        events: &mut Vec<Event>,
    ) {
        let owned: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| c.owner == node && c.arrived_at < started_at)
            .map(|(id, _)| id.clone())
            .collect();
        let cause = format!("node-restarted: n{node}");
        for call in owned {
            self.close_lost(&call, cause.clone(), now, events);
        }
        self.unlocate_agents(
            node,
            "node-restarted",
            |a| a.located_at < started_at,
            events,
        );
    }

    /// Logs out the agents whose phones `node` held (those `which` picks): a ringing offer
    /// goes back to its caller's queue; an agent on a call is logged out when it ends.
    fn unlocate_agents(
        &mut self,
        node: NodeId,
        reason: &str,
        which: impl Fn(&crate::agent::Agent) -> bool,
        events: &mut Vec<Event>,
    ) {
        let agents: Vec<(String, AgentState)> = self
            .roster
            .iter()
            .filter(|(_, a)| a.node == node && a.state != AgentState::LoggedOut && which(a))
            .map(|(id, a)| (id.clone(), a.state.clone()))
            .collect();
        for (agent, state) in agents {
            match state {
                AgentState::OnCall { .. } => {
                    // The call's owner ends the call; the agent goes when it does.
                    self.roster.set_logout_pending(&agent, true);
                }
                AgentState::Reserved { call } => {
                    // Down or restarted, the node no longer holds the phone's registration.
                    self.withdraw(&call, &agent, RevokeReason::AgentNodeDown, events);
                    self.set_agent(&agent, AgentState::LoggedOut, 0, events);
                }
                _ => self.set_agent(&agent, AgentState::LoggedOut, 0, events),
            }
            self.roster.set_logout_reason(&agent, reason);
        }
    }

    /// The node is gone: its calls are lost, its agents unreachable, and calls of live
    /// nodes that were ringing its agents go back to the head of their line.
    fn node_down(&mut self, node: NodeId, now: Millis, events: &mut Vec<Event>) {
        if let Some(status) = self.nodes.get_mut(&node) {
            status.up = false;
        }
        events.push(Event::NodeDown { node });
        let owned: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| c.owner == node)
            .map(|(id, _)| id.clone())
            .collect();
        let cause = format!("node-down: n{node}");
        for call in owned {
            self.close_lost(&call, cause.clone(), now, events);
        }
        self.unlocate_agents(node, "node-down", |_| true, events);
    }

    /// Fires node lease lapses, due ring timeouts (oldest deadline first), due wrap-up
    /// ends, the end of VIP and affinity waits, then each queue's time rules (max wait,
    /// overflow).
    fn tick(&mut self, now: Millis, events: &mut Vec<Event>) {
        let gap = now.saturating_sub(self.last_tick_at);
        if self.last_tick_at != 0 && gap > self.lease_ms / 6 {
            for status in self.nodes.values_mut().filter(|n| n.up) {
                status.last_lease_at = status.last_lease_at.max(now);
            }
        }
        self.last_tick_at = now;
        self.lapse_nodes(now, events);
        let mut due: Vec<(Millis, String, Vec<String>)> = self
            .calls
            .iter()
            .filter_map(|(id, call)| match &call.state {
                CallState::Offered {
                    agents,
                    ring_deadline,
                    ..
                } if *ring_deadline <= now => Some((*ring_deadline, id.clone(), agents.clone())),
                _ => None,
            })
            .collect();
        due.sort();
        for (_, call, agents) in due {
            let ring_all = agents.len() > 1;
            for agent in agents {
                self.take_off_offer(&call, &agent);
                events.push(Event::OfferRevoked {
                    call: call.clone(),
                    agent: agent.clone(),
                    reason: RevokeReason::RingTimeout,
                });
                if ring_all {
                    // Nobody answering a ring-all is no one agent's miss.
                    self.set_agent(&agent, AgentState::Ready, now, events);
                } else {
                    self.missed(&agent, now, events);
                }
            }
        }
        let wrapped: Vec<(String, Millis)> = self
            .roster
            .iter()
            .filter_map(|(id, agent)| match agent.state {
                AgentState::WrapUp { until } if until <= now => Some((id.clone(), until)),
                _ => None,
            })
            .collect();
        for (agent, until) in wrapped {
            self.set_agent(&agent, AgentState::Ready, until, events);
        }
        self.end_preferred_waits(now);
        self.apply_queue_timers(now, events);
    }

    /// A VIP or affinity wait is over: drop the preference; a VIP takes its raised
    /// priority (moving up its line, arrival order kept among its new peers).
    fn end_preferred_waits(&mut self, now: Millis) {
        let over: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| c.preferred.as_ref().is_some_and(|p| p.until <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in over {
            let Some(call) = self.calls.get_mut(&id) else {
                continue;
            };
            let old_key = call.key();
            let raised = call
                .preferred
                .take()
                .and_then(|p| p.then_priority)
                .filter(|p| *p > call.priority);
            let Some(priority) = raised else {
                continue;
            };
            call.priority = priority;
            if call.state == CallState::Waiting {
                if let Some(queue) = self.queues.get_mut(&call.queue) {
                    if let Some(mut entry) = queue.remove(old_key) {
                        entry.priority = priority;
                        queue.insert(entry);
                    }
                }
            }
        }
    }

    /// Max wait and overflow for calls waiting in line, in queue then line order.
    fn apply_queue_timers(&mut self, now: Millis, events: &mut Vec<Event>) {
        let mut leaving: Vec<(String, String, ExitAction, ExitReason)> = Vec::new();
        for (name, queue) in &self.queues {
            let c = &queue.config;
            if c.max_wait_ms == 0 && c.overflow_after_ms == 0 && !c.overflow_when_no_agents {
                continue;
            }
            for w in &queue.waiting {
                let Some(call) = self.calls.get(&w.call) else {
                    continue;
                };
                let waited = now.saturating_sub(call.queued_at);
                let to_overflow = || ExitAction::Queue {
                    queue: c.overflow_to.clone(),
                };
                let exit =
                    if c.max_wait_ms > 0 && waited >= c.max_wait_ms && call.callback.is_none() {
                        Some((c.max_wait_action.clone(), ExitReason::MaxWait))
                    } else if c.overflow_after_ms > 0 && waited >= c.overflow_after_ms {
                        Some((to_overflow(), ExitReason::OverflowWait))
                    } else if c.overflow_when_no_agents && !self.anyone_could(call) {
                        Some((to_overflow(), ExitReason::NoAgents))
                    } else {
                        None
                    };
                if let Some((action, reason)) = exit {
                    leaving.push((w.call.clone(), name.clone(), action, reason));
                }
            }
        }
        for (call, queue, action, reason) in leaving {
            let key = match self.calls.get(&call) {
                Some(c) if c.state == CallState::Waiting && c.queue == queue => c.key(),
                _ => continue,
            };
            if let Some(line) = self.queues.get_mut(&queue) {
                line.remove(key);
            }
            if self.exit(&call, action, reason, now, events) {
                self.admit(&call, now, events);
            }
        }
    }

    /// Offers waiting calls to agents until no pair is left. Each queue's candidate is its
    /// first call in line that some ready agent may take (a call held back by a rule, such
    /// as waiting for its own site, a skill level or a preferred agent, lets the next one
    /// by); candidates are served highest priority first across queues, then earliest
    /// arrival (or, with fairness, longest wait times queue weight). Agents are only taken
    /// during a pass, never freed, so a call found unmatchable stays so for the rest of
    /// the pass.
    fn match_calls(&mut self, now: Millis, events: &mut Vec<Event>) {
        if !self.roster.any_ready() {
            return;
        }
        // (rank, queue, index in line, offers made when found, agents found then): a
        // candidate found before the latest offer is checked again before it is used.
        let mut candidates: BTreeSet<(Rank, String, usize, u64, Vec<String>)> = BTreeSet::new();
        let mut made: u64 = 0;
        for (name, queue) in &self.queues {
            if let Some((index, rank, agents)) = self.candidate(queue, 0, now) {
                candidates.insert((rank, name.clone(), index, made, agents));
            }
        }
        while let Some((rank, name, from, found_at, agents)) = candidates.pop_first() {
            let Some(queue) = self.queues.get(&name) else {
                continue;
            };
            let agents = if found_at == made {
                agents
            } else {
                let Some((index, found, agents)) = self.candidate(queue, from, now) else {
                    continue;
                };
                if found != rank || index != from {
                    // Its agent went to another call: this queue's next candidate competes
                    // anew.
                    candidates.insert((found, name, index, made, agents));
                    continue;
                }
                agents
            };
            let index = from;
            let ring_timeout_ms = queue.config.ring_timeout_ms;
            let Some(queue) = self.queues.get_mut(&name) else {
                continue;
            };
            let Some(entry) = queue.remove_at(index) else {
                continue;
            };
            queue.last_offered = agents.first().cloned();
            self.offer(entry.call, agents, ring_timeout_ms, now, events);
            made += 1;
            if !self.roster.any_ready() {
                return;
            }
            if let Some(queue) = self.queues.get(&name) {
                if let Some((index, rank, agents)) = self.candidate(queue, index, now) {
                    candidates.insert((rank, name, index, made, agents));
                }
            }
        }
    }

    /// The first call in `queue`'s line at or after index `from` that a ready agent may
    /// take: (index, rank, agents).
    fn candidate(
        &self,
        queue: &Queue,
        from: usize,
        now: Millis,
    ) -> Option<(usize, Rank, Vec<String>)> {
        // Plain calls (queue skills, no preferred agent, not a callback) that found no
        // agent in this scan, by (escalation cap, site when held to it): later plain calls
        // with the same key find none either.
        let mut failed: BTreeSet<(u8, &str)> = BTreeSet::new();
        for (index, waiting) in queue.waiting.iter().enumerate().skip(from) {
            let Some(call) = self.calls.get(&waiting.call) else {
                continue;
            };
            if call.callback.as_ref().is_some_and(|cb| now < cb.not_before) {
                continue;
            }
            let waited = now.saturating_sub(call.queued_at);
            let cap = queue.config.level_cap(waited);
            let any_site = now.saturating_sub(call.arrived_at) >= queue.config.local_wait_ms;
            let plain = call.needs.is_empty()
                && call.preferred_agent(now).is_none()
                && call.callback.is_none();
            let site_key = if any_site { "" } else { call.site.as_str() };
            if plain && failed.contains(&(cap, site_key)) {
                continue;
            }
            let needs = if call.needs.is_empty() {
                &queue.needs
            } else {
                &call.needs
            };
            let mut want = self.want(queue, needs, cap, call, any_site, Some(&waiting.call));
            want.only = call.preferred_agent(now);
            let mut agents = strategy::select(&self.roster, &want);
            if call.callback.is_some() {
                agents.truncate(1);
            }
            if !agents.is_empty() {
                let rank = self.rank(queue, call, now);
                return Some((index, rank, agents.into_iter().map(str::to_owned).collect()));
            }
            if plain {
                failed.insert((cap, site_key));
            }
        }
        None
    }

    fn want<'a>(
        &'a self,
        queue: &'a Queue,
        needs: &'a [Need],
        cap: u8,
        call: &'a Call,
        any_site: bool,
        call_id: Option<&str>,
    ) -> Want<'a> {
        let random = queue.config.strategy == Strategy::Random;
        let draw = call_id.filter(|_| random).map_or(0, |id| {
            let mut h = Fnv::new();
            id.canon(&mut h);
            call.seq.canon(&mut h);
            call.offers.canon(&mut h);
            h.finish()
        });
        Want {
            needs,
            cap,
            site: &call.site,
            any_site,
            only: None,
            strategy: queue.config.strategy,
            agent_order: &queue.config.agent_order,
            last_offered: queue.last_offered.as_deref(),
            draw,
        }
    }

    fn rank(&self, queue: &Queue, call: &Call, now: Millis) -> Rank {
        let fairness = if self.settings.fairness {
            let waited = now.saturating_sub(call.arrived_at);
            let weight = u64::from(queue.config.weight.max(1));
            u64::MAX - waited.saturating_mul(weight)
        } else {
            0
        };
        (u32::MAX - call.priority, fairness, call.seq)
    }

    fn offer(
        &mut self,
        call_id: String,
        agents: Vec<String>,
        ring_timeout_ms: u64,
        now: Millis,
        events: &mut Vec<Event>,
    ) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        call.first_offered_at.get_or_insert(now);
        call.offers = call.offers.saturating_add(1);
        call.last_agent = agents.first().cloned();
        let owner = call.owner;
        let callback = call
            .callback
            .as_ref()
            .map(|cb| (cb.number.clone(), cb.attempts + 1));
        call.state = CallState::Offered {
            agents: agents.clone(),
            offered_at: now,
            ring_deadline: now.saturating_add(ring_timeout_ms),
        };
        for agent in agents {
            let agent_node = self.roster.get(&agent).map_or(0, |a| a.node);
            events.push(match &callback {
                Some((number, attempt)) => Event::CallbackOffered {
                    call: call_id.clone(),
                    agent: agent.clone(),
                    number: number.clone(),
                    owner,
                    agent_node,
                    attempt: *attempt,
                },
                None => Event::Offered {
                    call: call_id.clone(),
                    agent: agent.clone(),
                    ring_timeout_ms,
                    owner,
                    agent_node,
                },
            });
            let state = AgentState::Reserved {
                call: call_id.clone(),
            };
            self.set_agent(&agent, state, 0, events);
        }
    }

    /// Removes `agent` from the call's offer; the last one out puts the call back in line.
    fn take_off_offer(&mut self, call_id: &str, agent: &str) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        if let CallState::Offered { agents, .. } = &mut call.state {
            agents.retain(|a| a != agent);
            if agents.is_empty() {
                self.return_to_line(call_id);
            }
        }
    }

    /// Withdraws one agent's offer and tells the node; the agent's state is the caller's.
    fn withdraw(
        &mut self,
        call_id: &str,
        agent: &str,
        reason: RevokeReason,
        events: &mut Vec<Event>,
    ) {
        self.take_off_offer(call_id, agent);
        events.push(Event::OfferRevoked {
            call: call_id.to_owned(),
            agent: agent.to_owned(),
            reason,
        });
    }

    /// Puts an offered call back in its line, ahead of everyone who arrived after it.
    fn return_to_line(&mut self, call_id: &str) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        call.state = CallState::Waiting;
        let entry = Waiting {
            priority: call.priority,
            seq: call.seq,
            call: call_id.to_owned(),
        };
        if let Some(queue) = self.queues.get_mut(&call.queue) {
            queue.insert(entry);
        }
    }

    /// The offer to `agent` is cancelled for a reason that is not theirs: they are free.
    fn revoke_to_ready(
        &mut self,
        call: &str,
        agent: &str,
        reason: RevokeReason,
        now: Millis,
        events: &mut Vec<Event>,
    ) {
        events.push(Event::OfferRevoked {
            call: call.to_owned(),
            agent: agent.to_owned(),
            reason,
        });
        self.set_agent(agent, AgentState::Ready, now, events);
    }

    /// The agent's call ended: log out if their phone went away, not ready if a supervisor
    /// said so, else wrap up.
    fn after_call(&mut self, agent: &str, queue: &str, now: Millis, events: &mut Vec<Event>) {
        let wrapup_ms = self.queues.get(queue).map_or(0, |q| q.config.wrapup_ms);
        self.release_agent(agent, wrapup_ms, now, events);
    }

    fn release_agent(&mut self, agent: &str, wrapup_ms: u64, now: Millis, events: &mut Vec<Event>) {
        let (pending, not_ready) = self.roster.get_mut(agent).map_or((false, None), |a| {
            (a.logout_pending, a.not_ready_after_call.take())
        });
        if pending {
            self.set_agent(agent, AgentState::LoggedOut, 0, events);
        } else if let Some(reason) = not_ready {
            self.set_agent(agent, AgentState::NotReady { reason }, 0, events);
        } else if wrapup_ms == 0 {
            self.set_agent(agent, AgentState::Ready, now, events);
        } else {
            let until = now.saturating_add(wrapup_ms);
            self.set_agent(agent, AgentState::WrapUp { until }, 0, events);
        }
    }

    /// Removes a call that is out of every line and emits its one terminal record.
    fn finish(&mut self, call_id: &str, ending: Ending, now: Millis, events: &mut Vec<Event>) {
        let Some(call) = self.calls.remove(call_id) else {
            return;
        };
        match &ending {
            Ending::Answered { .. } => self.totals.answered += 1,
            Ending::Abandoned { .. } => self.totals.abandoned += 1,
            Ending::Lost { .. } => self.totals.lost += 1,
            Ending::Exit { .. } => self.totals.exited += 1,
        }
        events.push(Event::CallFinished(call.record(call_id, ending, now)));
    }

    fn set_agent(
        &mut self,
        agent: &str,
        state: AgentState,
        idle_since: Millis,
        events: &mut Vec<Event>,
    ) {
        if self.roster.set_state(agent, state.clone(), idle_since) {
            events.push(Event::AgentStateChanged {
                agent: agent.to_owned(),
                state,
            });
        }
    }

    fn agent(&self, agent: &str) -> Result<&crate::agent::Agent, RoutingError> {
        self.roster
            .get(agent)
            .ok_or_else(|| RoutingError::UnknownAgent(agent.to_owned()))
    }

    fn call(&self, call: &str) -> Result<&Call, RoutingError> {
        self.calls
            .get(call)
            .ok_or_else(|| RoutingError::UnknownCall(call.to_owned()))
    }

    /// The call must be ringing this agent.
    fn check_offered_to(
        &self,
        call_id: &str,
        agent: &str,
        action: &'static str,
    ) -> Result<(), RoutingError> {
        let call = self.call(call_id)?;
        match &call.state {
            CallState::Offered { agents, .. } if agents.iter().any(|a| a == agent) => Ok(()),
            CallState::Connected { agent: a, .. } if a == agent => {
                Err(RoutingError::CallInvalidState {
                    call: call_id.to_owned(),
                    state: call.state.name(),
                    action,
                })
            }
            _ => Err(RoutingError::NotOfferedTo {
                call: call_id.to_owned(),
                agent: agent.to_owned(),
            }),
        }
    }
}

/// An agent's skills from `name` / `name:level` strings.
fn parse_skills(skills: &[String]) -> Result<BTreeMap<String, u8>, RoutingError> {
    if skills.len() > SKILLS_MAX {
        return Err(RoutingError::InvalidSkills(format!(
            "at most {SKILLS_MAX} skills"
        )));
    }
    skill::parse_all(skills).ok_or_else(|| {
        RoutingError::InvalidSkills(format!(
            "{skills:?}: each skill must be `name` or `name:level` with level 1-10"
        ))
    })
}

impl Canon for RoutingSettings {
    fn canon(&self, h: &mut Fnv) {
        let RoutingSettings {
            missed_offers_max,
            fairness,
            affinity_days,
            affinity_wait_ms,
            affinity_callers_max,
        } = self;
        missed_offers_max.canon(h);
        fairness.canon(h);
        affinity_days.canon(h);
        affinity_wait_ms.canon(h);
        affinity_callers_max.canon(h);
    }
}

impl Canon for Vip {
    fn canon(&self, h: &mut Fnv) {
        let Vip {
            agent,
            wait_ms,
            priority,
        } = self;
        agent.canon(h);
        wait_ms.canon(h);
        priority.canon(h);
    }
}

impl Canon for Strategy {
    fn canon(&self, h: &mut Fnv) {
        h.tag(*self as u8);
    }
}

impl Canon for Acd {
    fn canon(&self, h: &mut Fnv) {
        let Acd {
            now,
            next_seq,
            limits,
            queues,
            roster,
            calls,
            totals,
            nodes,
            lease_ms,
            last_tick_at,
            settings,
            vips,
            last_agent,
            last_agent_age: _,
            blacklist,
        } = self;
        now.canon(h);
        next_seq.canon(h);
        limits.canon(h);
        queues.canon(h);
        roster.canon(h);
        calls.canon(h);
        totals.canon(h);
        nodes.canon(h);
        lease_ms.canon(h);
        last_tick_at.canon(h);
        settings.canon(h);
        vips.canon(h);
        last_agent.canon(h);
        blacklist.canon(h);
    }
}

#[cfg(test)]
#[path = "acd_test.rs"]
mod tests;

#[cfg(test)]
#[path = "acd_control_test.rs"]
mod control_tests;
