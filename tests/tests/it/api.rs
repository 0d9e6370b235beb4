//! The operations surface end to end against a real node process: the gRPC API through a
//! real tonic client (roles, refusals and the audit entries they leave, event streams,
//! live queue changes), `carillon ctl` as its client, and `/metrics` parsed as
//! Prometheus text with its series moving under SIPp calls.

// tonic's results carry `Status` by value.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use carillon_ops::api::v1 as pb;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::harness::{
    agent_phone, agents_csv, carillon_bin, ctl, register, Grant, Node, NodeSpec, Sipp,
};

const ADMIN: &str = "admin-token-0001";
const SUPERVISOR: &str = "super-token-0001";
/// Acts as agent 1001 only.
const AGENT_1001: &str = "agent-1001-token";
/// How long one API call may take in these tests.
const CALL_TIMEOUT_MS: u64 = 10_000;

/// The test cast plus three API tokens.
fn spec() -> NodeSpec {
    let mut spec = NodeSpec::for_test();
    spec.set_tokens([
        Grant::new(ADMIN, "admin").name("ops"),
        Grant::new(SUPERVISOR, "supervisor").name("sup"),
        Grant::new(AGENT_1001, "agent")
            .agent("1001")
            .name("agent-1001"),
    ]);
    spec
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
}

async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("endpoint: {e}"))
        .timeout(Duration::from_millis(CALL_TIMEOUT_MS))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to the gRPC API at {addr}: {e}"))
}

/// A request carrying `token` (none for `""`).
fn req<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if !token.is_empty() {
        let v: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .unwrap_or_else(|e| panic!("token metadata: {e}"));
        r.metadata_mut().insert("authorization", v);
    }
    r
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> tonic::Code {
    match r {
        Ok(ok) => panic!("expected a refusal, got {ok:?}"),
        Err(s) => s.code(),
    }
}

/// Registers agents `ids` on one SIPp phone and waits until they are ready.
fn register_agents(node: &Node, ids: std::ops::RangeInclusive<u32>) -> crate::harness::SippProcess {
    let (phones, port) = agent_phone(node, "phones");
    let n = ids.clone().count() as u32;
    let csv = agents_csv(node.dir(), "agents.csv", ids, "pw");
    register(node, &csv, n, port, 3600, "register").assert_success("registering agents");
    node.wait_until("agents ready", Duration::from_secs(5), |x| {
        x.agents_in("ready") == u64::from(n)
    });
    phones
}

