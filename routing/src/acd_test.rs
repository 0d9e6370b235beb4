//! Unit tests for the ACD: one per routing rule, plus errors, stats and snapshots.

use super::*;
use crate::command::Arrival;
use crate::event::{CallRecord, Disposition};
use crate::queue::EscalationStep;
use crate::schedule::{OpenHours, Schedule};

const RING_MS: u64 = 1_000;

fn configure(acd: &mut Acd, name: &str, skill: &str, wrapup_ms: u64) {
    let queue = QueueConfig {
        name: name.into(),
        skill: skill.into(),
        wrapup_ms,
        ring_timeout_ms: RING_MS,
        ..QueueConfig::default()
    };
    acd.apply(Command::ConfigureQueue { queue, at: 0 })
        .expect("valid queue config");
}

/// One queue `support` (skill `support`, wrap-up 500 ms, ring timeout 1 s).
fn acd() -> Acd {
    let mut acd = Acd::new();
    configure(&mut acd, "support", "support", 500);
    acd
}

fn ok(acd: &mut Acd, cmd: Command) -> Vec<Event> {
    let cmd_text = format!("{cmd:?}");
    let events = acd
        .apply(cmd)
        .unwrap_or_else(|e| panic!("{cmd_text} was refused: {e}"));
    acd.check_invariants()
        .unwrap_or_else(|e| panic!("after {cmd_text}: {e}"));
    events
}

fn login(acd: &mut Acd, agent: &str, skills: &[&str], at: Millis) -> Vec<Event> {
    let skills = skills.iter().map(|s| (*s).to_owned()).collect();
    ok(
        acd,
        Command::AgentLogin {
            agent: agent.into(),
            skills,
            node: 1,
            site: "hq".into(),
            at,
        },
    )
}

fn enqueue(acd: &mut Acd, call: &str, queue: &str, at: Millis) -> Vec<Event> {
    ok(
        acd,
        Command::Enqueue(Arrival {
            call: call.into(),
            queue: queue.into(),
            caller: format!("caller-{call}"),
            dialled: "100".into(),
            owner: 1,
            site: "hq".into(),
            at,
            ..Arrival::default()
        }),
    )
}

fn connect(acd: &mut Acd, call: &str, agent: &str, at: Millis) -> Vec<Event> {
    ok(
        acd,
        Command::Connected {
            call: call.into(),
            agent: agent.into(),
            at,
        },
    )
}

fn end(acd: &mut Acd, call: &str, at: Millis) -> Vec<Event> {
    ok(
        acd,
        Command::Ended {
            call: call.into(),
            by: Party::Caller,
            at,
        },
    )
}

fn tick(acd: &mut Acd, at: Millis) -> Vec<Event> {
    ok(acd, Command::Tick { at })
}

fn offers(events: &[Event]) -> Vec<(&str, &str)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Offered { call, agent, .. } => Some((call.as_str(), agent.as_str())),
            _ => None,
        })
        .collect()
}

fn records(events: &[Event]) -> Vec<&CallRecord> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::CallFinished(record) => Some(record),
            _ => None,
        })
        .collect()
}

fn not_ready(reason: &str) -> AgentState {
    AgentState::NotReady {
        reason: reason.into(),
    }
}

fn reserved(call: &str) -> AgentState {
    AgentState::Reserved { call: call.into() }
}

#[test]
fn longest_idle_agent_gets_the_call_ties_by_id() {
    let mut acd = acd();
    login(&mut acd, "a3", &["support"], 5);
    login(&mut acd, "a2", &["support"], 5);
    login(&mut acd, "a1", &["support"], 10);
    assert_eq!(
        offers(&enqueue(&mut acd, "c1", "support", 20)),
        [("c1", "a2")]
    );
    assert_eq!(
        offers(&enqueue(&mut acd, "c2", "support", 21)),
        [("c2", "a3")]
    );
    assert_eq!(
        offers(&enqueue(&mut acd, "c3", "support", 22)),
        [("c3", "a1")]
    );
    assert!(offers(&enqueue(&mut acd, "c4", "support", 23)).is_empty());
    assert_eq!(acd.queue_depth("support"), 1);
}

#[test]
fn idle_since_is_when_the_agent_last_became_ready() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support"], 10);
    login(&mut acd, "a2", &["support"], 20);
    ok(
        &mut acd,
        Command::AgentNotReady {
            agent: "a1".into(),
            reason: "break".into(),
            at: 30,
        },
    );
    ok(
        &mut acd,
        Command::AgentReady {
            agent: "a1".into(),
            at: 40,
        },
    );
    assert_eq!(
        offers(&enqueue(&mut acd, "c1", "support", 50)),
        [("c1", "a2")]
    );
}

#[test]
fn only_agents_with_the_queue_skill_are_offered() {
    let mut acd = acd();
    configure(&mut acd, "sales", "sales", 0);
    login(&mut acd, "a1", &["sales"], 1);
    assert!(offers(&enqueue(&mut acd, "c1", "support", 2)).is_empty());
    assert_eq!(acd.waiting_position("c1"), Some(1));
    // A re-registration with new skills changes skills only, and the call can now go.
    let events = login(&mut acd, "a1", &["sales", "support"], 3);
    assert_eq!(offers(&events), [("c1", "a1")]);
    assert_eq!(acd.agent_state("a1"), Some(&reserved("c1")));
}

#[test]
fn live_queue_change_keeps_calls_and_uses_the_new_skill() {
    let mut acd = acd();
    login(&mut acd, "a1", &["billing"], 1);
    enqueue(&mut acd, "c1", "support", 2);
    enqueue(&mut acd, "c2", "support", 3);
    let queue = QueueConfig {
        name: "support".into(),
        skill: "billing".into(),
        wrapup_ms: 0,
        ring_timeout_ms: 2_000,
        ..QueueConfig::default()
    };
    let events = ok(&mut acd, Command::ConfigureQueue { queue, at: 4 });
    assert_eq!(
        events.first(),
        Some(&Event::Offered {
            call: "c1".into(),
            agent: "a1".into(),
            ring_timeout_ms: 2_000,
            owner: 1,
            agent_node: 1,
        })
    );
    assert_eq!(acd.waiting_position("c2"), Some(1));
}

#[test]
fn across_queues_the_call_that_arrived_first_is_offered() {
    let mut acd = acd();
    configure(&mut acd, "sales", "sales", 0);
    enqueue(&mut acd, "s1", "sales", 10);
    enqueue(&mut acd, "p1", "support", 20);
    enqueue(&mut acd, "s2", "sales", 30);
    let events = login(&mut acd, "both", &["sales", "support"], 40);
    assert_eq!(offers(&events), [("s1", "both")]);
    // The sales call s2 is younger than support's p1: p1 goes next.
    ok(
        &mut acd,
        Command::OfferFailed {
            call: "s1".into(),
            agent: "both".into(),
            failure: OfferFailure::Rejected,
            at: 41,
        },
    );
    let events = login(&mut acd, "helper", &["support", "sales"], 42);
    assert_eq!(offers(&events), [("s1", "helper")]);
    let events = ok(
        &mut acd,
        Command::AgentReady {
            agent: "both".into(),
            at: 43,
        },
    );
    assert_eq!(offers(&events), [("p1", "both")]);
}

#[test]
fn a_blocked_queue_does_not_stop_other_queues() {
    let mut acd = acd();
    configure(&mut acd, "sales", "sales", 0);
    enqueue(&mut acd, "p1", "support", 10);
    enqueue(&mut acd, "s1", "sales", 20);
    let events = login(&mut acd, "a1", &["sales"], 30);
    assert_eq!(offers(&events), [("s1", "a1")]);
    assert_eq!(acd.waiting_position("p1"), Some(1));
}

#[test]
fn ring_timeout_sends_call_to_head_and_agent_not_ready() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support"], 0);
    enqueue(&mut acd, "c1", "support", 100);
    enqueue(&mut acd, "c2", "support", 200);
    assert!(tick(&mut acd, 100 + RING_MS - 1).is_empty());
    let events = tick(&mut acd, 100 + RING_MS);
    assert_eq!(
        events,
        [
            Event::OfferRevoked {
                call: "c1".into(),
                agent: "a1".into(),
                reason: RevokeReason::RingTimeout
            },
            Event::AgentStateChanged {
                agent: "a1".into(),
                state: not_ready("no-answer")
            },
        ]
    );
    assert_eq!(acd.waiting_position("c1"), Some(1));
    assert_eq!(acd.waiting_position("c2"), Some(2));
    let events = login(&mut acd, "a2", &["support"], 1_200);
    assert_eq!(offers(&events), [("c1", "a2")]);
}

#[test]
fn connected_after_the_deadline_but_before_the_tick_still_connects() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support"], 0);
    enqueue(&mut acd, "c1", "support", 0);
    let events = connect(&mut acd, "c1", "a1", 5 * RING_MS);
    assert!(events.contains(&Event::Connected {
        call: "c1".into(),
        agent: "a1".into()
    }));
    assert!(tick(&mut acd, 6 * RING_MS).is_empty());
}

#[test]
fn offer_failure_sends_call_to_head_and_agent_not_ready_with_reason() {
    for (failure, reason) in [
        (OfferFailure::NoAnswer, "no-answer"),
        (OfferFailure::Rejected, "rejected"),
        (OfferFailure::Unreachable, "unreachable"),
    ] {
        let mut acd = acd();
        login(&mut acd, "a1", &["support"], 0);
        enqueue(&mut acd, "c1", "support", 1);
        enqueue(&mut acd, "c2", "support", 2);
        let events = ok(
            &mut acd,
            Command::OfferFailed {
                call: "c1".into(),
                agent: "a1".into(),
                failure,
                at: 3,
            },
        );
        assert_eq!(acd.agent_state("a1"), Some(&not_ready(reason)));
        assert!(offers(&events).is_empty());
        assert_eq!(acd.waiting_position("c1"), Some(1));
        assert_eq!(acd.waiting_position("c2"), Some(2));
    }
}

