//! Unit tests for the call-control commands: transfers, pick-up, click-to-dial and the
//! live blacklist.

use super::*;
use crate::command::Arrival;
use crate::event::Disposition;

fn acd() -> Acd {
    let mut acd = Acd::new();
    for (name, wrapup_ms) in [("support", 500), ("sales", 0)] {
        let queue = QueueConfig {
            name: name.into(),
            skill: "support".into(),
            wrapup_ms,
            ring_timeout_ms: 1_000,
            ..QueueConfig::default()
        };
        ok(&mut acd, Command::ConfigureQueue { queue, at: 0 });
    }
    acd
}

fn ok(acd: &mut Acd, cmd: Command) -> Vec<Event> {
    let text = format!("{cmd:?}");
    let events = acd
        .apply(cmd)
        .unwrap_or_else(|e| panic!("{text} was refused: {e}"));
    acd.check_invariants()
        .unwrap_or_else(|e| panic!("after {text}: {e}"));
    events
}

fn login(acd: &mut Acd, agent: &str, at: Millis) {
    ok(
        acd,
        Command::AgentLogin {
            agent: agent.into(),
            skills: vec!["support".into()],
            node: 1,
            site: "hq".into(),
            at,
        },
    );
}

fn enqueue(acd: &mut Acd, call: &str, at: Millis) -> Vec<Event> {
    ok(
        acd,
        Command::Enqueue(Arrival {
            call: call.into(),
            queue: "support".into(),
            caller: format!("caller-{call}"),
            owner: 1,
            site: "hq".into(),
            at,
            ..Arrival::default()
        }),
    )
}

