//! Issue 4's routing rules through a real node and SIPp: caller priority by dialled number,
//! skills with an escalation step, and an after-hours queue that takes voicemail (listed
//! through `carillon ctl voicemail list`).

// The holiday in the voicemail test is today's date, read from the wall clock.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::{
    cdr_str, cdr_u64, free_port, ready_agent_1001, spec_from_text, workspace_dir, Node, NodeSpec,
    Sipp,
};

const SUPERVISOR: &str = "super-token-0001";
/// The agent phone hangs up this long after answering, so calls end without the callers'
/// help (they wait for the node's BYE).
const TALK_MS: &str = "1500";

/// A node config with one agent (1001, password pw1001, `skills`), queue `support` with
/// `queue_extra` lines, the `rest` sections appended, a supervisor API token, and the
/// example's hold music. Built from TOML text so that arrays of tables can be written.
fn spec(skills: &str, queue_extra: &str, rest: &str) -> NodeSpec {
    let hold = workspace_dir().join("examples/prompts/hold.wav");
    let text = format!(
        r#"
[node]
id = "n1"
site = "hq"
data_dir = "data"
[sip]
listen = "127.0.0.1:5060"
[rtp]
ip = "127.0.0.1"
port_min = 20000
port_max = 20100
[http]
listen = "127.0.0.1:8080"
[grpc]
listen = "127.0.0.1:9090"
[grpc.tokens]
"{SUPERVISOR}" = {{ role = "supervisor", name = "sup" }}
[media]
hold_music = "{hold}"
[[trunks]]
name = "local"
allow = ["127.0.0.0/8"]
[[agents]]
id = "1001"
password = "pw1001"
skills = [{skills}]
[[queues]]
name = "support"
skill = "support"
wrapup_s = 0
ring_timeout_s = 10
{queue_extra}
{rest}
"#,
        hold = hold.display()
    );
    spec_from_text(&text, "routing.toml")
}

fn waiting(node: &Node) -> u64 {
    node.status()["acd"]["queues"]["support"]["waiting"]
        .as_u64()
        .unwrap_or(0)
}

/// A caller dialling `service` who stays until the node hangs up.
fn patient_caller(node: &Node, service: &str, caller: &str) -> crate::harness::SippProcess {
    Sipp::uac(
        "caller_until_bye.xml",
        node.sip,
        node.dir(),
        &format!("caller-{caller}"),
    )
    .media_port(node.sipp_media_port())
    .args(["-s", service, "-timeout", "30s", "-timeout_error"])
    .key("caller", caller)
    .calls(1, 1)
    .spawn()
}

fn cdr_of<'a>(cdrs: &'a [serde_json::Value], caller: &str) -> &'a serde_json::Value {
    cdrs.iter()
        .find(|c| cdr_str(c, "caller") == caller)
        .unwrap_or_else(|| panic!("no CDR for caller {caller}: {cdrs:?}"))
}

#[test]
fn priority_number_is_answered_first() {
    let numbers = r#"
[[numbers]]
number = "100"
queue = "support"
[[numbers]]
number = "200"
queue = "support"
priority = 5
"#;
    let node = Node::start(spec("\"support\"", "", numbers));
    let _phone = ready_agent_1001(&node, TALK_MS);
    node.post("/api/agents/1001/not-ready");
    node.wait_until("1001 not ready", Duration::from_secs(5), |n| {
        n.agents_in("not_ready") == 1
    });

    let low = patient_caller(&node, "100", "5550001");
    node.wait_until("the low-priority call waits", Duration::from_secs(5), |n| {
        waiting(n) == 1
    });
    let high = patient_caller(&node, "200", "5550002");
    node.wait_until("both calls wait", Duration::from_secs(5), |n| {
        waiting(n) == 2
    });
    node.post("/api/agents/1001/ready");

    high.wait(Duration::from_secs(30))
        .assert_success("the high-priority caller is answered, then hung up on");
    low.wait(Duration::from_secs(30))
        .assert_success("the low-priority caller is answered next");
    let cdrs = node.wait_cdrs(2, Duration::from_secs(5));
    let (low, high) = (cdr_of(&cdrs, "5550001"), cdr_of(&cdrs, "5550002"));
    for cdr in [low, high] {
        assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
        assert_eq!(cdr_str(cdr, "agent"), "1001", "CDR: {cdr}");
    }
    assert!(
        cdr_u64(high, "answered_at_ms") < cdr_u64(low, "answered_at_ms"),
        "the later, higher-priority call is answered first: high {high}, low {low}"
    );
    assert!(
        cdr_u64(high, "arrived_at_ms") > cdr_u64(low, "arrived_at_ms"),
        "the high-priority call arrived second: high {high}, low {low}"
    );
}