#[test]
fn abandon_while_waiting_keeps_wait_and_position() {
    let mut acd = acd();
    enqueue(&mut acd, "c1", "support", 100);
    enqueue(&mut acd, "c2", "support", 200);
    enqueue(&mut acd, "c3", "support", 300);
    let events = ok(
        &mut acd,
        Command::Abandon {
            call: "c2".into(),
            at: 1_000,
        },
    );
    let [record] = records(&events)[..] else {
        panic!("one record expected: {events:?}");
    };
    assert_eq!(record.disposition, Disposition::Abandoned);
    assert_eq!(record.hangup_by, Party::Caller);
    assert_eq!(record.position_at_end, Some(2));
    assert_eq!(record.wait_ms, 800);
    assert_eq!(record.ended_at, 1_000);
    assert_eq!((record.agent.clone(), record.offers), (None, 0));
    assert_eq!(acd.waiting_position("c3"), Some(2));
    assert_eq!(acd.queue_depth("support"), 2);
    assert_eq!(acd.stats().totals.abandoned, 1);
}

#[test]
fn abandon_while_offered_revokes_and_frees_the_agent() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support"], 0);
    login(&mut acd, "a2", &["support"], 50);
    enqueue(&mut acd, "c1", "support", 100);
    let events = ok(
        &mut acd,
        Command::Abandon {
            call: "c1".into(),
            at: 400,
        },
    );
    assert_eq!(
        events[..2],
        [
            Event::OfferRevoked {
                call: "c1".into(),
                agent: "a1".into(),
                reason: RevokeReason::CallerGone
            },
            Event::AgentStateChanged {
                agent: "a1".into(),
                state: AgentState::Ready
            },
        ]
    );
    let record = records(&events)[0];
    assert_eq!(record.agent.as_deref(), Some("a1"));
    assert_eq!(record.offered_at, Some(100));
    assert_eq!((record.offers, record.position_at_end), (1, Some(1)));
    assert_eq!(record.wait_ms, 300);
    // a1 is idle since the abandon (400), so a2 (idle since 50) is now longer idle.
    assert_eq!(
        offers(&enqueue(&mut acd, "c2", "support", 500)),
        [("c2", "a2")]
    );
}

#[test]
fn connected_call_cannot_be_abandoned() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support"], 0);
    enqueue(&mut acd, "c1", "support", 0);
    connect(&mut acd, "c1", "a1", 1);
    let err = acd.apply(Command::Abandon {
        call: "c1".into(),
        at: 2,
    });
    assert!(matches!(err, Err(RoutingError::CallInvalidState { .. })));
}

#[test]
fn answered_call_record_and_wrap_up_then_ready() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support"], 0);
    enqueue(&mut acd, "c1", "support", 100);
    connect(&mut acd, "c1", "a1", 300);
    assert_eq!(
        acd.agent_state("a1"),
        Some(&AgentState::OnCall { call: "c1".into() })
    );
    let events = ok(
        &mut acd,
        Command::Ended {
            call: "c1".into(),
            by: Party::Agent,
            at: 2_000,
        },
    );
    assert_eq!(
        acd.agent_state("a1"),
        Some(&AgentState::WrapUp { until: 2_500 })
    );
    let record = records(&events)[0];
    assert_eq!(record.disposition, Disposition::Answered);
    assert_eq!(record.hangup_by, Party::Agent);
    assert_eq!(record.agent.as_deref(), Some("a1"));
    assert_eq!((record.arrived_at, record.offered_at), (100, Some(100)));
    assert_eq!((record.answered_at, record.ended_at), (Some(300), 2_000));
    assert_eq!((record.wait_ms, record.offers), (200, 1));
    assert_eq!(record.caller, "caller-c1");

    assert!(tick(&mut acd, 2_499).is_empty());
    login(&mut acd, "a2", &["support"], 2_550);
    // Late tick: a1 is idle since the wrap-up end (2500), not the tick (2600), so a1 is
    // longer idle than a2 (2550).
    let events = tick(&mut acd, 2_600);
    assert_eq!(
        events,
        [Event::AgentStateChanged {
            agent: "a1".into(),
            state: AgentState::Ready
        }]
    );
    assert_eq!(
        offers(&enqueue(&mut acd, "c2", "support", 2_700)),
        [("c2", "a1")]
    );
}

#[test]
fn a_call_arriving_during_wrap_up_waits_for_its_end() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support"], 0);
    enqueue(&mut acd, "c1", "support", 0);
    connect(&mut acd, "c1", "a1", 1);
    end(&mut acd, "c1", 1_000);
    assert!(offers(&enqueue(&mut acd, "c2", "support", 1_100)).is_empty());
    assert!(tick(&mut acd, 1_499).is_empty());
    assert_eq!(offers(&tick(&mut acd, 1_500)), [("c2", "a1")]);
}

#[test]
fn wrap_up_zero_goes_straight_to_ready_and_takes_the_next_call() {
    let mut acd = Acd::new();
    configure(&mut acd, "fast", "support", 0);
    login(&mut acd, "a1", &["support"], 0);
    enqueue(&mut acd, "c1", "fast", 10);
    enqueue(&mut acd, "c2", "fast", 20);
    connect(&mut acd, "c1", "a1", 30);
    let events = end(&mut acd, "c1", 40);
    assert_eq!(
        events[0],
        Event::AgentStateChanged {
            agent: "a1".into(),
            state: AgentState::Ready
        }
    );
    assert_eq!(offers(&events), [("c2", "a1")]);
}

#[test]
fn agent_may_end_wrap_up_early() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support"], 0);
    enqueue(&mut acd, "c1", "support", 0);
    connect(&mut acd, "c1", "a1", 1);
    end(&mut acd, "c1", 2);
    enqueue(&mut acd, "c2", "support", 3);
    let events = ok(
        &mut acd,
        Command::AgentReady {
            agent: "a1".into(),
            at: 4,
        },
    );
    assert_eq!(offers(&events), [("c2", "a1")]);
}

#[test]
fn logout_while_ringing_revokes_and_returns_the_call_to_the_head() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support"], 0);
    enqueue(&mut acd, "c1", "support", 10);
    enqueue(&mut acd, "c2", "support", 20);
    let events = ok(
        &mut acd,
        Command::AgentLogout {
            agent: "a1".into(),
            at: 30,
        },
    );
    assert_eq!(
        events,
        [
            Event::OfferRevoked {
                call: "c1".into(),
                agent: "a1".into(),
                reason: RevokeReason::AgentGone
            },
            Event::AgentStateChanged {
                agent: "a1".into(),
                state: AgentState::LoggedOut
            },
        ]
    );
    assert_eq!(acd.waiting_position("c1"), Some(1));
    assert_eq!(
        offers(&login(&mut acd, "a2", &["support"], 40)),
        [("c1", "a2")]
    );
}

#[test]
fn logout_during_a_call_takes_effect_when_it_ends() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support"], 0);
    enqueue(&mut acd, "c1", "support", 0);
    connect(&mut acd, "c1", "a1", 1);
    let events = ok(
        &mut acd,
        Command::AgentLogout {
            agent: "a1".into(),
            at: 2,
        },
    );
    assert!(events.is_empty());
    end(&mut acd, "c1", 3);
    assert_eq!(acd.agent_state("a1"), Some(&AgentState::LoggedOut));

    // Re-registering during the call calls the logout off.
    login(&mut acd, "a1", &["support"], 4);
    enqueue(&mut acd, "c2", "support", 5);
    connect(&mut acd, "c2", "a1", 6);
    ok(
        &mut acd,
        Command::AgentLogout {
            agent: "a1".into(),
            at: 7,
        },
    );
    login(&mut acd, "a1", &["support"], 8);
    end(&mut acd, "c2", 9);
    assert_eq!(
        acd.agent_state("a1"),
        Some(&AgentState::WrapUp { until: 509 })
    );
}

#[test]
fn lost_in_every_state_gives_one_record_with_the_cause() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support"], 0);
    login(&mut acd, "a2", &["support"], 1);
    enqueue(&mut acd, "on-call", "support", 10);
    enqueue(&mut acd, "ringing", "support", 20);
    enqueue(&mut acd, "waiting", "support", 30);
    connect(&mut acd, "on-call", "a1", 40);
    let lose = |acd: &mut Acd, call: &str| {
        let events = ok(
            acd,
            Command::Lost {
                call: call.into(),
                cause: "media-failure".into(),
                at: 100,
            },
        );
        let found = records(&events);
        assert_eq!(found.len(), 1);
        let record = found[0].clone();
        assert_eq!(record.disposition, Disposition::Lost);
        assert_eq!(record.hangup_by, Party::System);
        assert_eq!(record.cause.as_deref(), Some("media-failure"));
        (events, record)
    };
    let (_, record) = lose(&mut acd, "waiting");
    assert_eq!(record.wait_ms, 70);
    let (events, _) = lose(&mut acd, "ringing");
    assert!(events.contains(&Event::OfferRevoked {
        call: "ringing".into(),
        agent: "a2".into(),
        reason: RevokeReason::CallerGone
    }));
    assert_eq!(acd.agent_state("a2"), Some(&AgentState::Ready));
    let (_, record) = lose(&mut acd, "on-call");
    assert_eq!((record.answered_at, record.wait_ms), (Some(40), 30));
    assert_eq!(
        acd.agent_state("a1"),
        Some(&AgentState::WrapUp { until: 600 })
    );
    assert_eq!(acd.stats().totals.lost, 3);
}

#[test]
fn exactly_one_call_finished_per_call() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support"], 0);
    let mut all = Vec::new();
    all.extend(enqueue(&mut acd, "answered", "support", 1));
    all.extend(enqueue(&mut acd, "abandoned", "support", 2));
    all.extend(enqueue(&mut acd, "lost", "support", 3));
    all.extend(connect(&mut acd, "answered", "a1", 4));
    all.extend(ok(
        &mut acd,
        Command::Abandon {
            call: "abandoned".into(),
            at: 5,
        },
    ));
    all.extend(ok(
        &mut acd,
        Command::Lost {
            call: "lost".into(),
            cause: "trunk-down".into(),
            at: 6,
        },
    ));
    all.extend(end(&mut acd, "answered", 7));
    let mut finished: Vec<&str> = records(&all).iter().map(|r| r.call.as_str()).collect();
    finished.sort_unstable();
    assert_eq!(finished, ["abandoned", "answered", "lost"]);
    for call in ["answered", "abandoned", "lost"] {
        for cmd in [
            Command::Abandon {
                call: call.into(),
                at: 8,
            },
            Command::Lost {
                call: call.into(),
                cause: "again".into(),
                at: 8,
            },
            Command::Ended {
                call: call.into(),
                by: Party::Caller,
                at: 8,
            },
        ] {
            assert_eq!(acd.apply(cmd), Err(RoutingError::UnknownCall(call.into())));
        }
    }
    let totals = acd.stats().totals;
    assert_eq!(
        (
            totals.entered,
            totals.answered,
            totals.abandoned,
            totals.lost
        ),
        (3, 1, 1, 1)
    );
}

