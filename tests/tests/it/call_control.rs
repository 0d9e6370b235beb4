//! Call control through the gRPC API against a real node, with SIPp callers, agent phones
//! and a SIPp UAS behind the gateway: hang-up, hold and resume, blind transfer to a queue
//! and to a number, click-to-dial, pick-up, refusals by ownership (and their audit
//! entries), the live blacklist, and `carillon ctl` for some of them.

// tonic's results carry `Status` by value; these tests wait on processes in wall-clock time.
#![allow(clippy::result_large_err, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use carillon_ops::api::v1 as pb;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::harness::{
    agents_csv, cdr_str, cdr_u64, ctl, free_port, register, Grant, Node, NodeSpec, Sipp,
    SippProcess,
};

const ADMIN: &str = "cc-admin-token";
const SUPERVISOR: &str = "cc-super-token";
const AGENT_1001: &str = "cc-agent-1001";
const AGENT_1002: &str = "cc-agent-1002";
const CALL_TIMEOUT_MS: u64 = 15_000;
/// How long the API holds the call in the hold test.
const HOLD_MS: u64 = 1_500;
/// Hold music packets (20 ms each) the caller must at least get in that hold.
const HOLD_MUSIC_PACKETS_MIN: u64 = 25;

/// The test cast, four API tokens, and the gateway at `gateway_port`.
fn spec(gateway_port: u16) -> NodeSpec {
    let mut spec = NodeSpec::for_test();
    spec.set_tokens([
        Grant::new(ADMIN, "admin").name("ops"),
        Grant::new(SUPERVISOR, "supervisor").name("sup"),
        Grant::new(AGENT_1001, "agent")
            .agent("1001")
            .name("agent-1001"),
        Grant::new(AGENT_1002, "agent")
            .agent("1002")
            .name("agent-1002"),
    ]);
    spec.set("callback", "gateway", format!("127.0.0.1:{gateway_port}"));
    spec
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
}

struct Api {
    calls: pb::call_service_client::CallServiceClient<Channel>,
    agents: pb::agent_service_client::AgentServiceClient<Channel>,
    admin: pb::admin_service_client::AdminServiceClient<Channel>,
    audit: pb::audit_service_client::AuditServiceClient<Channel>,
}

async fn api(node: &Node) -> Api {
    let addr = node.grpc_addr();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("endpoint: {e}"))
        .timeout(Duration::from_millis(CALL_TIMEOUT_MS))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to the gRPC API at {addr}: {e}"));
    Api {
        calls: pb::call_service_client::CallServiceClient::new(ch.clone()),
        agents: pb::agent_service_client::AgentServiceClient::new(ch.clone()),
        admin: pb::admin_service_client::AdminServiceClient::new(ch.clone()),
        audit: pb::audit_service_client::AuditServiceClient::new(ch),
    }
}

fn req<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    let v: MetadataValue<_> = format!("Bearer {token}")
        .parse()
        .unwrap_or_else(|e| panic!("token metadata: {e}"));
    r.metadata_mut().insert("authorization", v);
    r
}

fn call_req(call: &str, agent: &str) -> pb::CallRequest {
    pb::CallRequest {
        call: call.into(),
        agent: agent.into(),
    }
}

/// Agent `id` on a phone of its own running `scenario` (`args` added), registered and
/// counted ready. Its SIP messages are logged to `<label>.messages.log`.
fn agent_on_phone(node: &Node, id: u32, scenario: &str, args: &[&str]) -> SippProcess {
    let label = format!("phone-{id}");
    let phone = Sipp::uas(scenario, node.dir(), &label)
        .rtp_echo(node.sipp_media_port())
        .args(args.iter().copied())
        .trace_messages();
    let port = phone.sip_port;
    let phone = phone.spawn();
    let csv = agents_csv(node.dir(), &format!("agent-{id}.csv"), [id], "pw");
    register(node, &csv, 1, port, 3600, &format!("register-{id}"))
        .assert_success(&format!("registering {id}"));
    phone
}

/// A SIPp UAS on `port` standing for the gateway: answers, and hangs up after `talk_ms`.
fn gateway(node: &Node, port: u16, talk_ms: u64) -> SippProcess {
    Sipp::uas("agent_uas.xml", node.dir(), "gateway")
        .rtp_echo(node.sipp_media_port())
        .args(["-p".to_string(), port.to_string()])
        .args(["-m", "1", "-recv_timeout"])
        .arg(talk_ms.to_string())
        .trace_messages()
        .spawn()
}

