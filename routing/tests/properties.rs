//! Property tests over random command sequences, checking DESIGN.md's invariants from the
//! outside (through the events the node would see) and from the inside
//! (`Acd::check_invariants`):
//! - no agent is offered or connected to two calls at once (nodes going down and up
//!   included);
//! - within a queue, calls are offered in arrival order and wait in arrival order;
//! - every call that entered ends with exactly one terminal record;
//! - the same command log gives the same state and `state_hash`;
//! - a refused command leaves the state unchanged.

use std::collections::{BTreeMap, BTreeSet};

use carillon_routing::{
    Acd, AgentState, Arrival, Command, EscalationStep, Event, ExitAction, ForcedState, Millis,
    NodeId, OfferFailure, Party, QueueConfig, RoutingError, RoutingSettings, Strategy as Pick, Vip,
};
use proptest::prelude::*;

const AGENTS: [&str; 4] = ["a0", "a1", "a2", "a3"];
const QUEUES: [&str; 3] = ["q0", "q1", "q-unknown"];
const SKILLS: [&str; 3] = ["s0", "s1", "s2"];
const CALLS: usize = 10;
/// Nodes 1 and 2 at `hq`, node 3 at `branch`.
const NODES: [(NodeId, &str); 3] = [(1, "hq"), (2, "hq"), (3, "branch")];

/// A step before it is turned into a command. Some steps pick among the offers and calls
/// that exist at that moment, so that sequences reach deep states instead of bouncing off
/// errors; the raw variants still exercise the error paths.
#[derive(Clone, Debug)]
enum Op {
    Configure {
        queue: usize,
        skill: usize,
        wrapup_ms: u64,
        ring_timeout_ms: u64,
        local_wait_ms: u64,
        rules: QueueRules,
    },
    Routing {
        missed_offers_max: u32,
        fairness: bool,
        affinity: bool,
    },
    SetVip {
        caller: usize,
        agent: usize,
        clear: bool,
    },
    Callback {
        call: usize,
    },
    CallbackNoAnswer {
        pick: usize,
    },
    Force {
        agent: usize,
        state: u8,
    },
    SetSkills {
        agent: usize,
        skills: u8,
    },
    Login {
        agent: usize,
        skills: u8,
        node: usize,
    },
    Logout {
        agent: usize,
    },
    Ready {
        agent: usize,
    },
    NotReady {
        agent: usize,
        reason: usize,
    },
    Enqueue {
        call: usize,
        queue: usize,
        node: usize,
        priority: u32,
        caller: usize,
    },
    Lease {
        node: usize,
    },
    Abandon {
        call: usize,
    },
    AnswerOffer {
        pick: usize,
    },
    FailOffer {
        pick: usize,
        failure: OfferFailure,
    },
    EndConnected {
        pick: usize,
        by: Party,
    },
    RawConnected {
        call: usize,
        agent: usize,
    },
    RawEnded {
        call: usize,
    },
    Lost {
        call: usize,
    },
    Tick,
}

/// Issue 4's per-queue rules, as the generator draws them.
#[derive(Clone, Debug)]
struct QueueRules {
    strategy: usize,
    min_level: u8,
    escalate: bool,
    max_wait_ms: u64,
    queue_len_max: usize,
    overflow_after_ms: u64,
    overflow_when_no_agents: bool,
}

const STRATEGIES: [Pick; 7] = [
    Pick::LongestIdle,
    Pick::RoundRobin,
    Pick::FewestCalls,
    Pick::LeastTalkTime,
    Pick::TopDown,
    Pick::Random,
    Pick::RingAll,
];

/// `rich` adds the rules that may hold a call back out of line order (local waits,
/// escalation, VIPs, affinity, callbacks).
fn queue_rules(rich: bool) -> impl Strategy<Value = QueueRules> {
    (
        0..STRATEGIES.len(),
        prop_oneof![Just(0u8), Just(5)],
        prop::bool::weighted(if rich { 0.5 } else { 0.0 }),
        prop_oneof![3 => Just(0u64), 1 => Just(4_000)],
        prop_oneof![3 => Just(0usize), 1 => Just(3)],
        prop_oneof![3 => Just(0u64), 1 => Just(2_000)],
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(
                strategy,
                min_level,
                escalate,
                max_wait_ms,
                queue_len_max,
                overflow_after_ms,
                overflow_when_no_agents,
            )| {
                QueueRules {
                    strategy,
                    min_level,
                    escalate,
                    max_wait_ms,
                    queue_len_max,
                    overflow_after_ms,
                    overflow_when_no_agents,
                }
            },
        )
}