/// The queue asks for level 8 for the first 2 s, then 5: a level-5 agent is offered the
/// call only after the step.
#[test]
fn skills_escalation_widens_after_the_step() {
    const STEP_MS: u64 = 2_000;
    let queue = r#"
min_level = 8
escalation = [{ after_s = 2, min_level = 5 }]
"#;
    let numbers = "[[numbers]]\nnumber = \"100\"\nqueue = \"support\"\n";
    let node = Node::start(spec("\"support:5\"", queue, numbers));
    let _phone = ready_agent_1001(&node, TALK_MS);

    let caller = patient_caller(&node, "100", "5550003");
    node.wait_until("the call waits", Duration::from_secs(5), |n| {
        waiting(n) == 1
    });
    assert_eq!(
        node.agents_in("ready"),
        1,
        "the level-5 agent stays ready before the step: {}",
        node.status()
    );
    caller
        .wait(Duration::from_secs(30))
        .assert_success("answered after the escalation step");
    let cdrs = node.wait_cdrs(1, Duration::from_secs(5));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "agent"), "1001", "CDR: {cdr}");
    let wait = cdr_u64(cdr, "wait_ms");
    assert!(
        (STEP_MS..STEP_MS + 3_000).contains(&wait),
        "offered at the step, not before (wait {wait} ms): {cdr}"
    );
}

/// Today's UTC date, `YYYY-MM-DD`, shifted by `days`.
fn utc_date(days: i64) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let z = i64::try_from(secs / 86_400).unwrap_or(0) + days + 719_468;
    // Days since 1970-01-01 to a civil date (the proleptic Gregorian calendar).
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn carillon_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CARILLON_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join("carillon"))
        .find(|c| c.is_file())
        .unwrap_or_else(|| panic!("carillon binary not found near {}", exe.display()))
}

/// Seconds of audio in a mono 16-bit WAV, and whether it holds more than silence.
fn wav_seconds_and_loud(path: &Path) -> (f64, bool) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() >= 44 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WAVE",
        "{} is not a WAV file",
        path.display()
    );
    let data = &bytes[44..];
    let loud = data
        .chunks_exact(2)
        .any(|s| i16::from_le_bytes([s[0], s[1]]).unsigned_abs() > 1_000);
    (data.len() as f64 / 2.0 / 8_000.0, loud)
}

