//! Supervisor listen, whisper, barge and take-over through a real node. Caller, agent and
//! supervisor are small SIP user agents written here (UDP SIP, G.711 RTP), because each
//! must report what it *hears*: each sends its own tone (caller 440 Hz, agent 1 kHz,
//! supervisor 1.7 kHz) and a Goertzel measure of the audio it receives shows whom it hears.
//! Agent and supervisor register with SIPp (digest auth) for the UA's port.
//!
//! From the phone: the supervisor dials `*81<agent>`, then switches by RFC 4733 keys (2
//! whisper, 3 barge, 1 monitor, 4 take over). From the API: `carillon ctl supervise` rings
//! the supervisor's phone, switches mode, and an agent token is refused (and audited).

// These tests wait on real processes in wall-clock time.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use toml::{Table, Value as Toml};

use crate::harness::{cdr_str, ctl, Grant, Node, NodeSpec};
use crate::tone_ua::{get_metrics, register_ua, Ua, AGENT_HZ, CALLER_HZ, THIRD_HZ};

const SUPERVISOR: &str = "9001";
const SUPERVISOR_TOKEN: &str = "sup-test-supervisor-token";
const AGENT_TOKEN: &str = "sup-test-agent-1001-token";
const ADMIN_TOKEN: &str = "sup-test-admin-token";

/// The test cast plus supervisor 9001 and API tokens.
fn spec() -> NodeSpec {
    let mut spec = NodeSpec::for_test();
    let mut sup = Table::new();
    sup.insert("id".into(), SUPERVISOR.into());
    sup.insert("password".into(), "sup9001".into());
    spec.insert("supervisors", Toml::Array(vec![Toml::Table(sup)]));
    spec.set_tokens([
        Grant::new(SUPERVISOR_TOKEN, "supervisor"),
        Grant::new(AGENT_TOKEN, "agent").agent("1001"),
        Grant::new(ADMIN_TOKEN, "admin"),
    ]);
    spec
}

/// The `carillon_supervisions_total` sample for `mode` in /metrics.
fn supervisions(node: &Node, mode: &str) -> u64 {
    let text = get_metrics(node);
    let wanted = format!("carillon_supervisions_total{{mode=\"{mode}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&wanted))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Caller on the line with agent 1001, both sending their tones; the supervisor's UA
/// registered. Returns (caller, agent, supervisor).
fn connected_call(node: &Node) -> (Ua, Ua, Ua) {
    let agent = Ua::new("1001", AGENT_HZ);
    register_ua(node, &agent, "1001", "pw1001");
    node.wait_until("1001 ready", Duration::from_secs(10), |n| {
        n.agents_in("ready") == 1
    });
    let supervisor = Ua::new(SUPERVISOR, THIRD_HZ);
    register_ua(node, &supervisor, SUPERVISOR, "sup9001");
    let caller = Ua::new("5551234", CALLER_HZ);
    let status = caller.invite(node.sip, "100");
    assert!(status.contains("200"), "caller: {status}");
    node.wait_until("1001 on the call", Duration::from_secs(10), |n| {
        n.agents_in("on_call") == 1
    });
    // Supervisors are not agents: still only the one agent on the books.
    assert_eq!(node.agents_in("ready"), 0);
    (caller, agent, supervisor)
}

#[test]
fn supervisor_phone_monitors_whispers_barges_and_takes_over_by_keys() {
    let node = Node::start(spec());
    let (caller, agent, supervisor) = connected_call(&node);
    caller.listen().expect("caller before", "a", &node);

    let status = supervisor.invite(node.sip, &format!("*81{}", "1001"));
    assert!(status.contains("200"), "supervisor: {status}");
    thread::sleep(Duration::from_millis(300));
    supervisor
        .listen()
        .expect("supervisor in monitor", "ca", &node);
    caller.listen().expect("caller in monitor", "a", &node);
    agent.listen().expect("agent in monitor", "c", &node);

    supervisor.key('2');
    agent.listen().expect("agent in whisper", "cs", &node);
    caller.listen().expect("caller in whisper", "a", &node);

    supervisor.key('3');
    caller.listen().expect("caller in barge", "as", &node);
    agent.listen().expect("agent in barge", "cs", &node);
    supervisor
        .listen()
        .expect("supervisor in barge", "ca", &node);

    supervisor.key('1');
    caller.listen().expect("caller back in monitor", "a", &node);
    agent.listen().expect("agent back in monitor", "c", &node);

    supervisor.key('4');
    node.wait_until("the agent's phone hung up", Duration::from_secs(5), |_| {
        agent.got_bye.load(Ordering::Relaxed)
    });
    caller.listen().expect("caller after take-over", "s", &node);
    supervisor
        .listen()
        .expect("supervisor after take-over", "c", &node);
    // Routing released the agent (wrap-up 0: ready) while the call goes on.
    node.wait_until("1001 free again", Duration::from_secs(5), |n| {
        n.agents_in("ready") == 1
    });
    assert_eq!(node.active_calls(), 1, "the call goes on");

    supervisor.bye(node.sip);
    node.wait_until(
        "the caller hung up by the node",
        Duration::from_secs(5),
        |_| caller.got_bye.load(Ordering::Relaxed),
    );
    let cdrs = node.wait_cdrs(1, Duration::from_secs(5));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "agent"), "1001", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "cause"), "taken-over-by:9001", "CDR: {cdr}");
    for mode in ["monitor", "whisper", "barge", "take-over"] {
        assert!(supervisions(&node, mode) >= 1, "no {mode} counted");
    }
}