/// A caller from `number` who streams audio until the node hangs up.
fn caller(node: &Node, number: &str) -> SippProcess {
    Sipp::uac("caller_until_bye.xml", node.sip, node.dir(), "caller")
        .media_port(node.sipp_media_port())
        .args(["-s", "100", "-timeout", "40s", "-timeout_error"])
        .key("caller", number)
        .calls(1, 1)
        .spawn()
}

/// Waits until `agent` is in `state` and returns the call the state names.
async fn wait_agent(api: &mut Api, agent: &str, state: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let info = api
            .agents
            .get(req(
                ADMIN,
                pb::AgentRequest {
                    agent: agent.into(),
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("AgentService.Get {agent}: {e}"))
            .into_inner()
            .agent
            .unwrap_or_default();
        if info.state == state {
            return info.detail;
        }
        assert!(
            Instant::now() < deadline,
            "agent {agent} never {state}; last {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn wait_ready(node: &Node, n: u64) {
    node.wait_until(&format!("{n} agents ready"), Duration::from_secs(10), |x| {
        x.agents_in("ready") == n
    });
}

fn logged_u64(log: &str, key: &str) -> Option<u64> {
    let at = log.find(&format!("{key}="))? + key.len() + 1;
    let digits: String = log[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn messages(node: &Node, label: &str) -> String {
    std::fs::read_to_string(node.dir().join(format!("{label}.messages.log"))).unwrap_or_default()
}

#[test]
fn api_hangup_ends_both_legs_and_refuses_other_agents() {
    let node = Node::start(spec(free_port()));
    let phone = agent_on_phone(&node, 1001, "agent_uas.xml", &["-m", "1"]);
    let other = agent_on_phone(&node, 1002, "agent_uas.xml", &["-m", "1"]);
    wait_ready(&node, 2);
    // 1002 steps away so the call goes to 1001.
    node.post("/api/agents/1002/not-ready");
    let caller = caller(&node, "5551101");
    runtime().block_on(async {
        let mut api = api(&node).await;
        let call = wait_agent(&mut api, "1001", "on_call").await;

        // Another agent may not act on 1001's call, neither as themselves nor as 1001.
        for (token, agent) in [(AGENT_1002, "1002"), (AGENT_1002, "1001"), (AGENT_1002, "")] {
            let err = api
                .calls
                .hangup(req(token, call_req(&call, agent)))
                .await
                .expect_err("another agent's hang-up is refused");
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        }
        // The refusals are in the audit log.
        let entries = api
            .audit
            .list(req(ADMIN, pb::ListAuditRequest::default()))
            .await
            .unwrap_or_else(|e| panic!("audit list: {e}"))
            .into_inner()
            .entries;
        let refused = entries
            .iter()
            .filter(|e| {
                e.action == "CallService.Hangup"
                    && e.outcome == "refused"
                    && e.principal == "agent-1002"
                    && e.target == call
            })
            .count();
        assert_eq!(refused, 3, "audit: {entries:#?}");

        // A consulted transfer needs a consultation first.
        let err = api
            .calls
            .consulted_transfer(req(AGENT_1001, call_req(&call, "1001")))
            .await
            .expect_err("no consultation to complete");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(
            err.message().contains("no consultation"),
            "{}",
            err.message()
        );

        // 1001 hangs up their own call.
        let reply = api
            .calls
            .hangup(req(AGENT_1001, call_req(&call, "1001")))
            .await
            .unwrap_or_else(|e| panic!("1001 hangs up: {e}"))
            .into_inner();
        assert_eq!(reply.outcome, "hung up");
        let entries = api
            .audit
            .list(req(ADMIN, pb::ListAuditRequest::default()))
            .await
            .unwrap_or_else(|e| panic!("audit list: {e}"))
            .into_inner()
            .entries;
        assert!(
            entries.iter().any(|e| e.action == "CallService.Hangup"
                && e.outcome == "allowed"
                && e.principal == "agent-1001"),
            "{entries:#?}"
        );
    });
    caller
        .wait(Duration::from_secs(10))
        .assert_success("the caller gets BYE from the node");
    phone
        .wait(Duration::from_secs(10))
        .assert_success("the agent's phone gets BYE from the node");
    drop(other);
    let cdrs = node.wait_cdrs(1, Duration::from_secs(5));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "ended_by"), "api", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "hangup_by"), "agent", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "direction"), "inbound", "CDR: {cdr}");
}

#[test]
fn api_hold_plays_music_and_counts_hold_time() {
    let node = Node::start(spec(free_port()));
    let phone = agent_on_phone(&node, 1001, "agent_uas.xml", &["-m", "1"]);
    wait_ready(&node, 1);
    let caller = caller(&node, "5551102");
    let addr = node.grpc_addr();
    let call = runtime().block_on(async {
        let mut api = api(&node).await;
        wait_agent(&mut api, "1001", "on_call").await
    });
    // Hold and resume through ctl (a supervisor token), then hang up.
    let (ok, out, err) = ctl(addr, Some(SUPERVISOR), &["call", "hold", &call]);
    assert!(ok, "ctl call hold: {out} {err}");
    assert!(out.contains("held"), "{out}");
    let (ok, _, err) = ctl(addr, Some(SUPERVISOR), &["call", "hold", &call]);
    assert!(
        !ok && err.contains("FailedPrecondition"),
        "held twice: {err}"
    );
    std::thread::sleep(Duration::from_millis(HOLD_MS));
    let (ok, out, err) = ctl(addr, Some(SUPERVISOR), &["call", "resume", &call]);
    assert!(
        ok && out.contains("resumed"),
        "ctl call resume: {out} {err}"
    );
    let (ok, out, err) = ctl(addr, Some(SUPERVISOR), &["call", "hangup", &call]);
    assert!(ok, "ctl call hangup: {out} {err}");
    caller
        .wait(Duration::from_secs(10))
        .assert_success("caller");
    phone.wait(Duration::from_secs(10)).assert_success("agent");
    let cdrs = node.wait_cdrs(1, Duration::from_secs(5));
    let cdr = &cdrs[0];
    let hold_ms = cdr_u64(cdr, "hold_ms");
    assert!(
        (HOLD_MS..HOLD_MS + 5_000).contains(&hold_ms),
        "hold_ms {hold_ms}: {cdr}"
    );
    assert_eq!(cdr_str(cdr, "hangup_by"), "system", "CDR: {cdr}");
    let music = logged_u64(&node.log_plain(), "hold_music_packets")
        .unwrap_or_else(|| panic!("no hold music count in the log:\n{}", node.log_tail()));
    assert!(
        music >= HOLD_MUSIC_PACKETS_MIN,
        "the caller got {music} hold music packets during a {HOLD_MS} ms hold"
    );
}

#[test]
fn blind_transfer_to_a_queue_reaches_a_second_agent() {
    let node = Node::start(spec(free_port()));
    let first = agent_on_phone(&node, 1001, "agent_uas.xml", &["-m", "1"]);
    wait_ready(&node, 1);
    let caller = caller(&node, "5551103");
    runtime().block_on(async {
        let mut api = api(&node).await;
        let call = wait_agent(&mut api, "1001", "on_call").await;
        let second = agent_on_phone(&node, 1002, "agent_uas.xml", &["-m", "1"]);
        wait_agent(&mut api, "1002", "ready").await;
        let transfer = pb::TransferRequest {
            call: call.clone(),
            agent: "1001".into(),
            target: Some(pb::transfer_request::Target::Queue("support".into())),
        };
        let reply = api
            .calls
            .blind_transfer(req(AGENT_1001, transfer))
            .await
            .unwrap_or_else(|e| panic!("transfer to support: {e}"))
            .into_inner();
        assert!(reply.outcome.contains("queue:support"), "{reply:?}");
        // 1002 was idle longer than 1001 (just released): the call rings 1002.
        let again = wait_agent(&mut api, "1002", "on_call").await;
        assert_eq!(again, call);
        // An unknown queue is NOT_FOUND.
        let bad = pb::TransferRequest {
            call: call.clone(),
            agent: String::new(),
            target: Some(pb::transfer_request::Target::Queue("nowhere".into())),
        };
        let err = api
            .calls
            .blind_transfer(req(ADMIN, bad))
            .await
            .expect_err("unknown queue");
        assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
        api.calls
            .hangup(req(AGENT_1002, call_req(&call, "1002")))
            .await
            .unwrap_or_else(|e| panic!("1002 hangs up: {e}"));
        second
            .wait(Duration::from_secs(10))
            .assert_success("the second agent answered and got BYE");
    });
    first
        .wait(Duration::from_secs(10))
        .assert_success("the first agent got BYE at the transfer");
    caller
        .wait(Duration::from_secs(10))
        .assert_success("caller");
    let cdrs = node.wait_cdrs(1, Duration::from_secs(5));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "agent"), "1002", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "transfer"), "queue:support", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
}