#[test]
fn api_roles_refusals_and_audit() {
    let node = Node::start(spec());
    let _phones = register_agents(&node, 1001..=1002);
    let addr = node.grpc_addr();
    runtime().block_on(async {
        let ch = channel(addr).await;
        let mut agents = pb::agent_service_client::AgentServiceClient::new(ch.clone());
        let mut sup = pb::supervisor_service_client::SupervisorServiceClient::new(ch.clone());
        let mut admin = pb::admin_service_client::AdminServiceClient::new(ch.clone());
        let mut calls = pb::call_service_client::CallServiceClient::new(ch.clone());
        let mut audit = pb::audit_service_client::AuditServiceClient::new(ch.clone());
        let mut events = pb::event_service_client::EventServiceClient::new(ch.clone());

        // An admin watches agent events from here on.
        let mut stream = events
            .agent_events(req(ADMIN, pb::AgentEventsRequest::default()))
            .await
            .unwrap_or_else(|e| panic!("agent events: {e}"))
            .into_inner();

        // The agent sets their own state.
        let set = |agent: &str, ready: bool, reason: &str| pb::SetStateRequest {
            agent: agent.into(),
            ready,
            reason: reason.into(),
        };
        let reply = agents
            .set_state(req(AGENT_1001, set("1001", false, "lunch")))
            .await
            .unwrap_or_else(|e| panic!("1001 sets own state: {e}"))
            .into_inner();
        let info = reply.agent.unwrap_or_default();
        assert_eq!(
            (info.state.as_str(), info.detail.as_str()),
            ("not_ready", "lunch")
        );

        // The event stream saw it.
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap_or_else(|_| panic!("no agent event within 5 s"))
            .unwrap_or_else(|e| panic!("agent event stream: {e}"))
            .unwrap_or_else(|| panic!("agent event stream ended"));
        assert_eq!(
            (ev.agent.as_str(), ev.state.as_str()),
            ("1001", "not_ready")
        );

        // Refusals: another agent's session, a supervisor action, no or a wrong token.
        assert_eq!(
            code(
                agents
                    .set_state(req(AGENT_1001, set("1002", false, "x")))
                    .await
            ),
            tonic::Code::PermissionDenied
        );
        let force = |agent: &str| pb::ForceStateRequest {
            agent: agent.into(),
            state: "not_ready".into(),
            reason: "coaching".into(),
        };
        assert_eq!(
            code(sup.force_state(req(AGENT_1001, force("1002"))).await),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(
                agents
                    .get(req(
                        "",
                        pb::AgentRequest {
                            agent: "1001".into()
                        }
                    ))
                    .await
            ),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(
                agents
                    .get(req(
                        "not-a-token-at-all",
                        pb::AgentRequest {
                            agent: "1001".into()
                        }
                    ))
                    .await
            ),
            tonic::Code::Unauthenticated
        );

        // A supervisor forces a state, but may not change queues; an admin may, live.
        let forced = sup
            .force_state(req(SUPERVISOR, force("1002")))
            .await
            .unwrap_or_else(|e| panic!("supervisor forces 1002: {e}"))
            .into_inner()
            .agent
            .unwrap_or_default();
        assert_eq!(
            (forced.state.as_str(), forced.detail.as_str()),
            ("not_ready", "coaching")
        );
        let set_queue = pb::SetQueueRequest {
            name: "support".into(),
            ring_timeout_ms: Some(12_000),
            strategy: Some("round_robin".into()),
            ..Default::default()
        };
        assert_eq!(
            code(admin.set_queue(req(SUPERVISOR, set_queue.clone())).await),
            tonic::Code::PermissionDenied
        );
        let q = admin
            .set_queue(req(ADMIN, set_queue))
            .await
            .unwrap_or_else(|e| panic!("admin sets the queue: {e}"))
            .into_inner();
        assert_eq!(
            (q.ring_timeout_ms, q.strategy.as_str(), q.skill.as_str()),
            (12_000, "round_robin", "support")
        );
        let listed = admin
            .list_queues(req(SUPERVISOR, pb::ListQueuesRequest {}))
            .await
            .unwrap_or_else(|e| panic!("list queues: {e}"))
            .into_inner();
        assert!(
            listed
                .queues
                .iter()
                .any(|q| q.name == "support" && q.ring_timeout_ms == 12_000),
            "{listed:?}"
        );

        // A conference on a call that is not live here names the call.
        let conference = calls
            .conference(req(
                ADMIN,
                pb::CallRequest {
                    call: "c1".into(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("no call c1");
        assert_eq!(conference.code(), tonic::Code::NotFound);
        assert!(
            conference.message().contains("c1"),
            "{}",
            conference.message()
        );

        // Server reflection lists every Carillon service (no token needed to discover).
        let mut reflection =
            tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
                ch.clone(),
            );
        let ask = tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                    String::new(),
                ),
            ),
        };
        let mut answers = reflection
            .server_reflection_info(tokio_stream_once(ask))
            .await
            .unwrap_or_else(|e| panic!("reflection: {e}"))
            .into_inner();
        let answer = answers
            .message()
            .await
            .unwrap_or_else(|e| panic!("reflection answer: {e}"))
            .unwrap_or_else(|| panic!("no reflection answer"));
        let listed = format!("{:?}", answer.message_response);
        for service in [
            "carillon.v1.AgentService",
            "carillon.v1.AuditService",
            "carillon.v1.ClusterService",
        ] {
            assert!(listed.contains(service), "{service} not in {listed}");
        }

        // Only admins read the audit log; it holds the refusals and the changes.
        assert_eq!(
            code(
                audit
                    .list(req(SUPERVISOR, pb::ListAuditRequest::default()))
                    .await
            ),
            tonic::Code::PermissionDenied
        );
        let entries = audit
            .list(req(ADMIN, pb::ListAuditRequest::default()))
            .await
            .unwrap_or_else(|e| panic!("audit list: {e}"))
            .into_inner()
            .entries;
        let has = |action: &str, principal: &str, target: &str, outcome: &str| {
            entries.iter().any(|e| {
                e.action == action
                    && e.principal == principal
                    && e.target == target
                    && e.outcome == outcome
            })
        };
        assert!(
            has("AgentService.SetState", "agent-1001", "1002", "refused"),
            "{entries:#?}"
        );
        assert!(
            has("AgentService.SetState", "agent-1001", "1001", "allowed"),
            "{entries:#?}"
        );
        assert!(
            has(
                "SupervisorService.ForceState",
                "agent-1001",
                "1002",
                "refused"
            ),
            "{entries:#?}"
        );
        assert!(
            has("SupervisorService.ForceState", "sup", "1002", "allowed"),
            "{entries:#?}"
        );
        assert!(
            has("AgentService.Get", "-", "1001", "refused"),
            "{entries:#?}"
        );
        assert!(
            has("AdminService.SetQueue", "sup", "support", "refused"),
            "{entries:#?}"
        );
        assert!(
            has("AdminService.SetQueue", "ops", "support", "allowed"),
            "{entries:#?}"
        );
        assert!(
            has("AuditService.List", "sup", "", "refused"),
            "{entries:#?}"
        );
        assert!(
            entries
                .iter()
                .all(|e| !e.detail.contains(ADMIN) && !e.detail.contains(AGENT_1001)),
            "a token leaked into the audit log: {entries:#?}"
        );
        // The audit file sits in the data dir, one JSON object per line.
        let file = std::fs::read_to_string(node.dir().join("data/audit.jsonl"))
            .unwrap_or_else(|e| panic!("audit.jsonl: {e}"));
        assert!(file.lines().count() >= entries.len());
        for line in file.lines() {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {line}"));
        }
    });
}