#[test]
fn refused_commands_leave_the_state_unchanged() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support"], 0);
    login(&mut acd, "a2", &["support"], 1);
    enqueue(&mut acd, "c1", "support", 10);
    enqueue(&mut acd, "c2", "support", 11);
    connect(&mut acd, "c2", "a2", 12);
    let before = acd.clone();
    let hash = acd.state_hash();
    let bad_queue = QueueConfig {
        name: "x".into(),
        skill: String::new(),
        wrapup_ms: 0,
        ring_timeout_ms: 10,
        ..QueueConfig::default()
    };
    let refused = [
        (
            Command::ConfigureQueue {
                queue: bad_queue,
                at: 99,
            },
            "InvalidQueueConfig",
        ),
        (
            Command::Enqueue(Arrival {
                call: "c1".into(),
                queue: "support".into(),
                caller: "x".into(),
                dialled: "y".into(),
                at: 99,
                ..Arrival::default()
            }),
            "DuplicateCall",
        ),
        (
            Command::Enqueue(Arrival {
                call: "c9".into(),
                queue: "nowhere".into(),
                caller: "x".into(),
                dialled: "y".into(),
                at: 99,
                ..Arrival::default()
            }),
            "UnknownQueue",
        ),
        (
            Command::AgentReady {
                agent: "ghost".into(),
                at: 99,
            },
            "UnknownAgent",
        ),
        (
            Command::AgentReady {
                agent: "a1".into(),
                at: 99,
            },
            "AgentInvalidState",
        ),
        (
            Command::AgentNotReady {
                agent: "a2".into(),
                reason: "lunch".into(),
                at: 99,
            },
            "AgentInvalidState",
        ),
        (
            Command::Connected {
                call: "c1".into(),
                agent: "a2".into(),
                at: 99,
            },
            "NotOfferedTo",
        ),
        (
            Command::Connected {
                call: "c2".into(),
                agent: "a2".into(),
                at: 99,
            },
            "CallInvalidState",
        ),
        (
            Command::OfferFailed {
                call: "c2".into(),
                agent: "a1".into(),
                failure: OfferFailure::NoAnswer,
                at: 99,
            },
            "NotOfferedTo",
        ),
        (
            Command::Ended {
                call: "c1".into(),
                by: Party::Caller,
                at: 99,
            },
            "CallInvalidState",
        ),
        (
            Command::Abandon {
                call: "c2".into(),
                at: 99,
            },
            "CallInvalidState",
        ),
        (
            Command::Lost {
                call: "nope".into(),
                cause: "x".into(),
                at: 99,
            },
            "UnknownCall",
        ),
    ];
    for (cmd, kind) in refused {
        let text = format!("{cmd:?}");
        let err = acd.apply(cmd).expect_err(&text);
        assert!(format!("{err:?}").starts_with(kind), "{text}: {err:?}");
        assert!(!err.to_string().is_empty());
        assert_eq!(acd, before, "{text} changed the state");
        assert_eq!(acd.state_hash(), hash);
    }
    assert_eq!(acd.now(), 12, "a refused command does not advance time");
}

#[test]
fn limits_refuse_new_entries_without_changing_state() {
    let mut acd = Acd::with_limits(AcdLimits {
        calls_max: 1,
        agents_max: 1,
        queues_max: 1,
        nodes_max: 1,
    });
    configure(&mut acd, "support", "support", 0);
    let before = acd.clone();
    let queue = QueueConfig {
        name: "sales".into(),
        skill: "sales".into(),
        wrapup_ms: 0,
        ring_timeout_ms: 1,
        ..QueueConfig::default()
    };
    let err = acd.apply(Command::ConfigureQueue { queue, at: 1 });
    assert!(matches!(
        err,
        Err(RoutingError::LimitReached { max: 1, .. })
    ));
    assert_eq!(acd, before);
    login(&mut acd, "a1", &[], 1);
    let err = acd.apply(Command::AgentLogin {
        agent: "a2".into(),
        skills: vec![],
        node: 1,
        site: "hq".into(),
        at: 2,
    });
    assert!(matches!(err, Err(RoutingError::LimitReached { .. })));
    enqueue(&mut acd, "c1", "support", 3);
    let err = acd.apply(Command::Enqueue(Arrival {
        call: "c2".into(),
        queue: "support".into(),
        at: 4,
        ..Arrival::default()
    }));
    assert!(matches!(err, Err(RoutingError::LimitReached { .. })));
}

#[test]
fn time_never_goes_backwards() {
    let mut acd = acd();
    tick(&mut acd, 1_000);
    enqueue(&mut acd, "c1", "support", 500);
    assert_eq!(acd.now(), 1_000);
    let events = ok(
        &mut acd,
        Command::Abandon {
            call: "c1".into(),
            at: 900,
        },
    );
    let record = records(&events)[0];
    assert_eq!(
        (record.arrived_at, record.ended_at, record.wait_ms),
        (1_000, 1_000, 0)
    );
}

#[test]
fn agent_state_rules() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support"], 0);
    // Logging out twice is harmless (registration expiry after an unregister).
    for at in [1, 2] {
        ok(
            &mut acd,
            Command::AgentLogout {
                agent: "a1".into(),
                at,
            },
        );
    }
    let err = acd.apply(Command::AgentReady {
        agent: "a1".into(),
        at: 3,
    });
    assert!(matches!(err, Err(RoutingError::AgentInvalidState { .. })));
    // Logging in from logged-out makes the agent ready.
    let events = login(&mut acd, "a1", &["support"], 4);
    assert_eq!(
        events,
        [Event::AgentStateChanged {
            agent: "a1".into(),
            state: AgentState::Ready
        }]
    );
    // A repeated login while ready changes nothing visible.
    assert!(login(&mut acd, "a1", &["support"], 5).is_empty());
    enqueue(&mut acd, "c1", "support", 6);
    let err = acd.apply(Command::AgentNotReady {
        agent: "a1".into(),
        reason: "break".into(),
        at: 7,
    });
    assert!(matches!(err, Err(RoutingError::AgentInvalidState { .. })));
}

#[test]
fn stats_count_queues_agents_and_totals_and_serialize_to_json() {
    let mut acd = acd();
    configure(&mut acd, "sales", "sales", 0);
    login(&mut acd, "a1", &["support"], 0);
    login(&mut acd, "a2", &["support"], 1);
    login(&mut acd, "a3", &["sales"], 2);
    ok(
        &mut acd,
        Command::AgentNotReady {
            agent: "a3".into(),
            reason: "break".into(),
            at: 3,
        },
    );
    enqueue(&mut acd, "c1", "support", 100);
    enqueue(&mut acd, "c2", "support", 200);
    enqueue(&mut acd, "c3", "support", 300);
    connect(&mut acd, "c1", "a1", 400);
    tick(&mut acd, 1_000);
    let stats = acd.stats();
    let support = &stats.queues["support"];
    assert_eq!(
        (support.waiting, support.offering, support.connected),
        (1, 1, 1)
    );
    assert_eq!(support.longest_wait_ms, 800);
    assert_eq!(stats.queues["sales"], QueueStats::default());
    assert_eq!(stats.agents["on_call"], 1);
    assert_eq!(stats.agents["reserved"], 1);
    assert_eq!(stats.agents["not_ready"], 1);
    assert_eq!(stats.agents["wrap_up"], 0);
    assert_eq!(stats.agents.len(), AgentState::NAMES.len());
    assert_eq!(stats.totals.entered, 3);

    let json = serde_json::to_value(&stats).expect("stats are plain data");
    assert_eq!(json["queues"]["support"]["waiting"], 1);
    assert_eq!(json["agents"]["ready"], 0);
    assert_eq!(json["totals"]["entered"], 3);
    let back: AcdStats = serde_json::from_value(json).expect("round trip");
    assert_eq!(back, stats);
}

#[test]
fn snapshot_round_trip_keeps_state_and_hash() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support"], 0);
    login(&mut acd, "a2", &["support"], 1);
    enqueue(&mut acd, "c1", "support", 2);
    enqueue(&mut acd, "c2", "support", 3);
    enqueue(&mut acd, "c3", "support", 4);
    connect(&mut acd, "c1", "a1", 5);
    let json = serde_json::to_string(&acd).expect("state is plain data");
    let mut restored: Acd = serde_json::from_str(&json).expect("round trip");
    assert_eq!(restored, acd);
    assert_eq!(restored.state_hash(), acd.state_hash());
    restored
        .check_invariants()
        .expect("restored state is consistent");
    // Both continue identically.
    let cmd = Command::Tick { at: 5_000 };
    assert_eq!(restored.apply(cmd.clone()), acd.apply(cmd));
    assert_eq!(restored.state_hash(), acd.state_hash());
}

#[test]
fn state_hash_sees_every_change() {
    let mut acd = acd();
    let mut seen = std::collections::BTreeSet::new();
    assert!(seen.insert(acd.state_hash()));
    login(&mut acd, "a1", &["support"], 1);
    assert!(seen.insert(acd.state_hash()));
    tick(&mut acd, 2);
    assert!(seen.insert(acd.state_hash()), "time is state");
    enqueue(&mut acd, "c1", "support", 2);
    assert!(seen.insert(acd.state_hash()));
    connect(&mut acd, "c1", "a1", 2);
    assert!(seen.insert(acd.state_hash()));
    end(&mut acd, "c1", 2);
    assert!(seen.insert(acd.state_hash()));
}