#[test]
fn blind_transfer_to_a_number_dials_the_gateway() {
    let gateway_port = free_port();
    let node = Node::start(spec(gateway_port));
    let phone = agent_on_phone(&node, 1001, "agent_uas.xml", &["-m", "1"]);
    wait_ready(&node, 1);
    let gw = gateway(&node, gateway_port, 1_500);
    let caller = caller(&node, "5551104");
    runtime().block_on(async {
        let mut api = api(&node).await;
        let call = wait_agent(&mut api, "1001", "on_call").await;
        let transfer = pb::TransferRequest {
            call: call.clone(),
            agent: String::new(),
            target: Some(pb::transfer_request::Target::Number("5550199".into())),
        };
        let reply = api
            .calls
            .blind_transfer(req(AGENT_1001, transfer))
            .await
            .unwrap_or_else(|e| panic!("transfer to a number: {e}"))
            .into_inner();
        assert!(reply.outcome.contains("5550199"), "{reply:?}");
        // The agent is released once the number answers.
        wait_agent(&mut api, "1001", "ready").await;
    });
    phone
        .wait(Duration::from_secs(10))
        .assert_success("the agent got BYE once the number answered");
    gw.wait(Duration::from_secs(15))
        .assert_success("the gateway answered, talked and hung up");
    caller
        .wait(Duration::from_secs(10))
        .assert_success("the caller got BYE after the number hung up");
    let log = messages(&node, "gateway");
    assert!(
        log.contains("INVITE sip:5550199@127.0.0.1"),
        "the gateway was asked for the number:\n{log:.2000}"
    );
    let cdrs = node.wait_cdrs(1, Duration::from_secs(5));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "transfer"), "number:5550199", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "agent"), "1001", "CDR: {cdr}");
    assert!(
        cdr_u64(cdr, "ended_at_ms") >= cdr_u64(cdr, "answered_at_ms") + 1_500,
        "the record ends when the number hangs up: {cdr}"
    );
}

