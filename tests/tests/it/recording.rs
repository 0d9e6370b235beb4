//! Call recording end to end: a SIPp caller sends one tone and a SIPp agent phone another;
//! the node's stereo WAV must carry the caller's on the left and the agent's on the right
//! (checked with sox and with a Goertzel filter over the samples), last as long as the
//! CDR's talk time, and be found by `carillon ctl recordings search`. A tiny disk limit
//! pauses recording with an alarm in /metrics while calls go on; a node SIGKILLed
//! mid-call leaves a WAV that is valid up to its last flushed second.
//!
//! Needs sox (`scripts/install-deps.sh` installs it).

// These tests wait on real processes in wall-clock time.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use toml::{Table, Value as Toml};

use crate::harness::{
    agents_csv, cdr_str, cdr_u64, ctl, register, Node, NodeSpec, Sipp, SippProcess, TestCluster,
};

const SUPERVISOR: &str = "rec-super-token";
const AGENT_1001: &str = "rec-agent-1001-token";
/// The caller's tone (tone.pcmu, written by the harness) and the agent's (written here).
const CALLER_HZ: f64 = 440.0;
const AGENT_HZ: f64 = 1000.0;
const SAMPLE_RATE_HZ: f64 = 8000.0;
/// Bytes of one second of the recorder's stereo 16-bit audio, and of its WAV header.
const SECOND_BYTES: u64 = 32_000;
const HEADER_BYTES: u64 = 44;

/// The test cast, two API tokens, and `[recording]` settings.
fn spec(recording: &[(&str, Toml)]) -> NodeSpec {
    let mut spec = NodeSpec::for_test();
    grant_tokens(&mut spec);
    for (key, value) in recording {
        spec.set("recording", key, value.clone());
    }
    spec
}

/// A supervisor token and one for agent 1001.
fn grant_tokens(spec: &mut NodeSpec) {
    let grant = |role: &str, agent: Option<&str>| {
        let mut t = Table::new();
        t.insert("role".into(), role.into());
        if let Some(a) = agent {
            t.insert("agent".into(), a.into());
        }
        Toml::Table(t)
    };
    let mut tokens = Table::new();
    tokens.insert(SUPERVISOR.into(), grant("supervisor", None));
    tokens.insert(AGENT_1001.into(), grant("agent", Some("1001")));
    spec.set("grpc", "tokens", Toml::Table(tokens));
}

/// Panics with the fix when sox is not installed.
fn require_sox() {
    let found = Command::new("sox").arg("--version").output().is_ok();
    assert!(
        found,
        "sox is not installed: run scripts/install-deps.sh (Debian package sox)"
    );
}