fn op(rich: bool) -> impl Strategy<Value = Op> {
    let local_waits: &'static [u64] = if rich { &[0, 1_000, 60_000] } else { &[0] };
    // Without `rich`, those rules' ops become ticks.
    let only_rich = move |op: Op| if rich { op } else { Op::Tick };
    let agent = 0..AGENTS.len();
    let call = 0..CALLS;
    let failure = prop_oneof![
        Just(OfferFailure::NoAnswer),
        Just(OfferFailure::Rejected),
        Just(OfferFailure::Unreachable)
    ];
    let party = prop_oneof![Just(Party::Caller), Just(Party::Agent), Just(Party::System)];
    prop_oneof![
        1 => (0..2usize, 0..SKILLS.len(), prop_oneof![Just(0u64), Just(300)], prop_oneof![Just(500u64), Just(1_000)], prop::sample::select(local_waits), queue_rules(rich))
            .prop_map(|(queue, skill, wrapup_ms, ring_timeout_ms, local_wait_ms, rules)| Op::Configure { queue, skill, wrapup_ms, ring_timeout_ms, local_wait_ms, rules }),
        1 => (1u32..4, any::<bool>(), prop::bool::weighted(if rich { 0.5 } else { 0.0 }))
            .prop_map(|(missed_offers_max, fairness, affinity)| Op::Routing { missed_offers_max, fairness, affinity }),
        1 => (0..4usize, agent.clone(), any::<bool>()).prop_map(move |(caller, agent, clear)| only_rich(Op::SetVip { caller, agent, clear })),
        2 => call.clone().prop_map(move |call| only_rich(Op::Callback { call })),
        2 => any::<usize>().prop_map(move |pick| only_rich(Op::CallbackNoAnswer { pick })),
        1 => (agent.clone(), 0u8..3).prop_map(|(agent, state)| Op::Force { agent, state }),
        1 => (agent.clone(), 0u8..8).prop_map(|(agent, skills)| Op::SetSkills { agent, skills }),
        3 => (agent.clone(), 0u8..8, 0..NODES.len()).prop_map(|(agent, skills, node)| Op::Login { agent, skills, node }),
        1 => agent.clone().prop_map(|agent| Op::Logout { agent }),
        2 => agent.clone().prop_map(|agent| Op::Ready { agent }),
        1 => (agent.clone(), 0..2usize).prop_map(|(agent, reason)| Op::NotReady { agent, reason }),
        5 => (call.clone(), 0..QUEUES.len(), 0..NODES.len(), 0u32..3, 0..4usize)
            .prop_map(|(call, queue, node, priority, caller)| Op::Enqueue { call, queue, node, priority, caller }),
        3 => (0..NODES.len()).prop_map(|node| Op::Lease { node }),
        2 => call.clone().prop_map(|call| Op::Abandon { call }),
        4 => any::<usize>().prop_map(|pick| Op::AnswerOffer { pick }),
        2 => (any::<usize>(), failure).prop_map(|(pick, failure)| Op::FailOffer { pick, failure }),
        3 => (any::<usize>(), party).prop_map(|(pick, by)| Op::EndConnected { pick, by }),
        1 => (call.clone(), agent).prop_map(|(call, agent)| Op::RawConnected { call, agent }),
        1 => call.clone().prop_map(|call| Op::RawEnded { call }),
        1 => call.prop_map(|call| Op::Lost { call }),
        3 => Just(Op::Tick),
    ]
}

/// (op, time step in ms, whether the command's clock lags behind: clamping must cope).
fn steps(rich: bool) -> impl Strategy<Value = Vec<(Op, u64, bool)>> {
    prop::collection::vec((op(rich), 0u64..700, prop::bool::weighted(0.1)), 1..150)
}

