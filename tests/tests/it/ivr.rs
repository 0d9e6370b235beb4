//! IVR flows through a real node and SIPp callers: RFC 4733 and in-band keys drive the
//! menu to the high-priority queue (an agent answers; the CDR names the queue, the log the
//! priority); collected digits go to an HTTP look-up (a tiny server here) whose reply picks
//! the queue; an invalid key is retried and a silent caller is hung up on; a key that leads
//! to a `transfer` step has the node dial the number through a gateway (a SIPp UAS) and
//! bridge the caller to it.
//!
//! Prompts are tones the test writes with the media crate, so nothing needs espeak-ng.

// The look-up server waits on its socket in wall-clock time.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use carillon_media::{tone, Codec};

use crate::harness::{
    cdr_str, cdr_u64, ready_agent_1001, spec_from_text, workspace_dir, Grant, Node, NodeSpec, Sipp,
};

/// The agent phone hangs up this long after answering.
const TALK_MS: &str = "1500";
/// How long a SIPp caller waits after the 200 before keying (the menu prompt lasts 1 s).
const KEY_AFTER_MS: &str = "1500";
/// The number the menu's key 4 transfers the caller to.
const TRANSFER_NUMBER: &str = "5550177";

/// Prompt WAVs (tones: each step its own pitch) in a directory that outlives the node.
fn prompts() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    for (name, hz, ms) in [
        ("menu", 440.0, 1000),
        ("account", 660.0, 800),
        ("bye", 330.0, 400),
        ("balance", 880.0, 400),
    ] {
        let path = dir.path().join(format!("{name}.wav"));
        carillon_media::wav::write_pcm16(&path, &tone::sine(hz, ms, 0.2))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
    dir
}

/// A node with agent 1001 (skill support), queues support and outage, and number 300
/// running the utility flow: 1 outage (priority 9), 2 account number and look-up at
/// `lookup_port`, 3 support, 4 a transfer to [`TRANSFER_NUMBER`] through a gateway that
/// nothing answers, 0 repeat; an invalid key or silence is retried once, then the caller
/// hears goodbye and is hung up on.
fn spec(prompts: &Path, lookup_port: u16) -> NodeSpec {
    spec_with_gateway(prompts, lookup_port, unused_port())
}

/// As [`spec`], with key 4's transfer going through the gateway at `gateway_port`.
fn spec_with_gateway(prompts: &Path, lookup_port: u16, gateway_port: u16) -> NodeSpec {
    let hold = workspace_dir().join("examples/prompts/hold.wav");
    let p = |name: &str| prompts.join(format!("{name}.wav")).display().to_string();
    let text = format!(
        r#"
[node]
id = "n1"
data_dir = "data"
[sip]
listen = "127.0.0.1:5060"
[rtp]
ip = "127.0.0.1"
port_min = 20000
port_max = 20100
[http]
listen = "127.0.0.1:8080"
[media]
hold_music = "{hold}"
[[trunks]]
name = "local"
allow = ["127.0.0.0/8"]
[[agents]]
id = "1001"
password = "pw1001"
skills = ["support"]
[[queues]]
name = "support"
skill = "support"
wrapup_s = 0
ring_timeout_s = 10
[[queues]]
name = "outage"
skill = "support"
wrapup_s = 0
ring_timeout_s = 10
[[numbers]]
number = "300"
flow = "utility"
[[flows]]
name = "utility"
start = "menu"
prompt_dir = "{prompt_dir}"
[[flows.steps]]
id = "menu"
kind = "menu"
prompt = "{menu}"
keys = {{ "1" = "outage", "2" = "account", "3" = "agent", "4" = "transfer", "0" = "menu" }}
timeout_s = 3
retries = 1
on_invalid = "bye"
on_timeout = "bye"
[[flows.steps]]
id = "outage"
kind = "queue"
queue = "outage"
priority = 9
[[flows.steps]]
id = "agent"
kind = "queue"
queue = "support"
[[flows.steps]]
id = "account"
kind = "collect"
prompt = "{account}"
min_digits = 4
max_digits = 10
var = "account"
timeout_s = 3
next = "lookup"
on_timeout = "bye"
[[flows.steps]]
id = "lookup"
kind = "lookup"
url = "http://127.0.0.1:{lookup_port}/balance"
timeout_ms = 2000
on_ok = "route"
on_error = "agent"
[[flows.steps]]
id = "route"
kind = "branch"
var = "status"
equals = {{ "overdue" = "outage" }}
default = "agent"
[[flows.steps]]
id = "transfer"
kind = "transfer"
number = "{TRANSFER_NUMBER}"
gateway = "127.0.0.1:{gateway_port}"
[[flows.steps]]
id = "bye"
kind = "hangup"
prompt = "{bye}"
"#,
        hold = hold.display(),
        prompt_dir = prompts.display(),
        menu = p("menu"),
        account = p("account"),
        bye = p("bye"),
    );
    spec_from_text(&text, "ivr.toml")
}