#[test]
fn a_late_answer_after_the_ring_timeout_fired_is_refused() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support"], 0);
    login(&mut acd, "a2", &["support"], 1);
    enqueue(&mut acd, "c1", "support", 10);
    let events = tick(&mut acd, 10 + RING_MS);
    // The timeout sends c1 straight to the next longest-idle agent.
    assert_eq!(offers(&events), [("c1", "a2")]);
    let before = acd.clone();
    let late = acd.apply(Command::Connected {
        call: "c1".into(),
        agent: "a1".into(),
        at: 10 + RING_MS + 1,
    });
    assert_eq!(
        late,
        Err(RoutingError::NotOfferedTo {
            call: "c1".into(),
            agent: "a1".into()
        })
    );
    assert_eq!(acd, before);
    connect(&mut acd, "c1", "a2", 10 + RING_MS + 2);
    let record = records(&end(&mut acd, "c1", 5_000))[0].clone();
    assert_eq!((record.offers, record.offered_at), (2, Some(10)));
    assert_eq!(record.agent.as_deref(), Some("a2"));
}

// ---- Multi-site clusters and node liveness ----

fn login_on(acd: &mut Acd, agent: &str, node: NodeId, site: &str, at: Millis) -> Vec<Event> {
    ok(
        acd,
        Command::AgentLogin {
            agent: agent.into(),
            skills: vec!["support".into()],
            node,
            site: site.into(),
            at,
        },
    )
}

fn enqueue_on(acd: &mut Acd, call: &str, owner: NodeId, site: &str, at: Millis) -> Vec<Event> {
    ok(
        acd,
        Command::Enqueue(Arrival {
            call: call.into(),
            queue: "support".into(),
            caller: format!("caller-{call}"),
            dialled: "100".into(),
            owner,
            site: site.into(),
            at,
            ..Arrival::default()
        }),
    )
}

fn lease(acd: &mut Acd, node: NodeId, site: &str, at: Millis) -> Vec<Event> {
    ok(
        acd,
        Command::NodeLease {
            node,
            site: site.into(),
            at,
        },
    )
}

fn configure_local_wait(acd: &mut Acd, local_wait_ms: u64) {
    let queue = QueueConfig {
        name: "support".into(),
        skill: "support".into(),
        wrapup_ms: 500,
        ring_timeout_ms: RING_MS,
        local_wait_ms,
        ..QueueConfig::default()
    };
    ok(acd, Command::ConfigureQueue { queue, at: 0 });
}

#[test]
fn offer_names_the_owner_and_the_agent_node() {
    let mut acd = acd();
    login_on(&mut acd, "a1", 2, "branch", 0);
    let events = enqueue_on(&mut acd, "c1", 1, "hq", 10);
    assert_eq!(
        events[0],
        Event::Offered {
            call: "c1".into(),
            agent: "a1".into(),
            ring_timeout_ms: RING_MS,
            owner: 1,
            agent_node: 2,
        }
    );
    assert_eq!(acd.call_owner("c1"), Some(1));
    assert_eq!(acd.agent_node("a1"), Some(2));
    assert_eq!(acd.agent_site("a1"), Some("branch"));
    assert_eq!(acd.call_owner("nope"), None);
}

#[test]
fn a_local_agent_is_preferred_over_a_longer_idle_remote_one() {
    let mut acd = acd();
    login_on(&mut acd, "remote", 2, "branch", 0);
    login_on(&mut acd, "local", 1, "hq", 50);
    assert_eq!(
        offers(&enqueue_on(&mut acd, "c1", 1, "hq", 100)),
        [("c1", "local")]
    );
    // No local agent left: with local_wait_ms 0 the remote one takes the next call.
    assert_eq!(
        offers(&enqueue_on(&mut acd, "c2", 1, "hq", 101)),
        [("c2", "remote")]
    );
}

#[test]
fn with_no_local_agent_the_least_occupied_site_is_chosen() {
    let mut acd = acd();
    // Site "b1": two agents, one busy (50%). Site "b2": three agents, one busy (33%).
    for (agent, site, at) in [
        ("x1", "b1", 0),
        ("x2", "b1", 1),
        ("y1", "b2", 2),
        ("y2", "b2", 3),
        ("y3", "b2", 4),
    ] {
        login_on(&mut acd, agent, 2, site, at);
    }
    enqueue_on(&mut acd, "busy-b1", 2, "b1", 10);
    enqueue_on(&mut acd, "busy-b2", 2, "b2", 11);
    assert_eq!(acd.agent_state("x1"), Some(&reserved("busy-b1")));
    assert_eq!(acd.agent_state("y1"), Some(&reserved("busy-b2")));
    // A call from hq (no agent there) goes to b2, the less occupied site, longest idle.
    assert_eq!(
        offers(&enqueue_on(&mut acd, "c1", 1, "hq", 20)),
        [("c1", "y2")]
    );
    // Now b1 is 1/2 and b2 is 2/3: b1 wins.
    assert_eq!(
        offers(&enqueue_on(&mut acd, "c2", 1, "hq", 21)),
        [("c2", "x2")]
    );
}

#[test]
fn equal_occupancy_ties_go_to_the_first_site_name() {
    let mut acd = acd();
    login_on(&mut acd, "z", 3, "zeta", 0);
    login_on(&mut acd, "a", 2, "alpha", 5);
    assert_eq!(
        offers(&enqueue_on(&mut acd, "c1", 1, "hq", 10)),
        [("c1", "a")]
    );
}

#[test]
fn local_wait_holds_a_call_for_its_site_then_any_site_will_do() {
    let mut acd = acd();
    configure_local_wait(&mut acd, 5_000);
    login_on(&mut acd, "remote", 2, "branch", 0);
    assert!(offers(&enqueue_on(&mut acd, "hq-call", 1, "hq", 1_000)).is_empty());
    // A later branch call is not held back by the hq call ahead of it.
    assert_eq!(
        offers(&enqueue_on(&mut acd, "branch-call", 2, "branch", 2_000)),
        [("branch-call", "remote")]
    );
    end_after_connect(&mut acd, "branch-call", "remote", 2_100);
    ok(
        &mut acd,
        Command::AgentReady {
            agent: "remote".into(),
            at: 2_200,
        },
    );
    assert_eq!(acd.waiting_position("hq-call"), Some(1));
    assert!(tick(&mut acd, 5_999).is_empty());
    assert_eq!(offers(&tick(&mut acd, 6_000)), [("hq-call", "remote")]);
}

#[test]
fn a_local_agent_freed_during_the_local_wait_takes_the_call() {
    let mut acd = acd();
    configure_local_wait(&mut acd, 5_000);
    login_on(&mut acd, "remote", 2, "branch", 0);
    enqueue_on(&mut acd, "c1", 1, "hq", 1_000);
    assert_eq!(
        offers(&login_on(&mut acd, "local", 1, "hq", 2_000)),
        [("c1", "local")]
    );
}

fn end_after_connect(acd: &mut Acd, call: &str, agent: &str, at: Millis) {
    connect(acd, call, agent, at);
    end(acd, call, at + 1);
}

#[test]
fn login_at_another_node_moves_the_agent_without_changing_state() {
    let mut acd = acd();
    login_on(&mut acd, "a1", 1, "hq", 0);
    enqueue_on(&mut acd, "c1", 1, "hq", 10);
    connect(&mut acd, "c1", "a1", 20);
    let events = login_on(&mut acd, "a1", 3, "branch", 30);
    assert!(events.is_empty());
    assert_eq!(
        acd.agent_state("a1"),
        Some(&AgentState::OnCall { call: "c1".into() })
    );
    assert_eq!(acd.agent_node("a1"), Some(3));
    assert_eq!(acd.agent_site("a1"), Some("branch"));
}

#[test]
fn first_lease_registers_the_node_and_lapses_mark_it_down() {
    let mut acd = acd();
    assert_eq!(lease(&mut acd, 1, "hq", 0), [Event::NodeUp { node: 1 }]);
    assert!(lease(&mut acd, 1, "hq", 1_000).is_empty());
    lease(&mut acd, 2, "branch", 1_000);
    assert_eq!(
        acd.nodes(),
        [
            (
                1,
                NodeStatus {
                    site: "hq".into(),
                    up: true,
                    last_lease_at: 1_000
                }
            ),
            (
                2,
                NodeStatus {
                    site: "branch".into(),
                    up: true,
                    last_lease_at: 1_000
                }
            ),
        ]
    );
    lease(&mut acd, 2, "branch", 4_000);
    // Exactly lease_ms old is still alive; older is down.
    assert!(tick(&mut acd, 4_000).is_empty());
    assert_eq!(tick(&mut acd, 4_001), [Event::NodeDown { node: 1 }]);
    assert!(!acd.nodes()[0].1.up);
    // A node that never leased is never watched.
    login_on(&mut acd, "a9", 9, "far", 4_002);
    tick(&mut acd, 100_000);
    assert_eq!(acd.agent_state("a9"), Some(&AgentState::Ready));
    // A lease brings node 1 back.
    assert_eq!(
        lease(&mut acd, 1, "hq", 100_001),
        [Event::NodeUp { node: 1 }]
    );
    assert!(acd.nodes()[0].1.up);
}

#[test]
fn a_gap_in_ticking_renews_every_live_lease() {
    // No leader for 3.5 s (an election): nobody's lease could be committed. The first
    // Tick of the new leader must not declare the survivors down; the node that died
    // lapses one lease later.
    let mut acd = acd();
    lease(&mut acd, 1, "hq", 0);
    lease(&mut acd, 2, "hq", 0);
    tick(&mut acd, 100);
    lease(&mut acd, 1, "hq", 1_000);
    lease(&mut acd, 2, "hq", 1_000);
    tick(&mut acd, 1_000);
    // Leader (node 2) dies at 1 000; node 1 leads from 4 500.
    assert!(tick(&mut acd, 4_500).is_empty(), "survivors kept");
    lease(&mut acd, 1, "hq", 4_600);
    for at in (4_700..=7_500).step_by(100) {
        assert!(tick(&mut acd, at).is_empty(), "at {at}");
    }
    lease(&mut acd, 1, "hq", 7_500);
    assert_eq!(tick(&mut acd, 7_600), [Event::NodeDown { node: 2 }]);
    assert!(acd.nodes()[0].1.up);
}