fn call_id(i: usize) -> String {
    format!("c{i}")
}

/// Calls tied to agents right now, as (call, agent), filtered by state kind.
fn tied(acd: &Acd, on_call: bool) -> Vec<(String, String)> {
    AGENTS
        .iter()
        .filter_map(|agent| match acd.agent_state(agent)? {
            AgentState::Reserved { call } if !on_call => Some((call.clone(), (*agent).into())),
            AgentState::OnCall { call } if on_call => Some((call.clone(), (*agent).into())),
            _ => None,
        })
        .collect()
}

fn resolve(acd: &Acd, op: Op, at: Millis) -> Command {
    match op {
        Op::Configure {
            queue,
            skill,
            wrapup_ms,
            ring_timeout_ms,
            local_wait_ms,
            rules,
        } => {
            let other = QUEUES[1 - queue].to_owned();
            let overflow = rules.overflow_after_ms > 0 || rules.overflow_when_no_agents;
            Command::ConfigureQueue {
                queue: QueueConfig {
                    name: QUEUES[queue].into(),
                    skill: SKILLS[skill].into(),
                    wrapup_ms,
                    ring_timeout_ms,
                    local_wait_ms,
                    strategy: STRATEGIES[rules.strategy],
                    agent_order: vec!["a2".into(), "a0".into()],
                    min_level: rules.min_level,
                    escalation: if rules.escalate {
                        vec![EscalationStep {
                            after_ms: 1_500,
                            min_level: 1,
                        }]
                    } else {
                        Vec::new()
                    },
                    max_wait_ms: rules.max_wait_ms,
                    max_wait_action: ExitAction::Voicemail {
                        mailbox: "box".into(),
                    },
                    queue_len_max: rules.queue_len_max,
                    queue_full_action: ExitAction::Queue {
                        queue: other.clone(),
                    },
                    overflow_after_ms: rules.overflow_after_ms,
                    overflow_when_no_agents: rules.overflow_when_no_agents,
                    overflow_to: if overflow { other } else { String::new() },
                    callback_attempts_max: 2,
                    callback_gap_ms: 1_000,
                    ..QueueConfig::default()
                },
                at,
            }
        }
        Op::Routing {
            missed_offers_max,
            fairness,
            affinity,
        } => Command::ConfigureRouting {
            settings: RoutingSettings {
                missed_offers_max,
                fairness,
                affinity_days: u32::from(affinity),
                affinity_wait_ms: if affinity { 1_000 } else { 0 },
                affinity_callers_max: 3,
            },
            at,
        },
        Op::SetVip {
            caller,
            agent,
            clear,
        } => Command::SetVip {
            caller: format!("+1555{caller}"),
            vip: (!clear).then(|| Vip {
                agent: AGENTS[agent].into(),
                wait_ms: 1_500,
                priority: 2,
            }),
            at,
        },
        Op::Callback { call } => Command::RequestCallback {
            call: call_id(call),
            number: "+1666".into(),
            at,
        },
        Op::CallbackNoAnswer { pick } => match pick_one(tied(acd, true), pick) {
            Some((call, _)) => Command::CallbackNoAnswer { call, at },
            None => Command::Tick { at },
        },
        Op::Force { agent, state } => Command::ForceAgentState {
            agent: AGENTS[agent].into(),
            state: match state {
                0 => ForcedState::Ready,
                1 => ForcedState::NotReady {
                    reason: "supervisor".into(),
                },
                _ => ForcedState::LoggedOut,
            },
            at,
        },
        Op::SetSkills { agent, skills } => Command::SetAgentSkills {
            agent: AGENTS[agent].into(),
            skills: skill_list(skills),
            at,
        },
        Op::Login {
            agent,
            skills,
            node,
        } => Command::AgentLogin {
            agent: AGENTS[agent].into(),
            skills: skill_list(skills),
            node: NODES[node].0,
            site: NODES[node].1.into(),
            at,
        },
        Op::Logout { agent } => Command::AgentLogout {
            agent: AGENTS[agent].into(),
            at,
        },
        Op::Ready { agent } => Command::AgentReady {
            agent: AGENTS[agent].into(),
            at,
        },
        Op::NotReady { agent, reason } => Command::AgentNotReady {
            agent: AGENTS[agent].into(),
            reason: ["break", "lunch"][reason].into(),
            at,
        },
        Op::Enqueue {
            call,
            queue,
            node,
            priority,
            caller,
        } => Command::Enqueue(Arrival {
            call: call_id(call),
            queue: QUEUES[queue].into(),
            caller: format!("+1555{caller}"),
            priority,
            dialled: "100".into(),
            owner: NODES[node].0,
            site: NODES[node].1.into(),
            at,
            ..Arrival::default()
        }),
        Op::Lease { node } => Command::NodeLease {
            node: NODES[node].0,
            site: NODES[node].1.into(),
            at,
        },
        Op::Abandon { call } => Command::Abandon {
            call: call_id(call),
            at,
        },
        Op::AnswerOffer { pick } => match pick_one(tied(acd, false), pick) {
            Some((call, agent)) => Command::Connected { call, agent, at },
            None => Command::Tick { at },
        },
        Op::FailOffer { pick, failure } => match pick_one(tied(acd, false), pick) {
            Some((call, agent)) => Command::OfferFailed {
                call,
                agent,
                failure,
                at,
            },
            None => Command::Tick { at },
        },
        Op::EndConnected { pick, by } => match pick_one(tied(acd, true), pick) {
            Some((call, _)) => Command::Ended { call, by, at },
            None => Command::Tick { at },
        },
        Op::RawConnected { call, agent } => Command::Connected {
            call: call_id(call),
            agent: AGENTS[agent].into(),
            at,
        },
        Op::RawEnded { call } => Command::Ended {
            call: call_id(call),
            by: Party::Caller,
            at,
        },
        Op::Lost { call } => Command::Lost {
            call: call_id(call),
            cause: "media-failure".into(),
            at,
        },
        Op::Tick => Command::Tick { at },
    }
}