/// Agent 1001 on a phone that answers and streams a 1 kHz tone; returns once 1001 is ready.
/// With `hang_up_after_ms` the phone hangs up itself when the node has not by then.
fn speaking_agent(node: &Node, hang_up_after_ms: Option<u64>) -> SippProcess {
    let tone = node.dir().join("agent_tone.pcmu");
    let out = Command::new("sox")
        .args(["-n", "-r", "8000", "-c", "1", "-t", "ul"])
        .arg(&tone)
        .args(["synth", "1", "sine", &AGENT_HZ.to_string(), "vol", "0.25"])
        .output()
        .unwrap_or_else(|e| panic!("running sox: {e}"));
    assert!(
        out.status.success(),
        "sox: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut phone =
        Sipp::uas("agent_tone.xml", node.dir(), "phone").media_port(node.sipp_media_port());
    if let Some(ms) = hang_up_after_ms {
        phone = phone.args(["-recv_timeout".to_string(), ms.to_string()]);
    }
    let port = phone.sip_port;
    let phone = phone.spawn();
    let csv = agents_csv(node.dir(), "agent-1001.csv", [1001], "pw");
    register(node, &csv, 1, port, 3600, "register").assert_success("registering 1001");
    node.wait_until("1001 ready", Duration::from_secs(5), |n| {
        n.agents_in("ready") == 1
    });
    phone
}

/// One caller from `number` streaming the 440 Hz tone for `talk_ms` after the answer.
fn call(node: &Node, number: &str, talk_ms: u64, label: &str) {
    Sipp::uac("caller.xml", node.sip, node.dir(), label)
        .media_port(node.sipp_media_port())
        .args(["-s", "100", "-d", &talk_ms.to_string()])
        .key("caller", number)
        .calls(1, 1)
        .run(Duration::from_millis(talk_ms + 15_000))
        .assert_success(label);
}

/// `ctl recordings search ARGS --json` as `token`; the reply document.
fn search(node: &Node, token: &str, args: &[&str]) -> Value {
    let mut all = vec!["recordings", "search", "--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = ctl(node.grpc_addr(), Some(token), &all);
    assert!(ok, "ctl {all:?} failed: {err}\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ctl {all:?}: not JSON ({e}): {out}"))
}

fn recordings(reply: &Value) -> &Vec<Value> {
    reply["recordings"]
        .as_array()
        .unwrap_or_else(|| panic!("no recordings array: {reply}"))
}

/// GET /metrics as text.
fn metrics(node: &Node) -> String {
    let mut s = TcpStream::connect(node.http).unwrap_or_else(|e| panic!("connect: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("write: {e}"));
    let mut text = String::new();
    s.read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("read /metrics: {e}"));
    text
}

/// The value of the series `name_with_labels` (the text before the value) in /metrics.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A channel's statistics from `sox FILE -n remix N stat`: (RMS amplitude, rough frequency).
fn sox_stat(path: &Path, channel: u32) -> (f64, f64) {
    let out = Command::new("sox")
        .arg(path)
        .args(["-n", "remix", &channel.to_string(), "stat"])
        .output()
        .unwrap_or_else(|e| panic!("running sox: {e}"));
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "sox stat on {}: {text}",
        path.display()
    );
    let field = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(':').next()?.trim().parse().ok())
            .unwrap_or_else(|| panic!("sox stat has no `{name}`: {text}"))
    };
    (field("RMS     amplitude"), field("Rough   frequency"))
}

/// The length sox reads from the file's header, in seconds.
fn sox_seconds(path: &Path) -> f64 {
    let out = Command::new("soxi")
        .arg("-D")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("running soxi: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "soxi on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("soxi -D said {text:?}: {e}"))
}

/// The left and right channels of a 16-bit stereo WAV with the canonical 44-byte header,
/// after checking that header against the file's size.
fn read_stereo(path: &Path) -> (Vec<i16>, Vec<i16>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        bytes.len() >= HEADER_BYTES as usize,
        "{} is shorter than a header",
        path.display()
    );
    assert_eq!(&bytes[0..4], b"RIFF");
    assert_eq!(&bytes[8..12], b"WAVE");
    assert_eq!(&bytes[36..40], b"data");
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let data_len = u32_at(40) as usize;
    assert_eq!(
        u32_at(4) as usize,
        data_len + 36,
        "RIFF length disagrees with data length"
    );
    assert_eq!(u16::from_le_bytes([bytes[22], bytes[23]]), 2, "not stereo");
    assert_eq!(u32_at(24), 8000, "not 8 kHz");
    assert_eq!(
        bytes.len(),
        HEADER_BYTES as usize + data_len,
        "the header's data length must cover the file exactly"
    );
    let data = &bytes[HEADER_BYTES as usize..];
    let left = data
        .chunks_exact(4)
        .map(|f| i16::from_le_bytes([f[0], f[1]]))
        .collect();
    let right = data
        .chunks_exact(4)
        .map(|f| i16::from_le_bytes([f[2], f[3]]))
        .collect();
    (left, right)
}

/// Power of `samples` at `hz` (Goertzel), normalised by length.
fn goertzel(samples: &[i16], hz: f64) -> f64 {
    let coeff = 2.0 * (2.0 * std::f64::consts::PI * hz / SAMPLE_RATE_HZ).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (samples.len() as f64).powi(2)
}