/// The queue is closed today (a holiday); its after-hours action takes a voicemail.
#[test]
fn after_hours_voicemail_is_recorded_and_listed() {
    /// caller.xml streams audio for this long after the node answers, then hangs up.
    const CALLER_MS: u64 = 3_000;
    let queue = format!(
        r#"
after_hours_action = {{ action = "voicemail" }}
[queues.schedule]
time_zone = "UTC"
hours = [{{ days = "daily", open = "00:00", close = "24:00" }}]
holidays = ["{}", "{}", "{}"]
"#,
        utc_date(-1),
        utc_date(0),
        utc_date(1)
    );
    let rest = r#"
[[numbers]]
number = "100"
queue = "support"
[voicemail]
max_length_s = 30
"#;
    let node = Node::start(spec("\"support\"", &queue, rest));
    Sipp::uac("caller.xml", node.sip, node.dir(), "caller")
        .media_port(node.sipp_media_port())
        .args(["-s", "100", "-d", &CALLER_MS.to_string()])
        .key("caller", "5550004")
        .calls(1, 1)
        .run(Duration::from_secs(20))
        .assert_success("the caller leaves a message and hangs up");

    let cdrs = node.wait_cdrs(1, Duration::from_secs(10));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "voicemail", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "cause"), "after-hours", "CDR: {cdr}");

    let (ok, out, err) = {
        let out = Command::new(carillon_bin())
            .args([
                "ctl",
                "--node",
                &node.grpc_addr().to_string(),
                "--token",
                SUPERVISOR,
            ])
            .args(["voicemail", "list", "--queue", "support", "--json"])
            .env_remove("CARILLON_TOKEN")
            .output()
            .unwrap_or_else(|e| panic!("running carillon ctl: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(ok, "ctl voicemail list failed: {err}{out}");
    let list: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    let messages = list
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {out}"));
    assert_eq!(messages.len(), 1, "one message: {out}");
    let m = &messages[0];
    assert_eq!(m["caller"], "5550004", "{m}");
    assert_eq!(m["mailbox"], "support", "{m}");
    assert_eq!(m["call_id"].as_str(), Some(cdr_str(cdr, "call_id")), "{m}");
    // The beep takes the first ~0.6 s of the caller's 3 s.
    let duration = m["duration_ms"].as_u64().unwrap_or(0);
    assert!(
        (1_000..=CALLER_MS + 500).contains(&duration),
        "a plausible length ({duration} ms): {m}"
    );
    let path = PathBuf::from(m["path"].as_str().unwrap_or(""));
    let expected = node
        .dir()
        .join("data/voicemail/support")
        .join(format!("{}.wav", cdr_str(cdr, "call_id")));
    assert_eq!(path, expected, "{m}");
    let (seconds, loud) = wav_seconds_and_loud(&path);
    assert!(
        (seconds * 1000.0 - duration as f64).abs() < 100.0,
        "WAV length {seconds} s matches the sidecar's {duration} ms"
    );
    assert!(loud, "the caller's tone is in the message");
    assert!(
        path.with_extension("json").is_file(),
        "the sidecar sits beside the WAV"
    );
}

/// A waiting caller presses 1 and # (RFC 4733): they are hung up on but keep their place;
/// when the agent is ready the node rings the agent, then calls the caller's own number
/// through the callback gateway (a SIPp UAS here), and bridges the two.
#[test]
fn callback_keeps_the_place_and_calls_back() {
    const PCAPS: &str = "/usr/share/sip-tester";
    let gateway_port = free_port();
    let rest = format!(
        r#"
[[numbers]]
number = "100"
queue = "support"
[callback]
gateway = "127.0.0.1:{gateway_port}"
key = "1"
digit_timeout_s = 3
"#
    );
    let node = Node::start(spec("\"support\"", "", &rest));
    for pcap in ["dtmf_2833_1.pcap", "dtmf_2833_pound.pcap"] {
        let from = Path::new(PCAPS).join(pcap);
        std::fs::copy(&from, node.dir().join(pcap)).unwrap_or_else(|e| {
            panic!(
                "copying {} (from the sip-tester package): {e}",
                from.display()
            )
        });
    }
    // The customer's phone behind the gateway: answers and talks until the node hangs up
    // (after the agent, whose phone hangs up after TALK_MS). The config names the
    // gateway's port; SIPp takes the last `-p` given.
    let customer = Sipp::uas("customer_uas.xml", node.dir(), "customer")
        .media_port(node.sipp_media_port())
        .args(["-p".to_string(), gateway_port.to_string()])
        .args(["-m", "1"])
        .trace_messages()
        .spawn();
    let _phone = ready_agent_1001(&node, TALK_MS);
    node.post("/api/agents/1001/not-ready");
    node.wait_until("1001 not ready", Duration::from_secs(5), |n| {
        n.agents_in("not_ready") == 1
    });

    Sipp::uac("caller_callback.xml", node.sip, node.dir(), "caller")
        .media_port(node.sipp_media_port())
        .args(["-s", "100"])
        .key("caller", "5550006")
        .calls(1, 1)
        .run(Duration::from_secs(20))
        .assert_success("the caller asks for a callback and is hung up on");
    assert_eq!(
        waiting(&node),
        1,
        "the callback keeps its place: {}",
        node.status()
    );
    assert!(
        node.cdrs().is_empty(),
        "no record until the callback is done"
    );

    node.post("/api/agents/1001/ready");
    let cdrs = node.wait_cdrs(1, Duration::from_secs(20));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "agent"), "1001", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "caller"), "5550006", "CDR: {cdr}");
    let log = std::fs::read_to_string(node.dir().join("customer.messages.log")).unwrap_or_default();
    assert!(
        log.contains("INVITE sip:5550006@127.0.0.1"),
        "the gateway was asked for the caller's number:\n{log:.2000}"
    );
    assert!(
        cdr_u64(cdr, "rtp_caller_to_agent") > 0 && cdr_u64(cdr, "rtp_agent_to_caller") > 0,
        "audio bridged both ways (the agent's phone echoes the customer): {cdr}"
    );
    customer
        .wait(Duration::from_secs(10))
        .assert_success("the customer is hung up on after the agent leaves");
    // The callback leg (agent and customer) is recorded like any call.
    let wavs = wav_files(&node.dir().join("data").join("recordings"));
    assert_eq!(wavs.len(), 1, "one recording of the callback: {wavs:?}");
}