#[test]
fn leases_heard_by_the_leader_keep_a_busy_node_up_but_do_not_revive_a_down_one() {
    let mut acd = acd();
    lease(&mut acd, 1, "hq", 0);
    lease(&mut acd, 2, "hq", 0);
    lease(&mut acd, 3, "branch", 0);
    // Node 2's own leases are stuck behind its calls; the leader hears its Raft acks.
    // Node 3 is gone. The leader ticks every 100 ms.
    let mut down = Vec::new();
    for at in (100..=6_000).step_by(100) {
        if at % 1_000 == 0 {
            lease(&mut acd, 1, "hq", at);
            ok(&mut acd, Command::LeasesHeard { nodes: vec![2], at });
        }
        for ev in tick(&mut acd, at) {
            down.push((at, ev));
        }
    }
    assert_eq!(down, [(3_100, Event::NodeDown { node: 3 })]);
    assert!(acd.nodes()[1].1.up, "node 2 kept up");
    assert_eq!(acd.nodes()[1].1.last_lease_at, 6_000);
    // Heard again, node 3 stays down until it leases itself.
    ok(
        &mut acd,
        Command::LeasesHeard {
            nodes: vec![2, 3],
            at: 6_500,
        },
    );
    assert!(!acd.nodes()[2].1.up, "a down node needs its own lease");
    assert_eq!(
        lease(&mut acd, 3, "branch", 6_600),
        [Event::NodeUp { node: 3 }]
    );
}

#[test]
fn configure_cluster_sets_the_lease_length() {
    let mut acd = acd();
    assert_eq!(acd.lease_ms(), LEASE_MS_DEFAULT);
    ok(
        &mut acd,
        Command::ConfigureCluster {
            lease_ms: 10_000,
            at: 0,
        },
    );
    lease(&mut acd, 1, "hq", 0);
    assert!(tick(&mut acd, 10_000).is_empty());
    assert_eq!(tick(&mut acd, 10_001), [Event::NodeDown { node: 1 }]);
    let before = acd.clone();
    let err = acd.apply(Command::ConfigureCluster { lease_ms: 0, at: 1 });
    assert!(matches!(err, Err(RoutingError::InvalidClusterConfig(_))));
    assert_eq!(acd, before);
}

#[test]
fn node_down_loses_its_calls_in_every_state_and_frees_other_agents() {
    let mut acd = acd();
    lease(&mut acd, 1, "hq", 0);
    lease(&mut acd, 2, "branch", 0);
    login_on(&mut acd, "b1", 2, "branch", 0);
    login_on(&mut acd, "b2", 2, "branch", 1);
    enqueue_on(&mut acd, "connected", 1, "hq", 10);
    enqueue_on(&mut acd, "offered", 1, "hq", 20);
    enqueue_on(&mut acd, "waiting", 1, "hq", 30);
    enqueue_on(&mut acd, "survivor", 2, "branch", 40);
    connect(&mut acd, "connected", "b1", 50);
    assert_eq!(acd.agent_state("b2"), Some(&reserved("offered")));
    lease(&mut acd, 2, "branch", 3_500);
    let events = tick(&mut acd, 3_500);
    assert_eq!(events[0], Event::NodeDown { node: 1 });
    let lost: Vec<(&str, Option<&str>)> = records(&events)
        .iter()
        .map(|r| (r.call.as_str(), r.cause.as_deref()))
        .collect();
    assert_eq!(
        lost,
        [
            ("connected", Some("node-down: n1")),
            ("offered", Some("node-down: n1")),
            ("waiting", Some("node-down: n1")),
        ]
    );
    assert!(records(&events)
        .iter()
        .all(|r| r.disposition == Disposition::Lost));
    assert!(events.contains(&Event::OfferRevoked {
        call: "offered".into(),
        agent: "b2".into(),
        reason: RevokeReason::CallerGone
    }));
    // b2 was freed and takes the surviving branch call; b1 wraps up.
    assert_eq!(offers(&events), [("survivor", "b2")]);
    assert_eq!(
        acd.agent_state("b1"),
        Some(&AgentState::WrapUp { until: 4_000 })
    );
    assert_eq!(acd.stats().totals.lost, 3);
    // The down node can propose nothing until it leases again.
    let before = acd.clone();
    let err = acd.apply(Command::Enqueue(Arrival {
        call: "late".into(),
        queue: "support".into(),
        owner: 1,
        site: "hq".into(),
        at: 3_600,
        ..Arrival::default()
    }));
    assert_eq!(err, Err(RoutingError::NodeDown(1)));
    let err = acd.apply(Command::AgentLogin {
        agent: "h1".into(),
        skills: vec![],
        node: 1,
        site: "hq".into(),
        at: 3_600,
    });
    assert_eq!(err, Err(RoutingError::NodeDown(1)));
    assert_eq!(acd, before);
}

