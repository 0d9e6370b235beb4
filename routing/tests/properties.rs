//! Property tests over random command sequences, checking DESIGN.md's invariants from the
//! outside (through the events the node would see) and from the inside
//! (`Acd::check_invariants`):
//! - no agent is offered or connected to two calls at once;
//! - within a queue, calls are offered in arrival order and wait in arrival order;
//! - every call that entered ends with exactly one terminal record;
//! - the same command log gives the same state and `state_hash`;
//! - a refused command leaves the state unchanged.

use std::collections::BTreeMap;

use carillon_routing::{
    Acd, AgentState, Command, Event, Millis, OfferFailure, Party, QueueConfig, RoutingError,
};
use proptest::prelude::*;

const AGENTS: [&str; 4] = ["a0", "a1", "a2", "a3"];
const QUEUES: [&str; 3] = ["q0", "q1", "q-unknown"];
const SKILLS: [&str; 3] = ["s0", "s1", "s2"];
const CALLS: usize = 10;

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
    },
    Login {
        agent: usize,
        skills: u8,
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

fn op() -> impl Strategy<Value = Op> {
    let agent = 0..AGENTS.len();
    let call = 0..CALLS;
    let failure = prop_oneof![
        Just(OfferFailure::NoAnswer),
        Just(OfferFailure::Rejected),
        Just(OfferFailure::Unreachable)
    ];
    let party = prop_oneof![Just(Party::Caller), Just(Party::Agent), Just(Party::System)];
    prop_oneof![
        1 => (0..2usize, 0..SKILLS.len(), prop_oneof![Just(0u64), Just(300)], prop_oneof![Just(500u64), Just(1_000)])
            .prop_map(|(queue, skill, wrapup_ms, ring_timeout_ms)| Op::Configure { queue, skill, wrapup_ms, ring_timeout_ms }),
        3 => (agent.clone(), 0u8..8).prop_map(|(agent, skills)| Op::Login { agent, skills }),
        1 => agent.clone().prop_map(|agent| Op::Logout { agent }),
        2 => agent.clone().prop_map(|agent| Op::Ready { agent }),
        1 => (agent.clone(), 0..2usize).prop_map(|(agent, reason)| Op::NotReady { agent, reason }),
        5 => (call.clone(), 0..QUEUES.len()).prop_map(|(call, queue)| Op::Enqueue { call, queue }),
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
fn steps() -> impl Strategy<Value = Vec<(Op, u64, bool)>> {
    prop::collection::vec((op(), 0u64..700, prop::bool::weighted(0.1)), 1..150)
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
        } => Command::ConfigureQueue {
            queue: QueueConfig {
                name: QUEUES[queue].into(),
                skill: SKILLS[skill].into(),
                wrapup_ms,
                ring_timeout_ms,
            },
            at,
        },
        Op::Login { agent, skills } => Command::AgentLogin {
            agent: AGENTS[agent].into(),
            skills: SKILLS
                .iter()
                .enumerate()
                .filter(|(i, _)| skills & (1 << i) != 0)
                .map(|(_, s)| (*s).to_owned())
                .collect(),
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
        Op::Enqueue { call, queue } => Command::Enqueue {
            call: call_id(call),
            queue: QUEUES[queue].into(),
            caller: format!("+1555{call}"),
            dialled: "100".into(),
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
    Offered(String),
    Connected(String),
}

#[derive(Debug)]
struct Seen {
    queue: String,
    arrival: u64,
    status: Status,
}

/// What the node would know, rebuilt from commands and events only.
#[derive(Default)]
struct Observer {
    live: BTreeMap<String, Seen>,
    busy: BTreeMap<String, String>,
    arrivals: u64,
    entered: BTreeMap<String, u32>,
    finished: BTreeMap<String, u32>,
}

impl Observer {
    fn free(&mut self, call: &str) {
        self.busy.retain(|_, c| c != call);
    }

    fn back_to_line(&mut self, call: &str) {
        if let Some(seen) = self.live.get_mut(call) {
            seen.status = Status::Waiting;
        }
        self.free(call);
    }

    /// Takes in one applied command and its events; `Err` names a broken invariant.
    fn observe(&mut self, cmd: &Command, events: &[Event]) -> Result<(), String> {
        match cmd {
            Command::Enqueue { call, queue, .. } => {
                self.arrivals += 1;
                self.live.insert(
                    call.clone(),
                    Seen {
                        queue: queue.clone(),
                        arrival: self.arrivals,
                        status: Status::Waiting,
                    },
                );
                *self.entered.entry(call.clone()).or_default() += 1;
            }
            Command::OfferFailed { call, .. } => self.back_to_line(call),
            _ => {}
        }
        for event in events {
            match event {
                Event::Offered { call, agent, .. } => {
                    if let Some(other) = self.busy.get(agent) {
                        return Err(format!("{agent} offered {call} while tied to {other}"));
                    }
                    let seen = self
                        .live
                        .get(call)
                        .ok_or(format!("offer of unknown {call}"))?;
                    if seen.status != Status::Waiting {
                        return Err(format!("{call} offered while {:?}", seen.status));
                    }
                    let older = self.live.iter().find(|(_, s)| {
                        s.queue == seen.queue
                            && s.status == Status::Waiting
                            && s.arrival < seen.arrival
                    });
                    if let Some((older, _)) = older {
                        return Err(format!("{call} offered before older {older}"));
                    }
                    self.busy.insert(agent.clone(), call.clone());
                    if let Some(seen) = self.live.get_mut(call) {
                        seen.status = Status::Offered(agent.clone());
                    }
                }
                Event::OfferRevoked { call, .. } => self.back_to_line(call),
                Event::Connected { call, agent } => {
                    let seen = self
                        .live
                        .get_mut(call)
                        .ok_or(format!("connect of unknown {call}"))?;
                    if seen.status != Status::Offered(agent.clone()) {
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
                    self.free(&record.call);
                    *self.finished.entry(record.call.clone()).or_default() += 1;
                }
                Event::AgentStateChanged { .. } => {}
            }
        }
        Ok(())
    }

    /// The ACD agrees with what the events said, and lines are in arrival order.
    fn compare(&self, acd: &Acd) -> Result<(), String> {
        for (agent, call) in &self.busy {
            let state = acd.agent_state(agent);
            if state.and_then(AgentState::call) != Some(call.as_str()) {
                return Err(format!("{agent} should be tied to {call}, is {state:?}"));
            }
        }
        for queue in QUEUES {
            let mut line: Vec<(&u64, &String)> = self
                .live
                .iter()
                .filter(|(_, s)| s.queue == queue && s.status == Status::Waiting)
                .map(|(call, s)| (&s.arrival, call))
                .collect();
            line.sort();
            for (i, (_, call)) in line.iter().enumerate() {
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
fn run(steps: Vec<(Op, u64, bool)>) -> Result<(Vec<Command>, Vec<Outcome>), TestCaseError> {
    let mut h = Harness {
        acd: Acd::new(),
        observer: Observer::default(),
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
        totals.answered + totals.abandoned + totals.lost
    );
    Ok((h.log, h.outcomes))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_over_random_command_sequences(steps in steps()) {
        run(steps)?;
    }

    #[test]
    fn the_same_log_gives_the_same_state(steps in steps()) {
        let (log, outcomes) = run(steps)?;
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
