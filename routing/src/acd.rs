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
use crate::call::{Call, CallState, Ending};
use crate::canon::{Canon, Fnv};
use crate::command::{Command, OfferFailure, Party};
use crate::error::RoutingError;
use crate::event::{Event, RevokeReason};
use crate::queue::{Queue, QueueConfig, Waiting};
use crate::stats::{AcdStats, QueueStats, Totals};
use crate::strategy;
use crate::Millis;

/// Bounds on what the ACD holds, so hostile or runaway input cannot grow it without end.
/// They are part of the replicated state: every replica must use the same values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcdLimits {
    /// Live calls (waiting, offered or connected) across all queues.
    pub calls_max: usize,
    /// Agents ever logged in (logged-out agents are kept).
    pub agents_max: usize,
    pub queues_max: usize,
}

impl Default for AcdLimits {
    fn default() -> Self {
        AcdLimits {
            calls_max: 100_000,
            agents_max: 100_000,
            queues_max: 10_000,
        }
    }
}

impl Canon for AcdLimits {
    fn canon(&self, h: &mut Fnv) {
        let AcdLimits {
            calls_max,
            agents_max,
            queues_max,
        } = self;
        calls_max.canon(h);
        agents_max.canon(h);
        queues_max.canon(h);
    }
}

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
        }
    }

    /// Apply one command; returns events in order. An Err leaves the state unchanged.
    /// `at` older than the current `now` is clamped (now = max(now, at)).
    pub fn apply(&mut self, cmd: Command) -> Result<Vec<Event>, RoutingError> {
        let now = self.now.max(cmd.at());
        let mut events = Vec::new();
        match cmd {
            Command::ConfigureQueue { queue, .. } => self.configure_queue(queue)?,
            Command::AgentLogin { agent, skills, .. } => {
                self.agent_login(&agent, skills, now, &mut events)?
            }
            Command::AgentLogout { agent, .. } => self.agent_logout(&agent, &mut events)?,
            Command::AgentReady { agent, .. } => self.agent_ready(&agent, now, &mut events)?,
            Command::AgentNotReady { agent, reason, .. } => {
                self.agent_not_ready(&agent, reason, &mut events)?
            }
            Command::Enqueue {
                call,
                queue,
                caller,
                dialled,
                ..
            } => self.enqueue(call, queue, caller, dialled, now)?,
            Command::Abandon { call, .. } => self.abandon(&call, now, &mut events)?,
            Command::Connected { call, agent, .. } => {
                self.connected(&call, &agent, now, &mut events)?
            }
            Command::OfferFailed {
                call,
                agent,
                failure,
                ..
            } => self.offer_failed(&call, &agent, failure, &mut events)?,
            Command::Ended { call, by, .. } => self.ended(&call, by, now, &mut events)?,
            Command::Lost { call, cause, .. } => self.lost(&call, cause, now, &mut events)?,
            Command::Tick { .. } => self.tick(now, &mut events),
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

    pub fn agent_state(&self, agent: &str) -> Option<&AgentState> {
        self.roster.get(agent).map(|a| &a.state)
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
        self.queues.get(&call.queue)?.position(call.seq)
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
    /// offered or connected to two calls) and arrival order in every line. For tests and
    /// the chaos harness; `Err` describes the first violation found.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.roster.check_index()?;
        for (id, call) in &self.calls {
            let Some(queue) = self.queues.get(&call.queue) else {
                return Err(format!("call {id} is in unknown queue {}", call.queue));
            };
            let (agent, expected) = match &call.state {
                CallState::Waiting => {
                    let in_line = queue.get(call.seq).is_some_and(|w| w.call == *id);
                    if !in_line {
                        return Err(format!("waiting call {id} is not in its queue's line"));
                    }
                    continue;
                }
                CallState::Offered { agent, .. } => (
                    agent,
                    AgentState::Reserved {
                        call: id.to_owned(),
                    },
                ),
                CallState::Connected { agent, .. } => (
                    agent,
                    AgentState::OnCall {
                        call: id.to_owned(),
                    },
                ),
            };
            let actual = self.agent_state(agent);
            if actual != Some(&expected) {
                return Err(format!(
                    "call {id} is {} with agent {agent}, whose state is {actual:?}",
                    call.state.name()
                ));
            }
        }
        for (id, agent) in self.roster.iter() {
            if let Some(call_id) = agent.state.call() {
                let points_back = self.calls.get(call_id).is_some_and(|call| {
                    matches!(&call.state,
                        CallState::Offered { agent: a, .. } | CallState::Connected { agent: a, .. }
                        if a == id)
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
        let mut in_lines = 0;
        for (name, queue) in &self.queues {
            in_lines += queue.len();
            let sorted = queue
                .waiting
                .iter()
                .zip(queue.waiting.iter().skip(1))
                .all(|(a, b)| a.seq < b.seq);
            if !sorted {
                return Err(format!("queue {name} is not in arrival order"));
            }
            for w in &queue.waiting {
                let ok = self.calls.get(&w.call).is_some_and(|c| {
                    c.state == CallState::Waiting && c.queue == *name && c.seq == w.seq
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
            queue.config = config;
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

    fn agent_login(
        &mut self,
        agent: &str,
        skills: Vec<String>,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        let skills: BTreeSet<String> = skills.into_iter().collect();
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
            Some(_) => {
                // A re-registration: new skills, and a pending logout is called off.
                self.roster.set_skills(agent, skills);
                self.roster.set_logout_pending(agent, false);
                return Ok(());
            }
        }
        self.set_agent(agent, AgentState::Ready, now, events);
        Ok(())
    }

    fn agent_logout(&mut self, agent: &str, events: &mut Vec<Event>) -> Result<(), RoutingError> {
        let state = self.agent(agent)?.state.clone();
        match state {
            AgentState::LoggedOut => {}
            AgentState::OnCall { .. } => self.roster.set_logout_pending(agent, true),
            AgentState::Reserved { call } => {
                self.return_to_line(&call);
                events.push(Event::OfferRevoked {
                    call,
                    agent: agent.to_owned(),
                    reason: RevokeReason::AgentGone,
                });
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

    fn enqueue(
        &mut self,
        call: String,
        queue: String,
        caller: String,
        dialled: String,
        now: Millis,
    ) -> Result<(), RoutingError> {
        if self.calls.contains_key(&call) {
            return Err(RoutingError::DuplicateCall(call));
        }
        if self.calls.len() >= self.limits.calls_max {
            return Err(RoutingError::LimitReached {
                what: "the number of live calls (calls_max)",
                max: self.limits.calls_max,
            });
        }
        let Some(line) = self.queues.get_mut(&queue) else {
            return Err(RoutingError::UnknownQueue(queue));
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        line.insert(Waiting {
            seq,
            call: call.clone(),
            arrived_at: now,
        });
        self.calls.insert(
            call,
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
            },
        );
        self.totals.entered += 1;
        Ok(())
    }

    fn abandon(
        &mut self,
        call_id: &str,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        let call = self.call(call_id)?;
        let (state, queue, seq) = (call.state.clone(), call.queue.clone(), call.seq);
        let position = match state {
            CallState::Waiting => self.queues.get_mut(&queue).and_then(|line| {
                let position = line.position(seq);
                line.remove(seq);
                position
            }),
            // Being offered is being at the front of the line.
            CallState::Offered { agent, .. } => {
                self.revoke_to_ready(call_id, &agent, now, events);
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
        if let Some(call) = self.calls.get_mut(call_id) {
            call.state = CallState::Connected {
                agent: agent.to_owned(),
                answered_at: now,
            };
        }
        events.push(Event::Connected {
            call: call_id.to_owned(),
            agent: agent.to_owned(),
        });
        let state = AgentState::OnCall {
            call: call_id.to_owned(),
        };
        self.set_agent(agent, state, 0, events);
        Ok(())
    }

    fn offer_failed(
        &mut self,
        call_id: &str,
        agent: &str,
        failure: OfferFailure,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        self.check_offered_to(call_id, agent, "fail an offer")?;
        self.return_to_line(call_id);
        let reason = failure.reason_code().to_owned();
        self.set_agent(agent, AgentState::NotReady { reason }, 0, events);
        Ok(())
    }

    fn ended(
        &mut self,
        call_id: &str,
        by: Party,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        let call = self.call(call_id)?;
        let CallState::Connected { agent, .. } = &call.state else {
            return Err(RoutingError::CallInvalidState {
                call: call_id.to_owned(),
                state: call.state.name(),
                action: "end (only a connected call ends; use Abandon or Lost)",
            });
        };
        let (agent, queue) = (agent.clone(), call.queue.clone());
        self.after_call(&agent, &queue, now, events);
        self.finish(call_id, Ending::Answered { by }, now, events);
        Ok(())
    }

    fn lost(
        &mut self,
        call_id: &str,
        cause: String,
        now: Millis,
        events: &mut Vec<Event>,
    ) -> Result<(), RoutingError> {
        let call = self.call(call_id)?;
        let (state, queue, seq) = (call.state.clone(), call.queue.clone(), call.seq);
        match state {
            CallState::Waiting => {
                if let Some(line) = self.queues.get_mut(&queue) {
                    line.remove(seq);
                }
            }
            CallState::Offered { agent, .. } => self.revoke_to_ready(call_id, &agent, now, events),
            CallState::Connected { agent, .. } => self.after_call(&agent, &queue, now, events),
        }
        self.finish(call_id, Ending::Lost { cause }, now, events);
        Ok(())
    }

    /// Fires due ring timeouts (oldest deadline first), then due wrap-up ends.
    fn tick(&mut self, now: Millis, events: &mut Vec<Event>) {
        let mut due: Vec<(Millis, String, String)> = self
            .calls
            .iter()
            .filter_map(|(id, call)| match &call.state {
                CallState::Offered {
                    agent,
                    ring_deadline,
                    ..
                } if *ring_deadline <= now => Some((*ring_deadline, id.clone(), agent.clone())),
                _ => None,
            })
            .collect();
        due.sort();
        for (_, call, agent) in due {
            self.return_to_line(&call);
            events.push(Event::OfferRevoked {
                call,
                agent: agent.clone(),
                reason: RevokeReason::RingTimeout,
            });
            let state = AgentState::NotReady {
                reason: OfferFailure::NoAnswer.reason_code().to_owned(),
            };
            self.set_agent(&agent, state, 0, events);
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
    }

    /// Offers head-of-line calls to agents until no pair is left. Heads are served oldest
    /// arrival first across queues, so when one agent could take several queues' heads the
    /// call that arrived first gets them. A queue whose head finds no agent is skipped for
    /// the rest of the pass: its other calls need the same skill, and agents only get
    /// taken during a pass, never freed.
    fn match_calls(&mut self, now: Millis, events: &mut Vec<Event>) {
        let mut heads: BTreeSet<(u64, String)> = self
            .queues
            .iter()
            .filter_map(|(name, q)| Some((q.head()?.seq, name.clone())))
            .collect();
        while let Some((_, name)) = heads.pop_first() {
            let Some(queue) = self.queues.get_mut(&name) else {
                continue;
            };
            let Some(agent) = strategy::longest_idle(&self.roster, &queue.config.skill) else {
                continue;
            };
            let agent = agent.to_owned();
            let ring_timeout_ms = queue.config.ring_timeout_ms;
            let Some(head) = queue.pop_head() else {
                continue;
            };
            if let Some(next) = queue.head() {
                heads.insert((next.seq, name));
            }
            self.offer(head.call, agent, ring_timeout_ms, now, events);
        }
    }

    fn offer(
        &mut self,
        call_id: String,
        agent: String,
        ring_timeout_ms: u64,
        now: Millis,
        events: &mut Vec<Event>,
    ) {
        if let Some(call) = self.calls.get_mut(&call_id) {
            call.state = CallState::Offered {
                agent: agent.clone(),
                offered_at: now,
                ring_deadline: now.saturating_add(ring_timeout_ms),
            };
            call.first_offered_at.get_or_insert(now);
            call.offers = call.offers.saturating_add(1);
            call.last_agent = Some(agent.clone());
        }
        events.push(Event::Offered {
            call: call_id.clone(),
            agent: agent.clone(),
            ring_timeout_ms,
        });
        self.set_agent(&agent, AgentState::Reserved { call: call_id }, 0, events);
    }

    /// Puts an offered call back in its line, ahead of everyone who arrived after it.
    fn return_to_line(&mut self, call_id: &str) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        call.state = CallState::Waiting;
        if let Some(queue) = self.queues.get_mut(&call.queue) {
            queue.insert(Waiting {
                seq: call.seq,
                call: call_id.to_owned(),
                arrived_at: call.arrived_at,
            });
        }
    }

    /// The caller left while `agent` was ringing: cancel the agent leg; the agent is free.
    fn revoke_to_ready(&mut self, call: &str, agent: &str, now: Millis, events: &mut Vec<Event>) {
        events.push(Event::OfferRevoked {
            call: call.to_owned(),
            agent: agent.to_owned(),
            reason: RevokeReason::CallerGone,
        });
        self.set_agent(agent, AgentState::Ready, now, events);
    }

    /// The agent's call ended: log out if their phone went away, else wrap up.
    fn after_call(&mut self, agent: &str, queue: &str, now: Millis, events: &mut Vec<Event>) {
        let pending = self.roster.get(agent).is_some_and(|a| a.logout_pending);
        let wrapup_ms = self.queues.get(queue).map_or(0, |q| q.config.wrapup_ms);
        if pending {
            self.set_agent(agent, AgentState::LoggedOut, 0, events);
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
        match ending {
            Ending::Answered { .. } => self.totals.answered += 1,
            Ending::Abandoned { .. } => self.totals.abandoned += 1,
            Ending::Lost { .. } => self.totals.lost += 1,
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

    /// The call must be ringing exactly this agent.
    fn check_offered_to(
        &self,
        call_id: &str,
        agent: &str,
        action: &'static str,
    ) -> Result<(), RoutingError> {
        let call = self.call(call_id)?;
        match &call.state {
            CallState::Offered { agent: a, .. } if a == agent => Ok(()),
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
        } = self;
        now.canon(h);
        next_seq.canon(h);
        limits.canon(h);
        queues.canon(h);
        roster.canon(h);
        calls.canon(h);
        totals.canon(h);
    }
}

#[cfg(test)]
#[path = "acd_test.rs"]
mod tests;