#[test]
fn a_restarted_node_closes_what_its_earlier_run_held_and_keeps_new_calls() {
    let mut acd = acd();
    lease(&mut acd, 1, "hq", 0);
    lease(&mut acd, 2, "branch", 0);
    login_on(&mut acd, "b1", 2, "branch", 0);
    login_on(&mut acd, "b2", 2, "branch", 1);
    enqueue_on(&mut acd, "connected", 1, "hq", 10);
    enqueue_on(&mut acd, "offered", 1, "hq", 20);
    enqueue_on(&mut acd, "other-node", 2, "branch", 30);
    connect(&mut acd, "connected", "b1", 50);
    // n1 restarts at 1,000 and a call reaches the new run before its first lease commits.
    enqueue_on(&mut acd, "new-run", 1, "hq", 1_100);
    let events = acd
        .apply(Command::NodeStarted {
            node: 1,
            site: "hq".into(),
            started_at: 1_000,
            at: 1_200,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let lost: Vec<(&str, Option<&str>)> = records(&events)
        .iter()
        .map(|r| (r.call.as_str(), r.cause.as_deref()))
        .collect();
    assert_eq!(
        lost,
        [
            ("connected", Some("node-restarted: n1")),
            ("offered", Some("node-restarted: n1")),
        ]
    );
    assert!(
        !events.contains(&Event::NodeDown { node: 1 }),
        "a restart within the lease is not a NodeDown"
    );
    // b1 wraps up after the lost call; b2, freed from the lost offer, takes the next
    // call in line.
    assert!(matches!(
        acd.agent_state("b1"),
        Some(AgentState::WrapUp { .. })
    ));
    assert_eq!(offers(&events), [("other-node", "b2")]);
    assert_eq!(acd.stats().totals.lost, 2);
    // The new run's own call stays, and its node is live.
    assert!(acd
        .apply(Command::Abandon {
            call: "new-run".into(),
            at: 1_300,
        })
        .is_ok());
    // A first start (no earlier run) registers the node and closes nothing.
    let events = acd
        .apply(Command::NodeStarted {
            node: 3,
            site: "hq".into(),
            started_at: 1_400,
            at: 1_400,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(records(&events).is_empty());
    assert!(
        events.contains(&Event::NodeUp { node: 3 }) || acd.nodes().iter().any(|(n, _)| *n == 3)
    );
}

#[test]
fn a_restart_logs_out_the_agents_whose_registrations_died_with_the_earlier_run() {
    let mut acd = acd();
    lease(&mut acd, 1, "hq", 0);
    lease(&mut acd, 2, "branch", 0);
    login_on(&mut acd, "old", 1, "hq", 0);
    login_on(&mut acd, "idle", 1, "hq", 1);
    // A call of n2 rings "old", the longest idle, at n1.
    let events = enqueue_on(&mut acd, "c", 2, "branch", 10);
    assert_eq!(offers(&events), [("c", "old")]);
    // n1 restarts at 1,000; a phone registers with the new run before NodeStarted commits.
    login_on(&mut acd, "fresh", 1, "hq", 1_100);
    let events = ok(
        &mut acd,
        Command::NodeStarted {
            node: 1,
            site: "hq".into(),
            started_at: 1_000,
            at: 1_200,
        },
    );
    assert_eq!(acd.agent_state("old"), Some(&AgentState::LoggedOut));
    assert_eq!(acd.agent_state("idle"), Some(&AgentState::LoggedOut));
    // The withdrawn offer goes to the one phone the new run holds.
    assert_eq!(offers(&events), [("c", "fresh")]);
    // The old phone registers again with the new run: ready.
    login_on(&mut acd, "old", 1, "hq", 1_300);
    assert_eq!(acd.agent_state("old"), Some(&AgentState::Ready));
}

#[test]
fn an_agent_unreachable_at_offer_time_is_ready_again_when_the_phone_registers() {
    let mut acd = acd();
    lease(&mut acd, 1, "hq", 0);
    login_on(&mut acd, "a", 1, "hq", 0);
    let events = enqueue_on(&mut acd, "c", 1, "hq", 10);
    assert_eq!(offers(&events), [("c", "a")]);
    ok(
        &mut acd,
        Command::OfferFailed {
            call: "c".into(),
            agent: "a".into(),
            failure: OfferFailure::Unreachable,
            at: 20,
        },
    );
    assert!(matches!(
        acd.agent_state("a"),
        Some(AgentState::NotReady { reason }) if reason == "unreachable"
    ));
    let events = login_on(&mut acd, "a", 1, "hq", 30);
    assert_eq!(offers(&events), [("c", "a")]);
    // A reason the agent chose survives a re-registration.
    ok(
        &mut acd,
        Command::OfferFailed {
            call: "c".into(),
            agent: "a".into(),
            failure: OfferFailure::Rejected,
            at: 40,
        },
    );
    login_on(&mut acd, "a", 1, "hq", 50);
    assert!(matches!(
        acd.agent_state("a"),
        Some(AgentState::NotReady { reason }) if reason == "rejected"
    ));
}

#[test]
fn node_down_makes_its_agents_unreachable_and_requeues_their_offers() {
    let mut acd = acd();
    lease(&mut acd, 1, "hq", 0);
    lease(&mut acd, 2, "branch", 0);
    login_on(&mut acd, "ringing", 2, "branch", 0);
    login_on(&mut acd, "talking", 2, "branch", 1);
    login_on(&mut acd, "idle", 2, "branch", 2);
    enqueue_on(&mut acd, "talk", 1, "hq", 10);
    connect(&mut acd, "talk", "ringing", 11);
    // "ringing" took "talk"; make names match roles: next call rings "talking".
    enqueue_on(&mut acd, "ring", 1, "hq", 12);
    enqueue_on(&mut acd, "later", 1, "hq", 13);
    assert_eq!(acd.agent_state("talking"), Some(&reserved("ring")));
    assert_eq!(acd.agent_state("idle"), Some(&reserved("later")));
    ok(
        &mut acd,
        Command::OfferFailed {
            call: "later".into(),
            agent: "idle".into(),
            failure: OfferFailure::Rejected,
            at: 14,
        },
    );
    lease(&mut acd, 1, "hq", 3_500);
    let events = tick(&mut acd, 3_500);
    assert_eq!(events[0], Event::NodeDown { node: 2 });
    assert!(events.contains(&Event::OfferRevoked {
        call: "ring".into(),
        agent: "talking".into(),
        reason: RevokeReason::AgentNodeDown
    }));
    assert!(records(&events).is_empty(), "calls of live nodes survive");
    assert_eq!(acd.waiting_position("ring"), Some(1));
    assert_eq!(acd.waiting_position("later"), Some(2));
    for agent in ["talking", "idle"] {
        assert_eq!(acd.agent_state(agent), Some(&AgentState::LoggedOut));
        assert_eq!(acd.agent_logout_reason(agent), Some("node-down"));
        assert_eq!(acd.agent_node(agent), None);
    }
    // The connected call stays connected; its agent goes when the owner ends it.
    assert_eq!(
        acd.agent_state("ringing"),
        Some(&AgentState::OnCall {
            call: "talk".into()
        })
    );
    end(&mut acd, "talk", 3_600);
    assert_eq!(acd.agent_state("ringing"), Some(&AgentState::LoggedOut));
    // Registering at another node brings an agent back, and the requeued call goes first.
    let events = login_on(&mut acd, "idle", 1, "hq", 3_700);
    assert_eq!(offers(&events), [("ring", "idle")]);
    assert_eq!(acd.agent_logout_reason("idle"), None);
}

// ---- Issue 4: the full ACD rules ----

fn queue_with(name: &str, f: impl FnOnce(&mut QueueConfig)) -> QueueConfig {
    let mut q = QueueConfig {
        name: name.into(),
        skill: "support".into(),
        ring_timeout_ms: RING_MS,
        ..QueueConfig::default()
    };
    f(&mut q);
    q
}

fn set_queue(acd: &mut Acd, q: QueueConfig) {
    ok(acd, Command::ConfigureQueue { queue: q, at: 0 });
}

fn arrive(
    acd: &mut Acd,
    call: &str,
    queue: &str,
    at: Millis,
    f: impl FnOnce(&mut Arrival),
) -> Vec<Event> {
    let mut a = Arrival {
        call: call.into(),
        queue: queue.into(),
        caller: format!("caller-{call}"),
        owner: 1,
        site: "hq".into(),
        at,
        ..Arrival::default()
    };
    f(&mut a);
    ok(acd, Command::Enqueue(a))
}

fn login_skills(acd: &mut Acd, agent: &str, skills: &[&str], at: Millis) -> Vec<Event> {
    login(acd, agent, skills, at)
}

#[test]
fn skill_levels_and_escalation_widen_the_pool_and_keep_place() {
    let mut acd = Acd::new();
    set_queue(
        &mut acd,
        queue_with("q", |q| {
            q.min_level = 8;
            q.escalation = vec![
                EscalationStep {
                    after_ms: 30_000,
                    min_level: 5,
                },
                EscalationStep {
                    after_ms: 60_000,
                    min_level: 1,
                },
            ];
        }),
    );
    login_skills(&mut acd, "junior", &["support:3"], 0);
    login_skills(&mut acd, "mid", &["support:6"], 0);
    assert!(offers(&arrive(&mut acd, "c1", "q", 0, |_| ())).is_empty());
    arrive(&mut acd, "c2", "q", 10_000, |_| ());
    assert!(tick(&mut acd, 29_999).is_empty());
    // At 30 s c1 (first in line) takes the level-6 agent; c2 keeps its place.
    assert_eq!(offers(&tick(&mut acd, 30_000)), [("c1", "mid")]);
    connect(&mut acd, "c1", "mid", 30_001);
    assert_eq!(acd.waiting_position("c2"), Some(1));
    // c2 reaches "anyone with the skill" at 70 s.
    assert!(offers(&tick(&mut acd, 69_999)).is_empty());
    assert_eq!(offers(&tick(&mut acd, 70_000)), [("c2", "junior")]);
    // A call may require its own skills; malformed ones are refused.
    let err = acd.apply(Command::Enqueue(Arrival {
        call: "bad".into(),
        queue: "q".into(),
        skills: vec!["support:11".into()],
        ..Arrival::default()
    }));
    assert!(matches!(err, Err(RoutingError::InvalidSkills(_))));
    let err = acd.apply(Command::AgentLogin {
        agent: "x".into(),
        skills: vec!["a:0".into()],
        node: 1,
        site: "hq".into(),
        at: 1,
    });
    assert!(matches!(err, Err(RoutingError::InvalidSkills(_))));
}

#[test]
fn a_call_skill_override_replaces_the_queue_skills() {
    let mut acd = acd();
    login_skills(&mut acd, "fr", &["french:9"], 0);
    login_skills(&mut acd, "sup", &["support"], 1);
    let events = arrive(&mut acd, "c1", "support", 10, |a| {
        a.skills = vec!["french:8".into()]
    });
    assert_eq!(offers(&events), [("c1", "fr")]);
}

#[test]
fn higher_priority_first_and_arrival_within_priority() {
    let mut acd = acd();
    arrive(&mut acd, "low1", "support", 1, |_| ());
    arrive(&mut acd, "high1", "support", 2, |a| a.priority = 5);
    arrive(&mut acd, "low2", "support", 3, |_| ());
    arrive(&mut acd, "high2", "support", 4, |a| a.priority = 5);
    assert_eq!(acd.waiting_position("high1"), Some(1));
    assert_eq!(acd.waiting_position("high2"), Some(2));
    assert_eq!(acd.waiting_position("low1"), Some(3));
    let mut order = Vec::new();
    for (i, agent) in ["a1", "a2", "a3", "a4"].iter().enumerate() {
        let events = login(&mut acd, agent, &["support"], 10 + i as u64);
        order.extend(offers(&events).into_iter().map(|(c, _)| c.to_owned()));
    }
    assert_eq!(order, ["high1", "high2", "low1", "low2"]);
}

#[test]
fn fairness_weights_waits_across_queues() {
    let mut acd = Acd::new();
    set_queue(&mut acd, queue_with("light", |q| q.weight = 1));
    set_queue(&mut acd, queue_with("heavy", |q| q.weight = 4));
    arrive(&mut acd, "old", "light", 0, |_| ());
    arrive(&mut acd, "young", "heavy", 600, |_| ());
    // Without fairness the older call goes first.
    let mut plain = acd.clone();
    let events = login(&mut plain, "a1", &["support"], 1_000);
    assert_eq!(offers(&events), [("old", "a1")]);
    // With it, 400 ms x 4 beats 1,000 ms x 1.
    let settings = RoutingSettings {
        fairness: true,
        ..RoutingSettings::default()
    };
    ok(
        &mut acd,
        Command::ConfigureRouting {
            settings,
            at: 1_000,
        },
    );
    let events = login(&mut acd, "a1", &["support"], 1_000);
    assert_eq!(offers(&events), [("young", "a1")]);
}

/// Serves `n` calls one at a time in queue `q`, returning who got each.
fn serve(acd: &mut Acd, q: &str, n: usize, start: Millis) -> Vec<String> {
    let mut got = Vec::new();
    for i in 0..n {
        let at = start + i as u64 * 10;
        let call = format!("{q}-{start}-{i}");
        let events = arrive(acd, &call, q, at, |_| ());
        let [(c, agent)] = offers(&events)[..] else {
            panic!("one offer expected: {events:?}");
        };
        let agent = agent.to_owned();
        connect(acd, c, &agent, at + 1);
        end(acd, &call, at + 2 + i as u64);
        got.push(agent);
    }
    got
}

#[test]
fn strategies_pick_as_configured() {
    let strategies = [
        (Strategy::RoundRobin, vec!["a1", "a2", "a3", "a1"]),
        (Strategy::TopDown, vec!["a3", "a3", "a3", "a3"]),
        // Ties (equal counts) go to the longest idle.
        (Strategy::FewestCalls, vec!["a3", "a2", "a1", "a3"]),
    ];
    for (strategy, expected) in strategies {
        let mut acd = Acd::new();
        set_queue(
            &mut acd,
            queue_with("q", |q| {
                q.strategy = strategy;
                q.agent_order = vec!["a3".into(), "a1".into()];
            }),
        );
        // Idle order a3, a2, a1 (so longest idle would start with a3).
        for (agent, at) in [("a3", 0), ("a2", 1), ("a1", 2)] {
            login(&mut acd, agent, &["support"], at);
        }
        assert_eq!(serve(&mut acd, "q", 4, 100), expected, "{strategy:?}");
    }
}

#[test]
fn least_talk_time_prefers_the_quietest_agent() {
    let mut acd = Acd::new();
    set_queue(
        &mut acd,
        queue_with("q", |q| q.strategy = Strategy::LeastTalkTime),
    );
    login(&mut acd, "a1", &["support"], 0);
    login(&mut acd, "a2", &["support"], 1);
    // a1 takes a long call, a2 a short one.
    arrive(&mut acd, "long", "q", 10, |_| ());
    arrive(&mut acd, "short", "q", 11, |_| ());
    connect(&mut acd, "long", "a1", 12);
    connect(&mut acd, "short", "a2", 12);
    end(&mut acd, "short", 20);
    end(&mut acd, "long", 5_000);
    // a2 became ready first anyway; make a1 longer idle to show talk time wins.
    ok(
        &mut acd,
        Command::AgentNotReady {
            agent: "a2".into(),
            reason: "x".into(),
            at: 5_001,
        },
    );
    ok(
        &mut acd,
        Command::AgentReady {
            agent: "a2".into(),
            at: 5_002,
        },
    );
    let events = arrive(&mut acd, "next", "q", 5_003, |_| ());
    assert_eq!(offers(&events), [("next", "a2")]);
}

#[test]
fn random_is_a_deterministic_draw() {
    let build = || {
        let mut acd = Acd::new();
        set_queue(&mut acd, queue_with("q", |q| q.strategy = Strategy::Random));
        for (i, agent) in ["a1", "a2", "a3", "a4", "a5"].iter().enumerate() {
            login(&mut acd, agent, &["support"], i as u64);
        }
        acd
    };
    let picks = |acd: &mut Acd| -> Vec<String> {
        (0..5)
            .map(|i| {
                let events = arrive(acd, &format!("c{i}"), "q", 10 + i, |_| ());
                offers(&events)[0].1.to_owned()
            })
            .collect()
    };
    let (mut x, mut y) = (build(), build());
    let first = picks(&mut x);
    assert_eq!(first, picks(&mut y));
    assert_eq!(x.state_hash(), y.state_hash());
}

#[test]
fn ring_all_rings_everyone_and_the_first_answer_wins() {
    let mut acd = Acd::new();
    set_queue(
        &mut acd,
        queue_with("q", |q| q.strategy = Strategy::RingAll),
    );
    for (i, agent) in ["a1", "a2", "a3"].iter().enumerate() {
        login(&mut acd, agent, &["support"], i as u64);
    }
    let events = arrive(&mut acd, "c1", "q", 10, |_| ());
    assert_eq!(offers(&events), [("c1", "a1"), ("c1", "a2"), ("c1", "a3")]);
    // One declines: the others keep ringing.
    ok(
        &mut acd,
        Command::OfferFailed {
            call: "c1".into(),
            agent: "a1".into(),
            failure: OfferFailure::Rejected,
            at: 11,
        },
    );
    assert_eq!(acd.waiting_position("c1"), None);
    let events = connect(&mut acd, "c1", "a3", 12);
    assert!(events.contains(&Event::OfferRevoked {
        call: "c1".into(),
        agent: "a2".into(),
        reason: RevokeReason::AnsweredElsewhere
    }));
    assert_eq!(acd.agent_state("a2"), Some(&AgentState::Ready));
    // Nobody answering: all are revoked, the call goes back to the head, nobody is
    // blamed.
    let events = arrive(&mut acd, "c2", "q", 20, |_| ());
    assert_eq!(offers(&events), [("c2", "a2")]);
    let events = tick(&mut acd, 20 + RING_MS);
    assert!(events.contains(&Event::OfferRevoked {
        call: "c2".into(),
        agent: "a2".into(),
        reason: RevokeReason::RingTimeout
    }));
}

#[test]
fn n_missed_offers_send_the_agent_not_ready() {
    let mut acd = acd();
    let settings = RoutingSettings {
        missed_offers_max: 2,
        ..RoutingSettings::default()
    };
    ok(&mut acd, Command::ConfigureRouting { settings, at: 0 });
    login(&mut acd, "a1", &["support"], 0);
    enqueue(&mut acd, "c1", "support", 10);
    // First miss: back to ready, and offered again.
    let events = tick(&mut acd, 10 + RING_MS);
    assert_eq!(offers(&events), [("c1", "a1")]);
    let events = tick(&mut acd, 10 + 2 * RING_MS);
    assert!(offers(&events).is_empty());
    assert_eq!(acd.agent_state("a1"), Some(&not_ready("no-answer")));
    // An answer resets the count.
    ok(
        &mut acd,
        Command::AgentReady {
            agent: "a1".into(),
            at: 5_000,
        },
    );
    tick(&mut acd, 5_000 + RING_MS);
    connect(&mut acd, "c1", "a1", 7_000);
    assert_eq!(acd.roster.get("a1").map(|a| a.missed), Some(0));
}

#[test]
fn supervisors_force_states() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support"], 0);
    login(&mut acd, "a2", &["support"], 1);
    enqueue(&mut acd, "c1", "support", 10);
    enqueue(&mut acd, "c2", "support", 11);
    connect(&mut acd, "c2", "a2", 12);
    let force = |acd: &mut Acd, agent: &str, state: ForcedState| {
        ok(
            acd,
            Command::ForceAgentState {
                agent: agent.into(),
                state,
                at: 20,
            },
        )
    };
    // Ringing: the offer is revoked and the call goes back to the head.
    let events = force(
        &mut acd,
        "a1",
        ForcedState::NotReady {
            reason: "meeting".into(),
        },
    );
    assert!(events.contains(&Event::OfferRevoked {
        call: "c1".into(),
        agent: "a1".into(),
        reason: RevokeReason::Supervisor
    }));
    assert_eq!(acd.waiting_position("c1"), Some(1));
    assert_eq!(acd.agent_state("a1"), Some(&not_ready("meeting")));
    // On a call: applied when the call ends.
    force(
        &mut acd,
        "a2",
        ForcedState::NotReady {
            reason: "coaching".into(),
        },
    );
    end(&mut acd, "c2", 30);
    assert_eq!(acd.agent_state("a2"), Some(&not_ready("coaching")));
    let events = force(&mut acd, "a1", ForcedState::Ready);
    assert_eq!(offers(&events), [("c1", "a1")]);
    force(&mut acd, "a2", ForcedState::LoggedOut);
    assert_eq!(acd.agent_state("a2"), Some(&AgentState::LoggedOut));
    let err = acd.apply(Command::ForceAgentState {
        agent: "a2".into(),
        state: ForcedState::Ready,
        at: 40,
    });
    assert!(matches!(err, Err(RoutingError::AgentInvalidState { .. })));
}

#[test]
fn a_vip_waits_for_their_agent_then_gets_raised_priority() {
    let mut acd = acd();
    let vip = Vip {
        agent: "manager".into(),
        wait_ms: 10_000,
        priority: 9,
    };
    ok(
        &mut acd,
        Command::SetVip {
            caller: "+1999".into(),
            vip: Some(vip),
            at: 0,
        },
    );
    login(&mut acd, "manager", &["support"], 0);
    login(&mut acd, "other", &["support"], 1);
    enqueue(&mut acd, "c1", "support", 5);
    connect(&mut acd, "c1", "manager", 6);
    // "other" is free but the VIP waits for the manager.
    let events = arrive(&mut acd, "vip", "support", 100, |a| {
        a.caller = "+1999".into()
    });
    assert!(offers(&events).is_empty());
    // A later normal call is not held back by the waiting VIP.
    assert_eq!(
        offers(&enqueue(&mut acd, "normal", "support", 200)),
        [("normal", "other")]
    );
    connect(&mut acd, "normal", "other", 201);
    enqueue(&mut acd, "normal2", "support", 300);
    assert_eq!(acd.waiting_position("vip"), Some(1));
    assert_eq!(acd.call_priority("vip"), Some(0));
    tick(&mut acd, 10_100);
    assert_eq!(acd.call_priority("vip"), Some(9));
    assert_eq!(acd.waiting_position("vip"), Some(1));
    // Now any agent will do.
    end(&mut acd, "normal", 10_200);
    assert_eq!(offers(&tick(&mut acd, 10_700)), [("vip", "other")]);
    ok(
        &mut acd,
        Command::SetVip {
            caller: "+1999".into(),
            vip: None,
            at: 10_900,
        },
    );
    assert_eq!(acd.vip("+1999"), None);
}

#[test]
fn last_agent_affinity_prefers_the_previous_agent_briefly() {
    let mut acd = acd();
    let settings = RoutingSettings {
        affinity_days: 7,
        affinity_wait_ms: 5_000,
        ..RoutingSettings::default()
    };
    ok(&mut acd, Command::ConfigureRouting { settings, at: 0 });
    login(&mut acd, "a1", &["support"], 0);
    login(&mut acd, "a2", &["support"], 1);
    arrive(&mut acd, "first", "support", 10, |a| {
        a.caller = "+1444".into()
    });
    assert_eq!(acd.agent_state("a1"), Some(&reserved("first")));
    ok(
        &mut acd,
        Command::OfferFailed {
            call: "first".into(),
            agent: "a1".into(),
            failure: OfferFailure::Rejected,
            at: 11,
        },
    );
    connect(&mut acd, "first", "a2", 12);
    end(&mut acd, "first", 100);
    assert_eq!(acd.last_agent_of("+1444"), Some("a2"));
    ok(
        &mut acd,
        Command::AgentReady {
            agent: "a1".into(),
            at: 50,
        },
    );
    // a1 is free, but the caller waits for a2 (wrapping up until 600).
    let events = arrive(&mut acd, "again", "support", 200, |a| {
        a.caller = "+1444".into()
    });
    assert!(offers(&events).is_empty());
    assert_eq!(offers(&tick(&mut acd, 600)), [("again", "a2")]);
    // After the window, normal routing.
    connect(&mut acd, "again", "a2", 601);
    arrive(&mut acd, "third", "support", 700, |a| {
        a.caller = "+1444".into()
    });
    assert!(acd.waiting_position("third").is_some());
    assert_eq!(offers(&tick(&mut acd, 5_700)), [("third", "a1")]);
}

fn records_of(events: &[Event]) -> Vec<(&str, Disposition, Option<&str>)> {
    records(events)
        .into_iter()
        .map(|r| (r.call.as_str(), r.disposition.clone(), r.cause.as_deref()))
        .collect()
}

#[test]
fn after_hours_calls_take_the_queue_action() {
    let mut acd = Acd::new();
    let schedule = Schedule {
        time_zone: "UTC".into(),
        hours: vec![OpenHours {
            weekday: 1,
            open_min: 9 * 60,
            close_min: 17 * 60,
        }],
        holidays: vec![],
    };
    set_queue(
        &mut acd,
        queue_with("q", |q| {
            q.schedule = Some(schedule);
            q.after_hours_action = ExitAction::Voicemail {
                mailbox: "support".into(),
            };
        }),
    );
    // Monday 2024-01-01 08:00 UTC = 1704096000000.
    let monday_8 = 1_704_096_000_000;
    let events = arrive(&mut acd, "early", "q", monday_8, |_| ());
    assert!(events.contains(&Event::CallExited {
        call: "early".into(),
        owner: 1,
        action: ExitAction::Voicemail {
            mailbox: "support".into()
        },
        reason: ExitReason::AfterHours
    }));
    assert_eq!(
        records_of(&events),
        [("early", Disposition::Voicemail, Some("after-hours"))]
    );
    arrive(&mut acd, "open", "q", monday_8 + 3_600_000, |_| ());
    assert_eq!(acd.waiting_position("open"), Some(1));
    let bad = queue_with("q", |q| {
        q.schedule = Some(Schedule {
            time_zone: "Nowhere/City".into(),
            hours: vec![],
            holidays: vec![],
        })
    });
    assert!(acd
        .apply(Command::ConfigureQueue { queue: bad, at: 0 })
        .is_err());
}

#[test]
fn overflow_by_wait_and_by_no_agents_keeps_arrival() {
    let mut acd = Acd::new();
    set_queue(
        &mut acd,
        queue_with("first", |q| {
            q.skill = "rare".into();
            q.overflow_after_ms = 1_000;
            q.overflow_to = "second".into();
        }),
    );
    set_queue(&mut acd, queue_with("second", |_| ()));
    set_queue(
        &mut acd,
        queue_with("empty", |q| {
            q.skill = "nobody".into();
            q.overflow_when_no_agents = true;
            q.overflow_to = "second".into();
        }),
    );
    arrive(&mut acd, "old", "first", 0, |_| ());
    arrive(&mut acd, "mid", "second", 500, |_| ());
    let events = arrive(&mut acd, "moved-now", "empty", 600, |_| ());
    assert!(events.contains(&Event::CallMoved {
        call: "moved-now".into(),
        from: "empty".into(),
        to: "second".into(),
        reason: ExitReason::NoAgents
    }));
    let events = tick(&mut acd, 1_000);
    assert!(events.contains(&Event::CallMoved {
        call: "old".into(),
        from: "first".into(),
        to: "second".into(),
        reason: ExitReason::OverflowWait
    }));
    // "old" keeps its arrival: it is ahead of calls that came to "second" after it.
    assert_eq!(acd.waiting_position("old"), Some(1));
    assert_eq!(acd.waiting_position("mid"), Some(2));
    assert_eq!(acd.call_queue("old"), Some("second"));
    login(&mut acd, "a1", &["support"], 1_100);
    connect(&mut acd, "old", "a1", 1_200);
    let record = records(&end(&mut acd, "old", 1_300))[0].clone();
    assert_eq!(
        (record.queue.as_str(), record.first_queue.as_deref()),
        ("second", Some("first"))
    );
    assert_eq!(record.arrived_at, 0);
}

#[test]
fn max_wait_and_queue_full_exit() {
    let mut acd = Acd::new();
    set_queue(
        &mut acd,
        queue_with("q", |q| {
            q.max_wait_ms = 5_000;
            q.max_wait_action = ExitAction::Voicemail {
                mailbox: "q".into(),
            };
            q.queue_len_max = 2;
            q.queue_full_action = ExitAction::Hangup {
                prompt: "busy".into(),
            };
        }),
    );
    arrive(&mut acd, "c1", "q", 0, |_| ());
    arrive(&mut acd, "c2", "q", 1_000, |_| ());
    let events = arrive(&mut acd, "c3", "q", 2_000, |_| ());
    assert_eq!(
        records_of(&events),
        [("c3", Disposition::Refused, Some("queue-full"))]
    );
    let events = tick(&mut acd, 5_000);
    assert_eq!(
        records_of(&events),
        [("c1", Disposition::Voicemail, Some("max-wait"))]
    );
    assert_eq!(acd.waiting_position("c2"), Some(1));
    let totals = acd.stats().totals;
    assert_eq!((totals.entered, totals.exited), (3, 2));
}

#[test]
fn wait_estimate_uses_recent_handle_times_and_staffed_agents() {
    let mut acd = Acd::new();
    set_queue(&mut acd, queue_with("q", |q| q.wrapup_ms = 0));
    login(&mut acd, "a1", &["support"], 0);
    login(&mut acd, "a2", &["support"], 0);
    arrive(&mut acd, "c1", "q", 0, |_| ());
    assert_eq!(acd.wait_estimate("c1"), None, "being offered, not waiting");
    connect(&mut acd, "c1", "a1", 0);
    end(&mut acd, "c1", 60_000);
    for call in ["x", "y"] {
        let events = arrive(&mut acd, call, "q", 60_001, |_| ());
        let agent = offers(&events)[0].1.to_owned();
        connect(&mut acd, call, &agent, 60_001);
    }
    arrive(&mut acd, "w1", "q", 60_002, |_| ());
    arrive(&mut acd, "w2", "q", 60_003, |_| ());
    assert_eq!(
        acd.wait_estimate("w2"),
        Some(WaitEstimate {
            position: 2,
            expected_wait_ms: Some(60_000)
        })
    );
}

#[test]
fn a_callback_keeps_its_place_and_retries_with_a_gap() {
    let mut acd = Acd::new();
    set_queue(
        &mut acd,
        queue_with("q", |q| {
            q.callback_attempts_max = 2;
            q.callback_gap_ms = 60_000;
        }),
    );
    arrive(&mut acd, "cb", "q", 0, |_| ());
    arrive(&mut acd, "later", "q", 10, |_| ());
    ok(
        &mut acd,
        Command::RequestCallback {
            call: "cb".into(),
            number: "+1777".into(),
            at: 20,
        },
    );
    assert_eq!(acd.waiting_position("cb"), Some(1));
    let events = login(&mut acd, "a1", &["support"], 100);
    assert!(events.contains(&Event::CallbackOffered {
        call: "cb".into(),
        agent: "a1".into(),
        number: "+1777".into(),
        owner: 1,
        agent_node: 1,
        attempt: 1
    }));
    connect(&mut acd, "cb", "a1", 110);
    // The customer does not answer: the agent is free, "later" goes, cb waits the gap.
    let events = ok(
        &mut acd,
        Command::CallbackNoAnswer {
            call: "cb".into(),
            at: 130,
        },
    );
    assert_eq!(offers(&events), [("later", "a1")]);
    connect(&mut acd, "later", "a1", 140);
    end(&mut acd, "later", 150);
    assert_eq!(acd.waiting_position("cb"), Some(1));
    assert!(tick(&mut acd, 60_129)
        .iter()
        .all(|e| !matches!(e, Event::CallbackOffered { .. })));
    let events = tick(&mut acd, 60_130);
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::CallbackOffered { attempt: 2, .. })));
    connect(&mut acd, "cb", "a1", 60_140);
    let events = ok(
        &mut acd,
        Command::CallbackNoAnswer {
            call: "cb".into(),
            at: 60_150,
        },
    );
    let record = records(&events)[0];
    assert_eq!(record.disposition, Disposition::CallbackUnanswered);
    assert_eq!(
        (record.callback_number.as_deref(), record.callback_attempts),
        (Some("+1777"), 2)
    );
}