#[test]
fn feature_code_refusals_name_the_reason() {
    let node = Node::start(spec());
    let supervisor = Ua::new(SUPERVISOR, THIRD_HZ);
    register_ua(&node, &supervisor, SUPERVISOR, "sup9001");
    // Agent 1002 is not on a call.
    let status = supervisor.invite(node.sip, "*821002");
    assert!(status.contains("404"), "{status}");
    // An unregistered phone claiming to be the supervisor.
    let impostor = Ua::new(SUPERVISOR, THIRD_HZ);
    let status = impostor.invite(node.sip, "*831001");
    assert!(status.contains("403"), "{status}");
}

#[test]
fn api_rings_the_supervisor_switches_mode_and_refuses_agents() {
    let node = Node::start(spec());
    let (caller, agent, supervisor) = connected_call(&node);
    let call = agent.call_header.lock().expect("lock").clone();
    assert!(!call.is_empty(), "the agent's INVITE named the call");
    let api = node.grpc_addr();
    let args = |mode: &str| {
        vec![
            "supervise".to_string(),
            mode.to_string(),
            "--call".into(),
            call.clone(),
            "--supervisor".into(),
            SUPERVISOR.into(),
        ]
    };
    let run = |token: &str, mode: &str| {
        let a = args(mode);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        ctl(api, Some(token), &a)
    };

    let (ok, _, err) = run(AGENT_TOKEN, "monitor");
    assert!(
        !ok && err.contains("PermissionDenied"),
        "agent token: {err}"
    );

    let (ok, out, err) = run(SUPERVISOR_TOKEN, "monitor");
    assert!(ok && out.contains("monitor"), "monitor: {out} {err}");
    supervisor
        .listen()
        .expect("supervisor in monitor", "ca", &node);
    caller.listen().expect("caller in monitor", "a", &node);

    let (ok, out, err) = run(SUPERVISOR_TOKEN, "whisper");
    assert!(ok && out.contains("whisper"), "whisper: {out} {err}");
    agent.listen().expect("agent in whisper", "cs", &node);
    caller.listen().expect("caller in whisper", "a", &node);

    let (ok, out, err) = run(SUPERVISOR_TOKEN, "take-over");
    assert!(ok && out.contains("take-over"), "take-over: {out} {err}");
    node.wait_until("the agent's phone hung up", Duration::from_secs(5), |_| {
        agent.got_bye.load(Ordering::Relaxed)
    });
    caller.listen().expect("caller after take-over", "s", &node);

    let (ok, out, _) = ctl(api, Some(ADMIN_TOKEN), &["audit", "list", "--json"]);
    assert!(ok, "audit list");
    assert!(
        out.contains("SupervisorService.Monitor") && out.contains("refused"),
        "the refusal is audited: {out}"
    );
    assert!(out.contains("SupervisorService.TakeOver"), "{out}");
}
