//! Each invariant fed a bad history must name it: the checker cannot pass vacuously.

use carillon_consensus::state_machine::AppliedEntry;
use carillon_consensus::types::{Applied, Proposal};
use carillon_routing::{AgentState, Arrival, Command, Event};

use super::{Checks, End, Observation};

fn entry(index: u64, command: Command, events: Vec<Event>) -> AppliedEntry {
    AppliedEntry {
        index,
        proposal: Proposal::Routing(command),
        applied: Applied {
            events,
            refused: None,
        },
    }
}

fn enqueue(call: &str, priority: u32) -> Command {
    Command::Enqueue(Arrival {
        call: call.into(),
        queue: "q".into(),
        priority,
        ..Arrival::default()
    })
}

fn tick() -> Command {
    Command::Tick { at: 0 }
}

fn broken(checks: &Checks) -> Vec<&'static str> {
    checks.violations.iter().map(|v| v.invariant).collect()
}

#[test]
fn two_leaders_in_one_term_are_caught() {
    let mut c = Checks::default();
    c.observe(0, &Observation::Leader { node: 1, term: 3 });
    c.observe(0, &Observation::Leader { node: 2, term: 4 });
    assert!(c.violations.is_empty());
    c.observe(0, &Observation::Leader { node: 3, term: 4 });
    assert_eq!(broken(&c), ["one_leader_per_term"]);
}

#[test]
fn a_changed_committed_entry_is_caught() {
    let mut c = Checks::default();
    let a = Proposal::Routing(tick());
    let b = Proposal::Routing(Command::Tick { at: 5 });
    c.observe(
        0,
        &Observation::Applied {
            node: 1,
            index: 7,
            proposal: &a,
        },
    );
    c.observe(
        0,
        &Observation::Applied {
            node: 2,
            index: 7,
            proposal: &a,
        },
    );
    assert!(c.violations.is_empty());
    c.observe(
        0,
        &Observation::Applied {
            node: 3,
            index: 7,
            proposal: &b,
        },
    );
    assert_eq!(broken(&c), ["committed_entries_never_change"]);
}

#[test]
fn replicas_that_disagree_are_caught() {
    let mut c = Checks::default();
    c.observe(
        0,
        &Observation::Hash {
            node: 1,
            index: 9,
            hash: 1,
        },
    );
    c.observe(
        0,
        &Observation::Hash {
            node: 2,
            index: 10,
            hash: 2,
        },
    );
    c.observe(
        0,
        &Observation::Hash {
            node: 2,
            index: 9,
            hash: 3,
        },
    );
    assert_eq!(broken(&c), ["replicas_agree"]);
}

#[test]
fn an_agent_on_two_calls_is_caught() {
    let mut c = Checks::default();
    let take = |call: &str| Event::AgentStateChanged {
        agent: "a1".into(),
        state: AgentState::Reserved { call: call.into() },
    };
    c.observe(
        0,
        &Observation::Committed(&entry(1, tick(), vec![take("c1")])),
    );
    c.observe(
        0,
        &Observation::Committed(&entry(2, tick(), vec![take("c2")])),
    );
    assert_eq!(broken(&c), ["no_agent_on_two_calls"]);
}

#[test]
fn a_second_terminal_record_and_a_call_never_ended_are_caught() {
    let mut c = Checks::default();
    let fin = |call: &str| {
        Event::CallFinished(carillon_routing::CallRecord {
            call: call.into(),
            ..record_template()
        })
    };
    c.observe(
        0,
        &Observation::Committed(&entry(1, enqueue("c1", 0), vec![])),
    );
    c.observe(
        0,
        &Observation::Committed(&entry(2, enqueue("c2", 0), vec![])),
    );
    c.observe(
        0,
        &Observation::Committed(&entry(3, tick(), vec![fin("c1")])),
    );
    assert!(c.violations.is_empty());
    c.observe(
        0,
        &Observation::Committed(&entry(4, tick(), vec![fin("c1")])),
    );
    assert_eq!(broken(&c), ["one_terminal_record"]);
    c.finish(0, &End::default());
    // c2 never ended.
    assert_eq!(broken(&c), ["one_terminal_record", "one_terminal_record"]);
}

#[test]
fn a_call_offered_out_of_arrival_order_is_caught() {
    let mut c = Checks::default();
    let offer = |call: &str| Event::Offered {
        call: call.into(),
        agent: "a1".into(),
        ring_timeout_ms: 1,
        owner: 1,
        agent_node: 1,
    };
    c.observe(
        0,
        &Observation::Committed(&entry(1, enqueue("c1", 0), vec![])),
    );
    c.observe(
        0,
        &Observation::Committed(&entry(2, enqueue("c2", 1), vec![])),
    );
    c.observe(
        0,
        &Observation::Committed(&entry(3, enqueue("c3", 0), vec![])),
    );
    // Another priority may go first.
    c.observe(
        0,
        &Observation::Committed(&entry(4, tick(), vec![offer("c2")])),
    );
    assert!(c.violations.is_empty());
    c.observe(
        0,
        &Observation::Committed(&entry(5, tick(), vec![offer("c3")])),
    );
    assert_eq!(broken(&c), ["arrival_order"]);
}

#[test]
fn a_post_heal_call_never_answered_is_caught() {
    let mut c = Checks::default();
    c.observe(
        0,
        &Observation::Committed(&entry(
            1,
            tick(),
            vec![Event::Connected {
                call: "h0".into(),
                agent: "a1".into(),
            }],
        )),
    );
    c.finish(
        0,
        &End {
            post_heal_calls: vec!["h0".into(), "h1".into()],
        },
    );
    assert_eq!(broken(&c), ["routing_resumed"]);
}

fn record_template() -> carillon_routing::CallRecord {
    carillon_routing::CallRecord {
        call: String::new(),
        caller: String::new(),
        dialled: String::new(),
        queue: "q".into(),
        agent: None,
        arrived_at: 0,
        offered_at: None,
        answered_at: None,
        ended_at: 0,
        wait_ms: 0,
        disposition: carillon_routing::Disposition::Answered,
        hangup_by: carillon_routing::Party::Caller,
        cause: None,
        offers: 0,
        position_at_end: None,
        priority: 0,
        first_queue: None,
        callback_number: None,
        callback_attempts: 0,
    }
}