/// Writes `ivr_keys.pcmu` in `dir`: `keys` as in-band DTMF (G.711 mu-law, 8 kHz), each
/// tone 120 ms with 150 ms of silence after; a space is 600 ms of silence.
fn write_keys(dir: &Path, keys: &str) -> PathBuf {
    let mut pcm: Vec<i16> = vec![0; 1600];
    for k in keys.chars() {
        if k == ' ' {
            pcm.extend(std::iter::repeat_n(0, 4800));
            continue;
        }
        let t = tone::dtmf(k, 120, 0.25).unwrap_or_else(|| panic!("`{k}` is not a key"));
        pcm.extend(t);
        pcm.extend(std::iter::repeat_n(0, 1200));
    }
    pcm.extend(std::iter::repeat_n(0, 2400));
    let bytes: Vec<u8> = pcm.iter().map(|s| Codec::Pcmu.encode(*s)).collect();
    let path = dir.join("ivr_keys.pcmu");
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// A caller dialling 300 who keys after [`KEY_AFTER_MS`] and stays until the node's BYE.
fn caller(node: &Node, scenario: &str, number: &str) -> crate::harness::SippOutcome {
    Sipp::uac(scenario, node.sip, node.dir(), &format!("caller-{number}"))
        .media_port(node.sipp_media_port())
        .args(["-s", "300", "-d", KEY_AFTER_MS])
        .key("caller", number)
        .calls(1, 1)
        .run(Duration::from_secs(30))
}

/// The call was queued in `queue` at `priority` (the call task logs it).
fn assert_queued(node: &Node, queue: &str, priority: u32) {
    let log = node.log_plain();
    let line = log
        .lines()
        .find(|l| l.contains("call queued"))
        .unwrap_or_else(|| panic!("no `call queued` in the log:\n{}", node.log_tail()));
    assert!(
        line.contains(&format!("queue={queue}")) && line.contains(&format!("priority={priority}")),
        "queued in {queue} at priority {priority}: {line}"
    );
}

/// Nothing listens on this port (a look-up there would fail); for tests without one.
fn unused_port() -> u16 {
    crate::harness::free_port()
}

#[test]
fn rfc4733_key_routes_to_the_high_priority_queue() {
    let prompts = prompts();
    let node = Node::start(spec(prompts.path(), unused_port()));
    let from = Path::new("/usr/share/sip-tester/dtmf_2833_1.pcap");
    std::fs::copy(from, node.dir().join("ivr_key.pcap")).unwrap_or_else(|e| {
        panic!(
            "copying {} (from the sip-tester package): {e}",
            from.display()
        )
    });
    let _phone = ready_agent_1001(&node, TALK_MS);
    caller(&node, "caller_ivr_rfc4733.xml", "5553001")
        .assert_success("the caller presses 1, talks to the agent, and is hung up on");
    let cdrs = node.wait_cdrs(1, Duration::from_secs(10));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "queue"), "outage", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "agent"), "1001", "CDR: {cdr}");
    assert_queued(&node, "outage", 9);
}

#[test]
fn inband_key_routes_to_the_high_priority_queue() {
    let prompts = prompts();
    let node = Node::start(spec(prompts.path(), unused_port()));
    write_keys(node.dir(), "1");
    let _phone = ready_agent_1001(&node, TALK_MS);
    caller(&node, "caller_ivr_inband.xml", "5553002")
        .assert_success("the caller tones 1, talks to the agent, and is hung up on");
    let cdrs = node.wait_cdrs(1, Duration::from_secs(10));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "queue"), "outage", "CDR: {cdr}");
    assert_queued(&node, "outage", 9);
}

