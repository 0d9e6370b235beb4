//! Unit tests for the ACD: one per routing rule, plus errors, stats and snapshots.

use super::*;
use crate::event::{CallRecord, Disposition};

const RING_MS: u64 = 1_000;

fn configure(acd: &mut Acd, name: &str, skill: &str, wrapup_ms: u64) {
    let queue = QueueConfig {
        name: name.into(),
        skill: skill.into(),
        wrapup_ms,
        ring_timeout_ms: RING_MS,
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
            at,
        },
    )
}

fn enqueue(acd: &mut Acd, call: &str, queue: &str, at: Millis) -> Vec<Event> {
    ok(
        acd,
        Command::Enqueue {
            call: call.into(),
            queue: queue.into(),
            caller: format!("caller-{call}"),
            dialled: "100".into(),
            at,
        },
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
    };
    let events = ok(&mut acd, Command::ConfigureQueue { queue, at: 4 });
    assert_eq!(
        events.first(),
        Some(&Event::Offered {
            call: "c1".into(),
            agent: "a1".into(),
            ring_timeout_ms: 2_000
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
            Command::Enqueue {
                call: "c1".into(),
                queue: "support".into(),
                caller: "x".into(),
                dialled: "y".into(),
                at: 99,
            },
            "DuplicateCall",
        ),
        (
            Command::Enqueue {
                call: "c9".into(),
                queue: "nowhere".into(),
                caller: "x".into(),
                dialled: "y".into(),
                at: 99,
            },
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
    });
    configure(&mut acd, "support", "support", 0);
    let before = acd.clone();
    let queue = QueueConfig {
        name: "sales".into(),
        skill: "sales".into(),
        wrapup_ms: 0,
        ring_timeout_ms: 1,
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
        at: 2,
    });
    assert!(matches!(err, Err(RoutingError::LimitReached { .. })));
    enqueue(&mut acd, "c1", "support", 3);
    let err = acd.apply(Command::Enqueue {
        call: "c2".into(),
        queue: "support".into(),
        caller: String::new(),
        dialled: String::new(),
        at: 4,
    });
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