/// Skills from a bit mask, with levels so queue minimum levels matter.
fn skill_list(mask: u8) -> Vec<String> {
    SKILLS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(i, s)| format!("{s}:{}", 3 + 3 * i))
        .collect()
}

fn pick_one<T>(mut items: Vec<T>, pick: usize) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        let i = pick % items.len();
        Some(items.swap_remove(i))
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Status {
    Waiting,
    /// Ringing these agents (several for ring-all).
    Offered(BTreeSet<String>),
    Connected(String),
}

#[derive(Debug)]
struct Seen {
    queue: String,
    arrival: u64,
    priority: u32,
    status: Status,
}

/// What the node would know, rebuilt from commands and events only.
#[derive(Default)]
struct Observer {
    /// Check that each queue offers in line order, priority first (off when a rule may
    /// hold a call back: local waits, escalation, VIP, callbacks).
    strict_order: bool,
    live: BTreeMap<String, Seen>,
    busy: BTreeMap<String, String>,
    arrivals: u64,
    entered: BTreeMap<String, u32>,
    finished: BTreeMap<String, u32>,
}

impl Observer {
    /// One agent's offer of `call` is over; the last one out puts the call back in line.
    fn drop_offer(&mut self, call: &str, agent: &str) {
        if self.busy.get(agent).map(String::as_str) == Some(call) {
            self.busy.remove(agent);
        }
        if let Some(seen) = self.live.get_mut(call) {
            if let Status::Offered(agents) = &mut seen.status {
                agents.remove(agent);
                if agents.is_empty() {
                    seen.status = Status::Waiting;
                }
            }
        }
    }

    fn offered(&mut self, call: &str, agent: &str) -> Result<(), String> {
        if let Some(other) = self.busy.get(agent) {
            return Err(format!("{agent} offered {call} while tied to {other}"));
        }
        let seen = self
            .live
            .get(call)
            .ok_or(format!("offer of unknown {call}"))?;
        match &seen.status {
            Status::Waiting => {
                let ahead = self.live.iter().find(|(_, s)| {
                    s.queue == seen.queue
                        && s.status == Status::Waiting
                        && (s.priority > seen.priority
                            || (s.priority == seen.priority && s.arrival < seen.arrival))
                });
                if let Some((ahead, _)) = ahead.filter(|_| self.strict_order) {
                    return Err(format!("{call} offered before {ahead}, ahead in line"));
                }
            }
            // Ring-all: several offers of one call in one pass.
            Status::Offered(_) => {}
            Status::Connected(_) => return Err(format!("{call} offered while connected")),
        }
        self.busy.insert(agent.to_owned(), call.to_owned());
        if let Some(seen) = self.live.get_mut(call) {
            match &mut seen.status {
                Status::Offered(agents) => {
                    agents.insert(agent.to_owned());
                }
                status => *status = Status::Offered(BTreeSet::from([agent.to_owned()])),
            }
        }
        Ok(())
    }