/// Checks that `samples` carry `hz` far above `other_hz`.
fn assert_tone(samples: &[i16], hz: f64, other_hz: f64, what: &str) {
    let (want, other) = (goertzel(samples, hz), goertzel(samples, other_hz));
    assert!(
        want > 100.0 * other.max(1e-9) && want > 1e4,
        "{what}: power at {hz} Hz {want:.1}, at {other_hz} Hz {other:.1}"
    );
}

/// The .wav files in `dir`.
fn wavs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    out.retain(|p| p.extension().is_some_and(|e| e == "wav"));
    out.sort();
    out
}

#[test]
fn recording_caller_left_agent_right_and_found_by_search() {
    require_sox();
    let node = Node::start(spec(&[]));
    let _phone = speaking_agent(&node, None);
    call(&node, "5551234", 3_000, "caller");

    let cdrs = node.wait_cdrs(1, Duration::from_secs(5));
    let cdr = &cdrs[0];
    assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
    let talk_ms = cdr_u64(cdr, "ended_at_ms") - cdr_u64(cdr, "answered_at_ms");

    // Found by agent and by number, and the two searches agree.
    let by_agent = search(&node, SUPERVISOR, &["--agent", "1001"]);
    let found = recordings(&by_agent);
    assert_eq!(found.len(), 1, "by agent: {by_agent}");
    let rec = &found[0];
    assert_eq!(rec["call_id"], cdr["call_id"], "{rec}");
    assert_eq!(rec["caller"], "5551234", "{rec}");
    assert_eq!(rec["queue"], "support", "{rec}");
    let by_number = search(&node, SUPERVISOR, &["--number", "5551234"]);
    assert_eq!(recordings(&by_number), found, "by number: {by_number}");
    // Filters that exclude it.
    for args in [
        &["--number", "5550000"][..],
        &["--agent", "1002"],
        &["--queue", "sales"],
        &["--min-duration", "60"],
        &["--max-duration", "1"],
        &["--to", "2000-01-01"],
        &["--from", "2999-01-01T00:00:00Z"],
    ] {
        let none = search(&node, SUPERVISOR, args);
        assert!(recordings(&none).is_empty(), "{args:?} found: {none}");
    }
    // Filters that keep it: today's date range and a duration window around it.
    let both = search(
        &node,
        SUPERVISOR,
        &[
            "--from",
            "2000-01-01",
            "--min-duration",
            "1",
            "--max-duration",
            "30",
            "--number",
            "5551234",
            "--agent",
            "1001",
        ],
    );
    assert_eq!(recordings(&both).len(), 1, "{both}");

    // The file: as long as the talk time, caller left, agent right.
    let path = PathBuf::from(rec["path"].as_str().unwrap_or_default());
    let duration_ms = rec["duration_ms"].as_u64().unwrap_or(0);
    assert!(
        duration_ms.abs_diff(talk_ms) <= 1_000,
        "recording {duration_ms} ms, CDR talk time {talk_ms} ms"
    );
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert_eq!(rec["size_bytes"].as_u64(), Some(size), "{rec}");
    let seconds = sox_seconds(&path);
    assert!(
        (seconds * 1000.0 - talk_ms as f64).abs() <= 1_000.0,
        "sox reads {seconds} s, CDR talk time {talk_ms} ms"
    );
    let (left_rms, left_hz) = sox_stat(&path, 1);
    let (right_rms, right_hz) = sox_stat(&path, 2);
    assert!(
        left_rms > 0.05 && right_rms > 0.05,
        "RMS left {left_rms}, right {right_rms}"
    );
    assert!(
        (left_hz - CALLER_HZ).abs() < CALLER_HZ * 0.15,
        "left channel at {left_hz} Hz"
    );
    assert!(
        (right_hz - AGENT_HZ).abs() < AGENT_HZ * 0.15,
        "right channel at {right_hz} Hz"
    );
    let (left, right) = read_stereo(&path);
    assert_tone(&left, CALLER_HZ, AGENT_HZ, "left (caller)");
    assert_tone(&right, AGENT_HZ, CALLER_HZ, "right (agent)");

    // Agents may not search recordings, and the refusal is audited.
    let (ok, _, err) = ctl(
        node.grpc_addr(),
        Some(AGENT_1001),
        &["recordings", "search", "--agent", "1001"],
    );
    assert!(
        !ok && err.contains("PermissionDenied"),
        "agent search: {err}"
    );
    let audit = std::fs::read_to_string(node.dir().join("data/audit.jsonl")).unwrap_or_default();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("RecordService.SearchRecordings")
                && l.contains("refused")
                && l.contains("agent=1001")),
        "no refusal audited:\n{audit}"
    );
    // A bad time names the problem.
    let (ok, _, err) = ctl(
        node.grpc_addr(),
        Some(SUPERVISOR),
        &["recordings", "search", "--from", "yesterday"],
    );
    assert!(!ok && err.contains("not a date"), "{err}");

    let text = metrics(&node);
    assert_eq!(
        metric(&text, "carillon_recordings_started_total"),
        Some(1.0),
        "{text}"
    );
    let disk = metric(&text, "carillon_recording_disk_bytes").unwrap_or(0.0);
    assert!(
        disk >= size as f64,
        "disk gauge {disk} below the file's {size} bytes"
    );
    assert_eq!(
        metric(&text, r#"carillon_recording_alarm{alarm="watermark"}"#),
        Some(0.0)
    );
}