#[test]
fn click_to_dial_rings_the_agent_then_the_number() {
    let gateway_port = free_port();
    let node = Node::start(spec(gateway_port));
    // The agent hangs up after 2 s of talk; the number behind the gateway streams audio
    // (which the agent's phone echoes back) until the node hangs up on it.
    let phone = agent_on_phone(
        &node,
        1001,
        "agent_uas.xml",
        &["-m", "1", "-recv_timeout", "2000"],
    );
    wait_ready(&node, 1);
    let gw = Sipp::uas("customer_uas.xml", node.dir(), "gateway")
        .media_port(node.sipp_media_port())
        .args(["-p".to_string(), gateway_port.to_string()])
        .args(["-m", "1"])
        .trace_messages()
        .spawn();
    let addr = node.grpc_addr();
    // Another agent may not dial as 1001.
    let (ok, _, err) = ctl(addr, Some(AGENT_1002), &["call", "dial", "1001", "5550123"]);
    assert!(!ok && err.contains("PermissionDenied"), "{err}");
    let (ok, out, err) = ctl(addr, Some(AGENT_1001), &["call", "dial", "1001", "5550123"]);
    assert!(ok, "ctl call dial: {out} {err}");
    let reply: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("ctl output {out}: {e}"));
    let call = reply["call"].as_str().unwrap_or_default().to_string();
    runtime().block_on(async {
        let mut api = api(&node).await;
        assert_eq!(wait_agent(&mut api, "1001", "on_call").await, call);
    });
    phone
        .wait(Duration::from_secs(15))
        .assert_success("the agent answered first, talked and hung up");
    gw.wait(Duration::from_secs(10))
        .assert_success("the number answered and got BYE after the agent hung up");
    // The agent's phone was rung before the number was dialled.
    let agent_log = messages(&node, "phone-1001");
    let gw_log = messages(&node, "gateway");
    assert!(
        gw_log.contains("INVITE sip:5550123@127.0.0.1"),
        "{gw_log:.2000}"
    );
    assert!(agent_log.contains("INVITE sip:1001@"), "{agent_log:.2000}");
    let cdrs = node.wait_cdrs(1, Duration::from_secs(5));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "direction"), "outbound", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "dialled"), "5550123", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "agent"), "1001", "CDR: {cdr}");
    assert_eq!(
        cdr_str(cdr, "hangup_by"),
        "agent",
        "the agent hung up: {cdr}"
    );
    assert!(
        cdr_u64(cdr, "rtp_agent_to_caller") > 0 && cdr_u64(cdr, "rtp_caller_to_agent") > 0,
        "audio bridged both ways: {cdr}"
    );
    wait_ready(&node, 1);
}