fn connect(acd: &mut Acd, call: &str, agent: &str, at: Millis) {
    ok(
        acd,
        Command::Connected {
            call: call.into(),
            agent: agent.into(),
            at,
        },
    );
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

fn not_ready(acd: &mut Acd, agent: &str, at: Millis) {
    ok(
        acd,
        Command::AgentNotReady {
            agent: agent.into(),
            reason: "break".into(),
            at,
        },
    );
}

#[test]
fn transfer_to_queue_keeps_the_arrival_and_wraps_the_agent_up() {
    let mut acd = acd();
    login(&mut acd, "a1", 1);
    assert_eq!(offers(&enqueue(&mut acd, "c1", 10)), [("c1", "a1")]);
    connect(&mut acd, "c1", "a1", 20);
    // c2 arrives after c1 and waits in sales (nobody is free).
    ok(
        &mut acd,
        Command::Enqueue(Arrival {
            call: "c2".into(),
            queue: "sales".into(),
            owner: 1,
            site: "hq".into(),
            at: 30,
            ..Arrival::default()
        }),
    );
    let events = ok(
        &mut acd,
        Command::TransferToQueue {
            call: "c1".into(),
            queue: "sales".into(),
            at: 100,
        },
    );
    assert!(offers(&events).is_empty());
    assert_eq!(
        acd.agent_state("a1"),
        Some(&AgentState::WrapUp { until: 600 })
    );
    assert_eq!(acd.call_queue("c1"), Some("sales"));
    // c1 called first, so it is ahead of c2 in sales.
    assert_eq!(acd.waiting_position("c1"), Some(1));
    assert_eq!(acd.waiting_position("c2"), Some(2));
    login(&mut acd, "a2", 200);
    let events = ok(&mut acd, Command::Tick { at: 200 });
    let _ = events;
    // a2 logged in ready: the login's own pass offered c1.
    assert_eq!(
        acd.agent_state("a2"),
        Some(&AgentState::Reserved { call: "c1".into() })
    );
    connect(&mut acd, "c1", "a2", 250);
    let events = ok(
        &mut acd,
        Command::Ended {
            call: "c1".into(),
            by: Party::Caller,
            at: 300,
        },
    );
    let Some(Event::CallFinished(rec)) =
        events.iter().find(|e| matches!(e, Event::CallFinished(_)))
    else {
        panic!("no record: {events:?}");
    };
    assert_eq!(rec.arrived_at, 10);
    assert_eq!(rec.queue, "sales");
    assert_eq!(rec.first_queue.as_deref(), Some("support"));
    assert_eq!(rec.agent.as_deref(), Some("a2"));
    // Only a connected call is transferred.
    let err = acd.apply(Command::TransferToQueue {
        call: "c2".into(),
        queue: "support".into(),
        at: 400,
    });
    assert!(
        matches!(err, Err(RoutingError::CallInvalidState { .. })),
        "{err:?}"
    );
}

#[test]
fn transfer_to_a_ready_agent_offers_them_alone() {
    let mut acd = acd();
    login(&mut acd, "a1", 1);
    enqueue(&mut acd, "c1", 10);
    connect(&mut acd, "c1", "a1", 20);
    login(&mut acd, "a2", 30);
    login(&mut acd, "a3", 25);
    let events = ok(
        &mut acd,
        Command::TransferToAgent {
            call: "c1".into(),
            agent: "a2".into(),
            wait_ms: 5_000,
            at: 100,
        },
    );
    // a3 is idle longer, but the transfer names a2.
    assert_eq!(offers(&events), [("c1", "a2")]);
    assert_eq!(
        acd.agent_state("a1"),
        Some(&AgentState::WrapUp { until: 600 })
    );
}

#[test]
fn transfer_to_a_busy_agent_waits_for_them_then_for_anyone() {
    let mut acd = acd();
    login(&mut acd, "a1", 1);
    login(&mut acd, "a2", 2);
    enqueue(&mut acd, "c1", 10);
    connect(&mut acd, "c1", "a1", 20);
    not_ready(&mut acd, "a2", 30);
    login(&mut acd, "a3", 40);
    let events = ok(
        &mut acd,
        Command::TransferToAgent {
            call: "c1".into(),
            agent: "a2".into(),
            wait_ms: 5_000,
            at: 100,
        },
    );
    // a3 is ready but the call waits for a2.
    assert!(offers(&events).is_empty(), "{events:?}");
    let events = ok(
        &mut acd,
        Command::AgentReady {
            agent: "a2".into(),
            at: 1_000,
        },
    );
    assert_eq!(offers(&events), [("c1", "a2")]);
    // Had a2 not come back within the wait, anyone would do.
    let mut acd2 = acd_with_busy_target();
    let events = ok(&mut acd2, Command::Tick { at: 5_200 });
    assert_eq!(offers(&events), [("c1", "a3")]);
}

/// c1 transferred at 100 to a2 (not ready) with a 5 s wait; a3 ready.
fn acd_with_busy_target() -> Acd {
    let mut acd = acd();
    login(&mut acd, "a1", 1);
    login(&mut acd, "a2", 2);
    enqueue(&mut acd, "c1", 10);
    connect(&mut acd, "c1", "a1", 20);
    not_ready(&mut acd, "a2", 30);
    login(&mut acd, "a3", 40);
    ok(
        &mut acd,
        Command::TransferToAgent {
            call: "c1".into(),
            agent: "a2".into(),
            wait_ms: 5_000,
            at: 100,
        },
    );
    acd
}

#[test]
fn pickup_takes_a_ringing_call_from_another_agent() {
    let mut acd = acd();
    login(&mut acd, "a1", 1);
    login(&mut acd, "a2", 2);
    not_ready(&mut acd, "a2", 3);
    assert_eq!(offers(&enqueue(&mut acd, "c1", 10)), [("c1", "a1")]);
    let events = ok(
        &mut acd,
        Command::Pickup {
            call: "c1".into(),
            agent: "a2".into(),
            at: 20,
        },
    );
    assert!(events.iter().any(|e| matches!(e,
        Event::OfferRevoked { agent, reason: RevokeReason::PickedUp, .. } if agent == "a1")));
    assert_eq!(offers(&events), [("c1", "a2")]);
    assert_eq!(acd.agent_state("a1"), Some(&AgentState::Ready));
    connect(&mut acd, "c1", "a2", 30);
    // A connected call is not picked up.
    let err = acd.apply(Command::Pickup {
        call: "c1".into(),
        agent: "a1".into(),
        at: 40,
    });
    assert!(
        matches!(err, Err(RoutingError::CallInvalidState { .. })),
        "{err:?}"
    );
}

#[test]
fn pickup_takes_a_waiting_call_out_of_line() {
    let mut acd = acd();
    login(&mut acd, "a1", 1);
    not_ready(&mut acd, "a1", 2);
    enqueue(&mut acd, "c1", 10);
    assert_eq!(acd.queue_depth("support"), 1);
    let events = ok(
        &mut acd,
        Command::Pickup {
            call: "c1".into(),
            agent: "a1".into(),
            at: 20,
        },
    );
    assert_eq!(offers(&events), [("c1", "a1")]);
    assert_eq!(acd.queue_depth("support"), 0);
}

#[test]
fn outbound_call_ties_the_agent_up_and_leaves_a_record() {
    let mut acd = acd();
    login(&mut acd, "a1", 1);
    let start = |call: &str, at| Command::StartOutbound {
        call: call.into(),
        agent: "a1".into(),
        number: "5550100".into(),
        owner: 1,
        site: "hq".into(),
        at,
    };
    ok(&mut acd, start("o1", 10));
    assert_eq!(
        acd.agent_state("a1"),
        Some(&AgentState::OnCall { call: "o1".into() })
    );
    // Busy: no ACD call, and no second outbound call.
    assert!(offers(&enqueue(&mut acd, "c1", 20)).is_empty());
    assert!(acd.apply(start("o2", 25)).is_err());
    let events = ok(
        &mut acd,
        Command::Ended {
            call: "o1".into(),
            by: Party::Agent,
            at: 100,
        },
    );
    let Some(Event::CallFinished(rec)) =
        events.iter().find(|e| matches!(e, Event::CallFinished(_)))
    else {
        panic!("no record: {events:?}");
    };
    assert_eq!(rec.disposition, Disposition::Answered);
    assert_eq!(rec.dialled, "5550100");
    assert_eq!(rec.queue, "");
    // Back to ready at once (no queue, no wrap-up): the waiting call is offered.
    assert_eq!(offers(&events), [("c1", "a1")]);
}

#[test]
fn blacklist_changes_are_state_and_bounded() {
    let mut acd = acd();
    let before = acd.state_hash();
    ok(
        &mut acd,
        Command::SetBlacklist {
            caller: "666".into(),
            blocked: false,
            at: 1,
        },
    );
    ok(
        &mut acd,
        Command::SetBlacklist {
            caller: "777".into(),
            blocked: true,
            at: 2,
        },
    );
    assert_eq!(acd.blacklisted("777"), Some(true));
    assert_eq!(acd.blacklisted("666"), Some(false));
    assert_eq!(acd.blacklisted("888"), None);
    assert_ne!(acd.state_hash(), before);
    // A snapshot carries it.
    let json = serde_json::to_string(&acd).expect("serialize");
    let back: Acd = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back.state_hash(), acd.state_hash());
}