/// A one-request HTTP server on 127.0.0.1:0: it hands the request's JSON body to the test
/// and answers `reply`.
fn lookup_server(reply: &'static str) -> (u16, mpsc::Receiver<serde_json::Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local addr: {e}"))
        .port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // One request is all the test makes; the thread ends with it (or with the process).
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut reader = BufReader::new(stream);
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length.min(64 * 1024)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        tx.send(json).ok();
        let mut stream = reader.into_inner();
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
            reply.len()
        );
        stream.write_all(response.as_bytes()).ok();
    });
    (port, rx)
}

#[test]
fn collected_account_goes_to_the_lookup_whose_reply_picks_the_queue() {
    let prompts = prompts();
    let (port, requests) = lookup_server(
        r#"{"vars": {"status": "overdue", "balance": "42.10"}, "prompt": "balance"}"#,
    );
    let node = Node::start(spec(prompts.path(), port));
    // 2 for the bill menu, then the account number ended by #.
    write_keys(node.dir(), "2 1234#");
    let _phone = ready_agent_1001(&node, TALK_MS);
    caller(&node, "caller_ivr_inband.xml", "5553003")
        .assert_success("the caller keys an account, is routed by the look-up, talks, hangs up");
    let request = requests
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("no look-up reached the server: {e}"));
    assert_eq!(
        request["vars"]["account"], "1234",
        "look-up body: {request}"
    );
    assert_eq!(request["caller"], "5553003", "look-up body: {request}");
    assert_eq!(request["dialled"], "300", "look-up body: {request}");
    let cdrs = node.wait_cdrs(1, Duration::from_secs(10));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
    assert_eq!(
        cdr_str(cdr, "queue"),
        "outage",
        "overdue goes to outage: {cdr}"
    );
    assert_queued(&node, "outage", 9);
}

#[test]
fn invalid_key_is_retried_then_a_silent_caller_is_hung_up_on() {
    let prompts = prompts();
    let node = Node::start(spec(prompts.path(), unused_port()));
    write_keys(node.dir(), "9");
    caller(&node, "caller_ivr_inband.xml", "5553004")
        .assert_success("the caller keys 9, then nothing, and is hung up on");
    let cdrs = node.wait_cdrs(1, Duration::from_secs(10));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "ivr", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "cause"), "hangup", "CDR: {cdr}");
    let log = node.log_plain();
    assert!(
        !log.contains("call queued"),
        "the call never queued:\n{}",
        node.log_tail()
    );
}

#[test]
fn menu_key_transfers_the_caller_to_a_number_through_the_gateway() {
    let prompts = prompts();
    let gateway_port = crate::harness::free_port();
    let node = Node::start(spec_with_gateway(
        prompts.path(),
        unused_port(),
        gateway_port,
    ));
    // Key 4, then 3 s more of the caller's audio (silence) for the number to echo.
    write_keys(node.dir(), "4     ");
    // The number echoes the caller's audio and hangs up after 2 s.
    let gateway = Sipp::uas("agent_uas.xml", node.dir(), "gateway")
        .rtp_echo(node.sipp_media_port())
        .args(["-p".to_string(), gateway_port.to_string()])
        .args(["-m", "1", "-recv_timeout", "2000"])
        .trace_messages()
        .spawn();
    caller(&node, "caller_ivr_inband.xml", "5553006")
        .assert_success("the caller tones 4, talks to the number, and is hung up on");
    gateway
        .wait(Duration::from_secs(10))
        .assert_success("the gateway answered, talked and hung up");
    let messages =
        std::fs::read_to_string(node.dir().join("gateway.messages.log")).unwrap_or_default();
    assert!(
        messages.contains(&format!("INVITE sip:{TRANSFER_NUMBER}@127.0.0.1")),
        "the gateway was asked for the number:\n{messages:.2000}"
    );
    let cdrs = node.wait_cdrs(1, Duration::from_secs(10));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "ivr", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "cause"), "transfer", "CDR: {cdr}");
    assert_eq!(
        cdr_str(cdr, "transfer"),
        format!("ivr:{TRANSFER_NUMBER}"),
        "CDR: {cdr}"
    );
    assert_eq!(
        cdr_str(cdr, "hangup_by"),
        "system",
        "the number hung up: {cdr}"
    );
    assert!(
        cdr_u64(cdr, "rtp_caller_to_agent") > 0 && cdr_u64(cdr, "rtp_agent_to_caller") > 0,
        "audio went both ways between caller and number: {cdr}"
    );
    assert!(
        cdr_u64(cdr, "ended_at_ms") >= cdr_u64(cdr, "answered_at_ms") + 1_500,
        "the record ends when the number hangs up: {cdr}"
    );
    assert!(
        !node.log_plain().contains("call queued"),
        "the call never queued:\n{}",
        node.log_tail()
    );
}