#[test]
fn pickup_takes_a_call_ringing_another_agent() {
    let node = Node::start(spec(free_port()));
    // 1001's phone rings and never answers; 1002's answers.
    let ringing = agent_on_phone(&node, 1001, "agent_noanswer.xml", &["-m", "1"]);
    let picker = agent_on_phone(&node, 1002, "agent_uas.xml", &["-m", "1"]);
    wait_ready(&node, 2);
    node.post("/api/agents/1002/not-ready");
    let caller = caller(&node, "5551105");
    runtime().block_on(async {
        let mut api = api(&node).await;
        let call = wait_agent(&mut api, "1001", "reserved").await;
        // 1001 may not pick up as 1002.
        let err = api
            .calls
            .pickup(req(AGENT_1001, call_req(&call, "1002")))
            .await
            .expect_err("acting as another agent");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        let reply = api
            .calls
            .pickup(req(AGENT_1002, call_req(&call, "1002")))
            .await
            .unwrap_or_else(|e| panic!("1002 picks up: {e}"))
            .into_inner();
        assert!(reply.outcome.contains("1002"), "{reply:?}");
        assert_eq!(wait_agent(&mut api, "1002", "on_call").await, call);
        api.calls
            .hangup(req(AGENT_1002, call_req(&call, "")))
            .await
            .unwrap_or_else(|e| panic!("1002 hangs up: {e}"));
    });
    ringing
        .wait(Duration::from_secs(10))
        .assert_success("1001's phone got CANCEL when 1002 picked up");
    picker.wait(Duration::from_secs(10)).assert_success("1002");
    caller
        .wait(Duration::from_secs(10))
        .assert_success("caller");
    let cdrs = node.wait_cdrs(1, Duration::from_secs(5));
    assert_eq!(cdr_str(&cdrs[0], "agent"), "1002", "CDR: {}", cdrs[0]);
    assert_eq!(cdr_u64(&cdrs[0], "offers"), 2, "CDR: {}", cdrs[0]);
}

#[test]
fn blacklist_changes_live_through_ctl() {
    let node = Node::start(spec(free_port()));
    let addr = node.grpc_addr();
    // Supervisors read it, only admins change it.
    let (ok, _, err) = ctl(addr, Some(SUPERVISOR), &["blacklist", "add", "5550666"]);
    assert!(!ok && err.contains("PermissionDenied"), "{err}");
    let (ok, out, err) = ctl(addr, Some(ADMIN), &["blacklist", "add", "5550666"]);
    assert!(ok, "ctl blacklist add: {out} {err}");
    let (ok, out, err) = ctl(addr, Some(SUPERVISOR), &["blacklist", "list", "--json"]);
    assert!(ok, "{err}");
    let listed: Vec<String> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    assert_eq!(listed, ["5550666", "666"], "configured and live entries");

    Sipp::uac("invite_403.xml", node.sip, node.dir(), "blocked")
        .media_port(node.sipp_media_port())
        .args(["-s", "100"])
        .key("caller", "5550666")
        .calls(1, 1)
        .run(Duration::from_secs(10))
        .assert_success("the newly blacklisted caller is refused with 403");

    // Removing a configured entry lets that caller in too.
    let (ok, out, err) = ctl(addr, Some(ADMIN), &["blacklist", "remove", "666"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "5550666");
    runtime().block_on(async {
        let mut api = api(&node).await;
        let listed = api
            .admin
            .list_blacklist(req(SUPERVISOR, pb::ListBlacklistRequest {}))
            .await
            .unwrap_or_else(|e| panic!("list: {e}"))
            .into_inner()
            .callers;
        assert_eq!(listed, ["5550666"]);
    });
    // 666 now gets in: answered and queued (no agent), then hangs up itself.
    let let_in = Sipp::uac("caller_abandon.xml", node.sip, node.dir(), "let-in")
        .media_port(node.sipp_media_port())
        .args(["-s", "100", "-d", "500"])
        .key("caller", "666")
        .calls(1, 1)
        .run(Duration::from_secs(10));
    let_in.assert_success("666 is let in after its removal");
}