#[test]
fn recording_pauses_at_the_disk_limit_and_calls_go_on() {
    require_sox();
    // Already over the 1 MB watermark, and 1.5 s of audio short of the 2 MB limit: the
    // first call is recorded for one flushed second and then paused; the next is refused.
    let rec_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let limit = 2 * 1024 * 1024;
    let filler = limit - HEADER_BYTES - SECOND_BYTES * 3 / 2;
    std::fs::write(
        rec_dir.path().join("filler.wav"),
        vec![0u8; filler as usize],
    )
    .unwrap_or_else(|e| panic!("writing the filler: {e}"));
    let node = Node::start(spec(&[
        ("dir", rec_dir.path().display().to_string().into()),
        ("disk_watermark_mb", 1.into()),
        ("disk_limit_mb", 2.into()),
    ]));
    let before = metrics(&node);
    assert_eq!(
        metric(&before, r#"carillon_recording_alarm{alarm="watermark"}"#),
        Some(1.0),
        "{before}"
    );
    assert_eq!(
        metric(&before, r#"carillon_recording_alarm{alarm="limit"}"#),
        Some(0.0),
        "{before}"
    );

    let _phone = speaking_agent(&node, None);
    call(&node, "5552001", 3_000, "caller-1");
    node.wait_cdrs(1, Duration::from_secs(5));
    call(&node, "5552002", 2_000, "caller-2");
    let cdrs = node.wait_cdrs(2, Duration::from_secs(5));
    for cdr in &cdrs {
        assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
        assert!(cdr_u64(cdr, "rtp_agent_to_caller") > 0, "CDR: {cdr}");
    }

    let text = metrics(&node);
    assert_eq!(
        metric(&text, r#"carillon_recording_alarm{alarm="limit"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "carillon_recordings_refused_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "carillon_recordings_started_total"),
        Some(1.0),
        "{text}"
    );
    let log = std::fs::read_to_string(node.dir().join("node.log")).unwrap_or_default();
    assert!(
        log.contains("watermark reached"),
        "no watermark warning in the log"
    );
    assert!(
        log.contains("recording paused"),
        "no limit warning in the log"
    );

    // The first call's recording stops at the limit, whole; the second has none.
    let all = search(&node, SUPERVISOR, &[]);
    let found = recordings(&all);
    assert_eq!(found.len(), 1, "{all}");
    assert_eq!(found[0]["caller"], "5552001");
    assert_eq!(found[0]["paused"], true, "{all}");
    assert_eq!(found[0]["duration_ms"].as_u64(), Some(1_000), "{all}");
    let path = PathBuf::from(found[0]["path"].as_str().unwrap_or_default());
    let (left, right) = read_stereo(&path);
    assert_eq!(left.len(), 8_000);
    assert_tone(
        &right,
        AGENT_HZ,
        CALLER_HZ,
        "right (agent) before the pause",
    );
    assert_eq!(
        wavs(rec_dir.path()).len(),
        2,
        "filler and one recording only"
    );
}

#[test]
fn recording_survives_a_node_killed_mid_call() {
    require_sox();
    let mut node = Node::start(spec(&[]));
    let _phone = speaking_agent(&node, None);
    let _caller = Sipp::uac("caller.xml", node.sip, node.dir(), "caller")
        .media_port(node.sipp_media_port())
        .args(["-s", "100", "-d", "20000"])
        .key("caller", "5553001")
        .calls(1, 1)
        .spawn();
    let dir = node.dir().join("data/recordings");
    // Three flushed seconds (each second is written 200 ms after it ends).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let size = wavs(&dir)
            .first()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len());
        if size >= HEADER_BYTES + 3 * SECOND_BYTES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 3 s of recording; node log:\n{}",
            node.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    node.kill();

    let files = wavs(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let path = &files[0];
    // Valid to its last flushed second: the header covers the file, whole seconds only.
    let (left, right) = read_stereo(path);
    assert_eq!(
        left.len() % 8_000,
        0,
        "{} samples is not whole seconds",
        left.len()
    );
    assert!(left.len() >= 3 * 8_000, "{} samples", left.len());
    let seconds = sox_seconds(path);
    assert!(
        (seconds - left.len() as f64 / 8_000.0).abs() < 0.01,
        "sox reads {seconds} s"
    );
    // The last second carries both voices (skip the first, which holds the answer).
    let last = left.len() - 8_000;
    assert_tone(
        &left[last..],
        CALLER_HZ,
        AGENT_HZ,
        "left (caller), last second",
    );
    assert_tone(
        &right[last..],
        AGENT_HZ,
        CALLER_HZ,
        "right (agent), last second",
    );
    let (_, left_hz) = sox_stat(path, 1);
    assert!(
        (left_hz - CALLER_HZ).abs() < CALLER_HZ * 0.15,
        "left channel at {left_hz} Hz"
    );
}

#[test]
fn recording_of_a_call_crossing_nodes_is_made_where_the_caller_is() {
    require_sox();
    // The caller reaches n1; agent 1001's phone is registered at n2 (another site), so the
    // agent leg crosses to n2. n1 holds the caller's media and records both voices.
    let cluster = TestCluster::start(&["hq", "branch"], |_, spec| grant_tokens(spec));
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let _phone = speaking_agent(n2, None);
    n1.wait_until("1001 ready at n1", Duration::from_secs(10), |n| {
        n.agents_in("ready") == 1
    });
    call(n1, "5554001", 3_000, "caller");

    let cdrs = n1.wait_cdrs(1, Duration::from_secs(10));
    assert_eq!(
        cdr_str(&cdrs[0], "disposition"),
        "answered",
        "CDR: {}",
        cdrs[0]
    );
    let talk_ms = cdr_u64(&cdrs[0], "ended_at_ms") - cdr_u64(&cdrs[0], "answered_at_ms");
    let reply = search(n1, SUPERVISOR, &["--number", "5554001"]);
    let found = recordings(&reply);
    assert_eq!(found.len(), 1, "{reply}");
    assert_eq!(found[0]["node"], "n1", "{reply}");
    assert_eq!(found[0]["agent"], "1001", "{reply}");
    let duration_ms = found[0]["duration_ms"].as_u64().unwrap_or(0);
    assert!(
        duration_ms.abs_diff(talk_ms) <= 1_000,
        "recording {duration_ms} ms, talk {talk_ms} ms"
    );
    let path = PathBuf::from(found[0]["path"].as_str().unwrap_or_default());
    let (left, right) = read_stereo(&path);
    assert_tone(&left, CALLER_HZ, AGENT_HZ, "left (caller)");
    assert_tone(&right, AGENT_HZ, CALLER_HZ, "right (agent, through n2)");
    // n2 only relayed its side: no second recording of the same call.
    assert!(
        wavs(&n2.dir().join("data/recordings")).is_empty(),
        "n2 recorded too"
    );
    let at_n2 = search(n2, SUPERVISOR, &[]);
    assert!(recordings(&at_n2).is_empty(), "{at_n2}");
}