    /// Takes in one applied command and its events; `Err` names a broken invariant.
    fn observe(&mut self, cmd: &Command, events: &[Event]) -> Result<(), String> {
        match cmd {
            Command::Enqueue(Arrival {
                call,
                queue,
                priority,
                ..
            }) => {
                self.arrivals += 1;
                self.live.insert(
                    call.clone(),
                    Seen {
                        queue: queue.clone(),
                        arrival: self.arrivals,
                        priority: *priority,
                        status: Status::Waiting,
                    },
                );
                *self.entered.entry(call.clone()).or_default() += 1;
            }
            Command::OfferFailed { call, agent, .. } => self.drop_offer(call, agent),
            Command::CallbackNoAnswer { call, .. } => {
                self.busy.retain(|_, c| c != call);
                if let Some(seen) = self.live.get_mut(call) {
                    seen.status = Status::Waiting;
                }
            }
            _ => {}
        }
        for event in events {
            match event {
                Event::Offered { call, agent, .. } | Event::CallbackOffered { call, agent, .. } => {
                    self.offered(call, agent)?
                }
                Event::OfferRevoked { call, agent, .. } => self.drop_offer(call, agent),
                Event::Connected { call, agent } => {
                    let seen = self
                        .live
                        .get_mut(call)
                        .ok_or(format!("connect of unknown {call}"))?;
                    let ringing = matches!(&seen.status, Status::Offered(a) if a.len() == 1 && a.contains(agent));
                    if !ringing {
                        return Err(format!(
                            "{call} connected to {agent} while {:?}",
                            seen.status
                        ));
                    }
                    seen.status = Status::Connected(agent.clone());
                }
                Event::CallFinished(record) => {
                    if self.live.remove(&record.call).is_none() {
                        return Err(format!("record for {} which is not live", record.call));
                    }
                    self.busy.retain(|_, c| *c != record.call);
                    *self.finished.entry(record.call.clone()).or_default() += 1;
                }
                Event::CallMoved { call, to, .. } => {
                    if let Some(seen) = self.live.get_mut(call) {
                        seen.queue.clone_from(to);
                    }
                }
                Event::AgentStateChanged { .. }
                | Event::NodeDown { .. }
                | Event::NodeUp { .. }
                | Event::CallExited { .. } => {}
            }
        }
        Ok(())
    }

    /// The ACD agrees with what the events said, and lines are in order: priority first,
    /// then arrival.
    fn compare(&mut self, acd: &Acd) -> Result<(), String> {
        for (agent, call) in &self.busy {
            let state = acd.agent_state(agent);
            if state.and_then(AgentState::call) != Some(call.as_str()) {
                return Err(format!("{agent} should be tied to {call}, is {state:?}"));
            }
        }
        for (call, seen) in self.live.iter_mut() {
            // VIP waits raise priorities inside the ACD.
            seen.priority = acd.call_priority(call).ok_or(format!("{call} not live"))?;
        }
        for queue in QUEUES {
            let mut line: Vec<(std::cmp::Reverse<u32>, &u64, &String)> = self
                .live
                .iter()
                .filter(|(_, s)| s.queue == queue && s.status == Status::Waiting)
                .map(|(call, s)| (std::cmp::Reverse(s.priority), &s.arrival, call))
                .collect();
            line.sort();
            for (i, (_, _, call)) in line.iter().enumerate() {
                let expected = u32::try_from(i + 1).ok();
                if acd.waiting_position(call) != expected {
                    return Err(format!(
                        "{call} in {queue}: position {:?}, expected {expected:?}",
                        acd.waiting_position(call)
                    ));
                }
            }
            if acd.queue_depth(queue) != line.len() {
                return Err(format!(
                    "{queue} depth {} != {}",
                    acd.queue_depth(queue),
                    line.len()
                ));
            }
        }
        Ok(())
    }
}