#[test]
fn a_flow_changed_live_routes_the_next_call() {
    const ADMIN: &str = "flows-admin-token";
    const AGENT: &str = "flows-agent-token";
    let prompts = prompts();
    let mut spec = spec(prompts.path(), unused_port());
    spec.set("grpc", "listen", "127.0.0.1:9090").set_tokens([
        Grant::new(ADMIN, "admin").name("admin-user"),
        Grant::new(AGENT, "agent").agent("1001").name("agent-user"),
    ]);
    let node = Node::start(spec);
    let addr = node.grpc_addr();
    let ctl = |token: &str, args: &[&str]| crate::harness::ctl(addr, Some(token), args);
    let listed = |out: &str| -> serde_json::Value {
        serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    };

    let (ok, out, err) = ctl(ADMIN, &["flows", "list"]);
    assert!(ok, "{err}");
    let flows = listed(&out);
    assert_eq!(flows["flows"][0]["name"], "utility", "{flows}");
    assert_eq!(flows["flows"][0]["numbers"][0], "300", "{flows}");

    let direct = |queue: &str| {
        format!(
            "name = \"direct\"\nstart = \"q\"\n[[steps]]\nid = \"q\"\nkind = \"queue\"\n\
             queue = \"{queue}\"\npriority = 7\n"
        )
    };
    let write = |name: &str, text: &str| {
        let path = node.dir().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {name}: {e}"));
        path.display().to_string()
    };
    let bad = write("bad.toml", &direct("nowhere"));
    let good = write("good.toml", &direct("outage"));

    // An agent may not change flows; a flow naming an unknown queue is refused by key.
    let (ok, _, err) = ctl(AGENT, &["flows", "set", &good]);
    assert!(!ok && err.to_lowercase().contains("permission"), "{err}");
    let (ok, _, err) = ctl(ADMIN, &["flows", "set", &bad]);
    assert!(!ok, "a flow into an unknown queue was accepted");
    assert!(
        err.contains("steps[0].queue") && err.contains("nowhere"),
        "{err}"
    );

    let (ok, out, err) = ctl(ADMIN, &["flows", "set", &good]);
    assert!(ok, "{err}");
    assert_eq!(
        listed(&out)["flows"].as_array().map(Vec::len),
        Some(2),
        "{out}"
    );
    let (ok, _, err) = ctl(ADMIN, &["flows", "attach", "300", "direct"]);
    assert!(ok, "{err}");
    // In use: not removable; the one no number runs now is.
    let (ok, _, err) = ctl(ADMIN, &["flows", "delete", "direct"]);
    assert!(!ok && err.contains("300"), "{err}");
    let (ok, _, err) = ctl(ADMIN, &["flows", "delete", "utility"]);
    assert!(ok, "{err}");

    // The next call skips the menu: straight to outage at priority 7, no key pressed.
    let _phone = ready_agent_1001(&node, TALK_MS);
    write_keys(node.dir(), " ");
    caller(&node, "caller_ivr_inband.xml", "5553005")
        .assert_success("the caller goes straight to an agent");
    let cdrs = node.wait_cdrs(1, Duration::from_secs(10));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "queue"), "outage", "CDR: {cdr}");
    assert_queued(&node, "outage", 7);

    let (ok, out, err) = ctl(ADMIN, &["audit", "list", "--json"]);
    assert!(ok, "{err}");
    let audit = listed(&out);
    let entries = audit.as_array().cloned().unwrap_or_default();
    for (action, outcome) in [
        ("AdminService.SetFlow", "refused"),
        ("AdminService.SetFlow", "failed"),
        ("AdminService.SetFlow", "allowed"),
        ("AdminService.AttachFlow", "allowed"),
    ] {
        assert!(
            entries
                .iter()
                .any(|e| e["action"] == action && e["outcome"] == outcome),
            "no {action} {outcome} in the audit log:\n{out}"
        );
    }
}