#[test]
fn live_changes_do_not_disturb_calls_in_progress() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support"], 0);
    enqueue(&mut acd, "c1", "support", 1);
    connect(&mut acd, "c1", "a1", 2);
    enqueue(&mut acd, "c2", "support", 3);
    ok(
        &mut acd,
        Command::SetAgentSkills {
            agent: "a1".into(),
            skills: vec!["sales:7".into()],
            at: 4,
        },
    );
    set_queue(&mut acd, queue_with("support", |q| q.wrapup_ms = 0));
    assert_eq!(
        acd.agent_state("a1"),
        Some(&AgentState::OnCall { call: "c1".into() })
    );
    assert_eq!(
        acd.agent_skills("a1").and_then(|s| s.get("sales")),
        Some(&7)
    );
    assert_eq!(acd.waiting_position("c2"), Some(1));
    // a1 no longer has the skill: ready, but c2 stays in line.
    end(&mut acd, "c1", 5);
    assert_eq!(acd.agent_state("a1"), Some(&AgentState::Ready));
    assert_eq!(acd.waiting_position("c2"), Some(1));
}

#[test]
fn postcard_snapshot_round_trip() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support:4"], 0);
    ok(
        &mut acd,
        Command::SetVip {
            caller: "v".into(),
            vip: Some(Vip::default()),
            at: 0,
        },
    );
    enqueue(&mut acd, "c1", "support", 1);
    enqueue(&mut acd, "c2", "support", 2);
    ok(
        &mut acd,
        Command::RequestCallback {
            call: "c2".into(),
            number: "9".into(),
            at: 3,
        },
    );
    let bytes = postcard::to_stdvec(&acd).expect("serializable");
    let back: Acd = postcard::from_bytes(&bytes).expect("deserializable");
    assert_eq!(back, acd);
    assert_eq!(back.state_hash(), acd.state_hash());
}