/// GET `path` over HTTP/1.1 and return the body of a 200 (panics otherwise).
fn http_get(addr: SocketAddr, path: &str) -> String {
    let timeout = Some(Duration::from_millis(CALL_TIMEOUT_MS));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(CALL_TIMEOUT_MS))
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(timeout).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path}: malformed response {raw:.300}"));
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "GET {path}: chunked bodies are not expected here"
    );
    body.to_string()
}

/// A request stream of one message.
fn tokio_stream_once<T: Send + 'static>(
    msg: T,
) -> impl tonic::codegen::tokio_stream::Stream<Item = T> + Send + 'static {
    tonic::codegen::tokio_stream::iter([msg])
}

fn ctl_ok(addr: SocketAddr, token: &str, args: &[&str]) -> String {
    let (ok, out, err) = ctl(addr, Some(token), args);
    assert!(ok, "ctl {args:?} failed: {err}{out}");
    out
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn ctl_end_to_end() {
    let node = Node::start(spec());
    let _phones = register_agents(&node, 1001..=1001);
    let addr = node.grpc_addr();

    let status = json(&ctl_ok(addr, ADMIN, &["status"]));
    assert_eq!(status["agents_registered"], 1, "{status}");
    assert!(status["acd"]["queues"]["support"].is_object(), "{status}");

    let out = json(&ctl_ok(
        addr,
        ADMIN,
        &["agent", "not-ready", "1001", "--reason", "lunch"],
    ));
    assert_eq!(
        (out["agent"].as_str(), out["state"].as_str()),
        (Some("1001"), Some("not_ready"))
    );
    let out = json(&ctl_ok(addr, AGENT_1001, &["agent", "ready", "1001"]));
    assert_eq!(out["state"], "ready", "{out}");
    let list = json(&ctl_ok(addr, SUPERVISOR, &["agent", "list", "--json"]));
    assert_eq!(list.as_array().map(Vec::len), Some(20), "{list}");
    let out = json(&ctl_ok(
        addr,
        SUPERVISOR,
        &["agent", "force", "1001", "not_ready", "--reason", "meeting"],
    ));
    assert_eq!(out["detail"], "meeting", "{out}");
    let out = json(&ctl_ok(addr, SUPERVISOR, &["agent", "logout", "1001"]));
    assert_eq!(out["state"], "logged_out", "{out}");

    ctl_ok(
        addr,
        ADMIN,
        &[
            "queue",
            "set",
            "sales",
            "--skill",
            "support",
            "--ring-timeout-ms",
            "9000",
        ],
    );
    let queues = json(&ctl_ok(addr, ADMIN, &["queue", "list", "--json"]));
    let sales = queues
        .as_array()
        .and_then(|q| q.iter().find(|q| q["name"] == "sales"))
        .unwrap_or_else(|| panic!("no queue sales: {queues}"));
    assert_eq!(sales["ring_timeout_ms"], 9000, "{sales}");
    let table = ctl_ok(addr, ADMIN, &["queue", "list"]);
    assert!(
        table.contains("QUEUE") && table.contains("sales"),
        "{table}"
    );

    let cdrs = json(&ctl_ok(addr, ADMIN, &["cdr", "list", "--json"]));
    assert_eq!(cdrs, serde_json::json!([]));
    assert!(ctl_ok(addr, ADMIN, &["cdr", "list"]).contains("0 call(s)"));

    // Refusals name their cause and fail the command.
    let (ok, _, err) = ctl(addr, None, &["status"]);
    assert!(!ok && err.contains("--token"), "{err}");
    let (ok, _, err) = ctl(
        addr,
        Some(AGENT_1001),
        &["queue", "set", "sales", "--wrapup-ms", "1"],
    );
    assert!(!ok && err.contains("PermissionDenied"), "{err}");
    let (ok, _, err) = ctl(addr, Some(ADMIN), &["cluster", "status"]);
    assert!(!ok && err.contains("standalone"), "{err}");

    let audit = json(&ctl_ok(addr, ADMIN, &["audit", "list", "--json"]));
    let entries = audit.as_array().cloned().unwrap_or_default();
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "AdminService.SetQueue"
                && e["outcome"] == "refused"
                && e["principal"] == "agent-1001"),
        "{audit}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "SupervisorService.ForceLogout" && e["outcome"] == "allowed"),
        "{audit}"
    );
    assert!(ctl_ok(addr, ADMIN, &["audit", "list"]).contains("OUTCOME"));
}