fn setup() -> Vec<Command> {
    ["q0", "q1"]
        .iter()
        .zip(["s0", "s1"])
        .map(|(name, skill)| Command::ConfigureQueue {
            queue: QueueConfig {
                name: (*name).into(),
                skill: skill.into(),
                wrapup_ms: 300,
                ring_timeout_ms: 1_000,
                ..QueueConfig::default()
            },
            at: 0,
        })
        .collect()
}

type Outcome = Result<Vec<Event>, RoutingError>;

/// An ACD under test, the observer that cross-checks it, and the log applied so far.
struct Harness {
    acd: Acd,
    observer: Observer,
    log: Vec<Command>,
    outcomes: Vec<Outcome>,
}

impl Harness {
    /// Applies one command and checks every invariant afterwards.
    fn apply(&mut self, cmd: Command) -> Result<(), TestCaseError> {
        let before = self.acd.clone();
        let outcome = self.acd.apply(cmd.clone());
        let fail = |e: String| TestCaseError::fail(format!("after {cmd:?}: {e}"));
        match &outcome {
            Ok(events) => self.observer.observe(&cmd, events).map_err(fail)?,
            Err(_) => prop_assert_eq!(&before, &self.acd, "refused {:?} changed the state", cmd),
        }
        self.acd.check_invariants().map_err(fail)?;
        self.observer.compare(&self.acd).map_err(fail)?;
        self.log.push(cmd);
        self.outcomes.push(outcome);
        Ok(())
    }
}

/// Runs the steps, checking every invariant after every command, then loses every call
/// still live so that each call that entered must have exactly one record. Returns the
/// applied log and its outcomes.
fn run(
    steps: Vec<(Op, u64, bool)>,
    strict_order: bool,
) -> Result<(Vec<Command>, Vec<Outcome>), TestCaseError> {
    let mut h = Harness {
        acd: Acd::new(),
        observer: Observer {
            strict_order,
            ..Observer::default()
        },
        log: Vec::new(),
        outcomes: Vec::new(),
    };
    for cmd in setup() {
        h.apply(cmd)?;
    }
    let mut clock: Millis = 0;
    for (op, dt_ms, lagging) in steps {
        clock += dt_ms;
        let at = if lagging {
            clock.saturating_sub(2_000)
        } else {
            clock
        };
        let cmd = resolve(&h.acd, op, at);
        h.apply(cmd)?;
    }
    let live: Vec<String> = h.observer.live.keys().cloned().collect();
    for call in live {
        let cause = "test-end".into();
        h.apply(Command::Lost {
            call,
            cause,
            at: clock,
        })?;
    }
    prop_assert!(
        h.observer.live.is_empty(),
        "calls still live: {:?}",
        h.observer.live
    );
    prop_assert_eq!(&h.observer.entered, &h.observer.finished);
    let totals = h.acd.stats().totals;
    let entered: u32 = h.observer.entered.values().sum();
    prop_assert_eq!(totals.entered, u64::from(entered));
    prop_assert_eq!(
        totals.entered,
        totals.answered + totals.abandoned + totals.lost + totals.exited
    );
    Ok((h.log, h.outcomes))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_over_random_command_sequences(steps in steps(false)) {
        run(steps, true)?;
    }

    #[test]
    fn invariants_hold_with_every_rule(steps in steps(true)) {
        run(steps, false)?;
    }

    #[test]
    fn the_same_log_gives_the_same_state(steps in steps(true)) {
        let (log, outcomes) = run(steps, false)?;
        let mut first = Acd::new();
        let mut second = Acd::new();
        for (cmd, expected) in log.iter().zip(&outcomes) {
            let a = first.apply(cmd.clone());
            let b = second.apply(cmd.clone());
            prop_assert_eq!(&a, expected);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(first.state_hash(), second.state_hash());
        }
        prop_assert_eq!(&first, &second);
    }
}