#[test]
fn a_take_over_frees_the_agent_while_the_call_goes_on_and_its_record_says_who() {
    let mut acd = acd();
    login(&mut acd, "a1", &["support"], 0);
    enqueue(&mut acd, "c1", "support", 10);
    connect(&mut acd, "c1", "a1", 20);
    let take = |at| Command::TakenOver {
        call: "c1".into(),
        supervisor: "9001".into(),
        at,
    };
    ok(&mut acd, take(1_000));
    // The agent is in wrap-up as after any call; the call is still live.
    assert!(matches!(
        acd.agent_state("a1"),
        Some(AgentState::WrapUp { .. })
    ));
    assert_eq!(acd.call_owner("c1"), Some(1));
    assert!(acd.apply(take(1_100)).is_err(), "only once");
    // Once free, the agent takes the next call while the first goes on.
    tick(&mut acd, 1_600);
    assert_eq!(acd.agent_state("a1"), Some(&AgentState::Ready));
    let events = enqueue(&mut acd, "c2", "support", 1_700);
    assert_eq!(offers(&events), vec![("c2", "a1")]);
    connect(&mut acd, "c2", "a1", 1_800);
    let events = end(&mut acd, "c1", 5_000);
    let record = records(&events)[0];
    assert_eq!(record.disposition, Disposition::Answered);
    assert_eq!(record.agent.as_deref(), Some("a1"));
    assert_eq!(record.cause.as_deref(), Some("taken-over-by:9001"));
    // Ending the taken-over call did not touch the agent's new call.
    assert_eq!(
        acd.agent_state("a1"),
        Some(&AgentState::OnCall { call: "c2".into() })
    );
    // A call not connected cannot be taken over.
    enqueue(&mut acd, "c3", "support", 6_000);
    let refused = acd.apply(Command::TakenOver {
        call: "c3".into(),
        supervisor: "9001".into(),
        at: 6_001,
    });
    assert!(refused.is_err());
}