/// Prometheus text format, strictly enough to catch a broken exposition: every sample
/// line is `name{labels} value`, and every `# TYPE` names a known type. Returns
/// `name{labels}` -> value.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let kind = rest.split_whitespace().nth(1).unwrap_or("");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad TYPE line: {line}"
            );
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("sample line without a value: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unclosed labels: {line}");
        }
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad sample value: {line}")),
        };
        out.insert(series.to_string(), value);
    }
    out
}

fn scrape(node: &Node) -> BTreeMap<String, f64> {
    let body = http_get(node.http, "/metrics");
    parse_prometheus(&body)
}

fn value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series).unwrap_or_else(|| {
        panic!(
            "no series {series} in /metrics: {:#?}",
            m.keys().collect::<Vec<_>>()
        )
    })
}

/// Sum of every series of metric `name` whose labels contain all of `labels`.
fn sum(m: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            (k.as_str() == name || k.starts_with(&format!("{name}{{")))
                && labels.iter().all(|l| k.contains(l))
        })
        .map(|(_, v)| *v)
        .sum()
}

#[test]
fn metrics_move_under_calls() {
    const CALLS: u32 = 6;
    let node = Node::start(NodeSpec::for_test());
    let before = scrape(&node);
    assert_eq!(value(&before, "carillon_recording_disk_bytes"), 0.0);
    assert_eq!(
        value(&before, r#"carillon_queue_depth{queue="support"}"#),
        0.0
    );
    // One agent for six callers who each hang up 1.5 s after the node answers them: the
    // line grows, the first callers are served, the rest abandon, and it drains.
    let _phones = register_agents(&node, 1001..=1001);
    let registered = scrape(&node);
    assert_eq!(
        value(&registered, r#"carillon_agents{state="ready",site="hq"}"#),
        1.0
    );
    assert!(
        sum(
            &registered,
            "carillon_sip_transactions_total",
            &[r#"method="REGISTER""#, r#"class="2xx""#]
        ) >= 1.0
    );
    assert!(
        sum(
            &registered,
            "carillon_sip_transactions_total",
            &[r#"method="REGISTER""#, r#"class="4xx""#]
        ) >= 1.0
    );

    let callers = Sipp::uac("caller.xml", node.sip, node.dir(), "callers")
        .media_port(node.sipp_media_port())
        .args(["-s", "100", "-d", "1500"])
        .key("caller", "5552000")
        .calls(CALLS, CALLS)
        .spawn();
    let mut deepest = 0.0f64;
    let mut longest = 0.0f64;
    let mut on_call = 0.0f64;
    node.wait_until("the line to grow and drain", Duration::from_secs(40), |n| {
        let m = scrape(n);
        deepest = deepest.max(value(&m, r#"carillon_queue_depth{queue="support"}"#));
        longest = longest.max(value(
            &m,
            r#"carillon_queue_longest_wait_seconds{queue="support"}"#,
        ));
        on_call = on_call.max(value(&m, r#"carillon_agents{state="on_call",site="hq"}"#));
        sum(&m, "carillon_calls_total", &[]) >= f64::from(CALLS)
    });
    callers
        .wait(Duration::from_secs(30))
        .assert_success("six callers, served or abandoning");
    assert!(deepest >= 1.0, "queue depth never rose above 0");
    assert!(longest > 0.0, "longest wait never rose above 0");
    assert_eq!(on_call, 1.0, "the agent was never seen on a call");

    let after = scrape(&node);
    let answered = sum(
        &after,
        "carillon_calls_total",
        &[r#"disposition="answered""#],
    );
    let abandoned = sum(
        &after,
        "carillon_calls_total",
        &[r#"disposition="abandoned""#],
    );
    assert!(answered >= 1.0, "no call answered");
    assert_eq!(
        answered + abandoned,
        f64::from(CALLS),
        "every call answered or abandoned"
    );
    assert!(
        sum(
            &after,
            "carillon_sip_transactions_total",
            &[r#"method="INVITE""#, r#"class="2xx""#]
        ) >= f64::from(CALLS)
    );
    assert!(
        value(
            &after,
            r#"carillon_rtp_packets_total{direction="caller_to_agent"}"#
        ) > 0.0
    );
    assert!(
        value(
            &after,
            r#"carillon_rtp_packets_total{direction="agent_to_caller"}"#
        ) > 0.0
    );
    assert_eq!(
        value(&after, r#"carillon_routing_calls{outcome="entered"}"#),
        f64::from(CALLS)
    );
    assert_eq!(
        value(&after, r#"carillon_routing_calls{outcome="answered"}"#),
        answered
    );
    // All waits were under 20 s: the answered share of answered and abandoned calls.
    let sl = value(&after, "carillon_service_level_ratio");
    assert!(
        (sl - answered / f64::from(CALLS)).abs() < 1e-9,
        "service level {sl}"
    );
    assert!(
        value(&after, "carillon_routing_apply_seconds_count")
            > value(&before, "carillon_routing_apply_seconds_count")
    );
    assert!(value(&after, "carillon_call_wait_seconds_count") >= f64::from(CALLS));
    assert_eq!(
        value(&after, r#"carillon_queue_depth{queue="support"}"#),
        0.0
    );
}

#[test]
fn metrics_show_raft_in_a_cluster() {
    let cluster = crate::harness::TestCluster::start(&["hq", "hq", "branch"], |_, _| {});
    let leader = cluster.wait_leader(Duration::from_secs(20));
    let m = scrape(cluster.node(leader));
    assert!(value(&m, "carillon_raft_term") >= 1.0);
    assert_eq!(value(&m, "carillon_raft_is_leader"), 1.0);
    assert_eq!(value(&m, "carillon_raft_leader"), (leader + 1) as f64);
    assert_eq!(value(&m, "carillon_raft_voters"), 3.0);
    assert!(value(&m, "carillon_raft_commit_lag_entries") >= 0.0);
    let follower = (leader + 1) % 3;
    let f = scrape(cluster.node(follower));
    assert_eq!(value(&f, "carillon_raft_is_leader"), 0.0);
    assert!(value(&f, "carillon_raft_last_applied_index") >= 1.0);
    // Every member wrote the bootstrap entries to its log: the append histogram has them.
    for m in [&m, &f] {
        assert!(
            value(m, "carillon_raft_log_append_seconds_count") >= 1.0,
            "no Raft log appends measured"
        );
    }
}

#[test]
fn api_over_tls() {
    let certs = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let made = Command::new(carillon_bin())
        .args(["certs", "--nodes", "n1", "--out"])
        .arg(certs.path())
        .output()
        .unwrap_or_else(|e| panic!("carillon certs: {e}"));
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mut spec = spec();
    spec.set(
        "grpc",
        "tls_cert",
        certs.path().join("n1.pem").display().to_string(),
    )
    .set(
        "grpc",
        "tls_key",
        certs.path().join("n1.key").display().to_string(),
    );
    let node = Node::start(spec);
    let addr = node.grpc_addr();
    let ca = certs.path().join("ca.pem").display().to_string();
    let status = json(&ctl_ok(
        addr,
        ADMIN,
        &["--ca", &ca, "--tls-name", "n1.carillon", "status"],
    ));
    assert_eq!(status["node"], "n1", "{status}");
    // Plaintext to a TLS port fails, and says where to look.
    let (ok, _, err) = ctl(addr, Some(ADMIN), &["status"]);
    assert!(!ok, "plaintext reached a TLS API: {err}");
    assert!(
        node.log_tail().contains("gRPC API listening (TLS)"),
        "{}",
        node.log_tail()
    );
}