/// Every .wav file under `dir`, at any depth.
fn wav_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "wav") {
                found.push(path);
            }
        }
    }
    found
}

/// A closed queue (no opening hours) whose after-hours action is a prompt and hang-up: the
/// caller hears the prompt (a 1 s WAV), then the node hangs up; the record says `refused`,
/// `after-hours`.
#[test]
fn after_hours_prompt_then_hang_up() {
    const PROMPT_MS: u64 = 1_000;
    let prompt = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let path = prompt.path().join("closed.wav");
    std::fs::write(&path, silent_wav(PROMPT_MS)).unwrap_or_else(|e| panic!("closed.wav: {e}"));
    let queue = format!(
        r#"
after_hours_action = {{ action = "hangup", prompt = "{}" }}
# No opening hours at all: always closed.
[queues.schedule]
time_zone = "UTC"
"#,
        path.display()
    );
    let numbers = "[[numbers]]\nnumber = \"100\"\nqueue = \"support\"\n";
    let node = Node::start(spec("\"support\"", &queue, numbers));
    Sipp::uac("caller_until_bye.xml", node.sip, node.dir(), "caller")
        .media_port(node.sipp_media_port())
        .args(["-s", "100"])
        .key("caller", "5550007")
        .calls(1, 1)
        .run(Duration::from_secs(15))
        .assert_success("the node plays the prompt and hangs up");
    let cdrs = node.wait_cdrs(1, Duration::from_secs(5));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "refused", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "cause"), "after-hours", "CDR: {cdr}");
    let log = std::fs::read_to_string(node.dir().join("node.log")).unwrap_or_default();
    assert!(
        log.contains("hanging up on the caller (exit action)"),
        "the exit action ran: {}",
        node.log_tail()
    );
}

/// A mono 8 kHz 16-bit WAV of `ms` of silence.
fn silent_wav(ms: u64) -> Vec<u8> {
    let data_len = u32::try_from(ms * 16).unwrap_or(u32::MAX / 2);
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&8_000u32.to_le_bytes());
    out.extend_from_slice(&16_000u32.to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.resize(out.len() + data_len as usize, 0);
    out
}
