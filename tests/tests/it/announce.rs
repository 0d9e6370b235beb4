//! Place-in-line announcements through a real node: two SIPp callers wait with no agent
//! logged in, and each hears "you are caller number N" composed from the word prompts.
//! The test writes each word prompt as a tone of its own pitch, binds the UDP ports the
//! callers' SDP names as their audio ports, and reads the words back from the RTP the node
//! sends: the first caller must hear `you_are_caller 1`, the second `you_are_caller 2`.

// These tests wait on real processes in wall-clock time.
#![allow(clippy::disallowed_methods)]

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use carillon_media::codec::ulaw_to_linear;

use crate::harness::{Node, NodeSpec, Sipp};

/// Every word file the node loads (`node/src/announce.rs`; it refuses to start without
/// one of them), in the order that gives each its tone: word k is `TONE_BASE_HZ + k * TONE_STEP_HZ`.
fn word_names() -> Vec<String> {
    let mut names: Vec<String> = (0..20).map(|n| n.to_string()).collect();
    names.extend((2..10).map(|t| (t * 10).to_string()));
    names.push("hundred".to_string());
    for p in [
        "you_are_caller",
        "expected_wait",
        "minute",
        "minutes",
        "less_than_a_minute",
        "more_than_an_hour",
    ] {
        names.push(p.to_string());
    }
    names
}

const TONE_BASE_HZ: f32 = 300.0;
const TONE_STEP_HZ: f32 = 45.0;
const WORD_MS: usize = 240;
/// A word must fill this many consecutive 20 ms frames to count (ignores boundaries).
const RUN_FRAMES_MIN: usize = 4;

fn tone_hz(k: usize) -> f32 {
    TONE_BASE_HZ + k as f32 * TONE_STEP_HZ
}

fn write_word_prompts(dir: &Path) {
    for (k, name) in word_names().iter().enumerate() {
        let n = 8 * WORD_MS;
        let w = 2.0 * std::f32::consts::PI * tone_hz(k) / 8_000.0;
        let samples: Vec<i16> = (0..n)
            .map(|i| ((i as f32 * w).sin() * 8_000.0) as i16)
            .collect();
        carillon_media::wav::write_pcm16(dir.join(format!("{name}.wav")), &samples)
            .unwrap_or_else(|e| panic!("writing {name}.wav: {e}"));
    }
}

/// Goertzel power of `freq` in `frame` (8 kHz).
fn power(frame: &[f32], freq: f32) -> f32 {
    let coeff = 2.0 * (2.0 * std::f32::consts::PI * freq / 8_000.0).cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &x in frame {
        let s = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// The word a 20 ms frame of µ-law carries, if one tone holds most of its energy.
fn word_of(payload: &[u8], names: &[String]) -> Option<usize> {
    let frame: Vec<f32> = payload
        .iter()
        .map(|b| f32::from(ulaw_to_linear(*b)))
        .collect();
    let energy: f32 = frame.iter().map(|x| x * x).sum();
    if energy < 1e6 {
        return None;
    }
    let (best, p) = (0..names.len())
        .map(|k| (k, power(&frame, tone_hz(k))))
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    // A pure tone puts about N/2 times the frame's energy into its bin.
    (p > 0.5 * energy * frame.len() as f32 / 2.0).then_some(best)
}

/// Listens on `sock` until `deadline`; the words heard, each run of one tone once.
fn words_heard(sock: &UdpSocket, deadline: Instant) -> Vec<String> {
    let names = word_names();
    let mut frames = Vec::new();
    let mut buf = [0u8; 2048];
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            // RTP header without CSRCs or extension: 12 bytes; PCMU payload type 0.
            if n > 12 && buf[1] & 0x7f == 0 {
                frames.push(word_of(&buf[12..n], &names));
            }
        }
    }
    let mut words = Vec::new();
    let mut run: Option<(usize, usize)> = None;
    for f in frames.into_iter().chain([None]) {
        match (run, f) {
            (Some((k, n)), Some(j)) if k == j => run = Some((k, n + 1)),
            _ => {
                if let Some((k, n)) = run {
                    if n >= RUN_FRAMES_MIN {
                        words.push(names[k].clone());
                    }
                }
                run = f.map(|j| (j, 1));
            }
        }
    }
    words
}

fn says(words: &[String], phrase: &[&str]) -> bool {
    words
        .windows(phrase.len())
        .any(|w| w.iter().zip(phrase).all(|(a, b)| a == b))
}

#[test]
fn waiting_callers_hear_their_place_in_line() {
    let prompts = tempfile::tempdir().expect("temp dir");
    write_word_prompts(prompts.path());
    let mut spec = NodeSpec::for_test();
    spec.set(
        "announcements",
        "prompt_dir",
        prompts.path().display().to_string(),
    )
    .set("announcements", "first_after_s", 1)
    .set("announcements", "every_s", 2);
    let node = Node::start(spec);
    assert_eq!(node.agents_in("ready"), 0);

    let ear = |_: ()| UdpSocket::bind("127.0.0.1:0").expect("bind a listening port");
    let (ear1, ear2) = (ear(()), ear(()));
    let port = |s: &UdpSocket| s.local_addr().expect("bound").port();
    let first = Sipp::uac("caller_listen.xml", node.sip, node.dir(), "first")
        .args(["-s", "100", "-d", "7000"])
        .key("caller", "5551001")
        .key("listen_port", port(&ear1))
        .calls(1, 1)
        .spawn();
    node.wait_until("the first caller waits", Duration::from_secs(10), |n| {
        n.active_calls() == 1
    });
    let second = Sipp::uac("caller_listen.xml", node.sip, node.dir(), "second")
        .args(["-s", "100", "-d", "4500"])
        .key("caller", "5551002")
        .key("listen_port", port(&ear2))
        .calls(1, 1)
        .spawn();
    let until = Instant::now() + Duration::from_millis(4_500);
    let heard2 = std::thread::scope(|s| {
        let h = s.spawn(|| words_heard(&ear2, until));
        let heard1 = words_heard(&ear1, until);
        assert!(
            says(&heard1, &["you_are_caller", "1"]),
            "the first caller heard {heard1:?}"
        );
        h.join().expect("listener thread")
    });
    assert!(
        says(&heard2, &["you_are_caller", "2"]),
        "the second caller heard {heard2:?}"
    );
    assert!(
        !says(&heard2, &["you_are_caller", "1"]),
        "the second caller was told it is first: {heard2:?}"
    );
    second
        .wait(Duration::from_secs(15))
        .assert_success("second caller");
    first
        .wait(Duration::from_secs(15))
        .assert_success("first caller");
    let cdrs = node.wait_cdrs(2, Duration::from_secs(5));
    assert!(
        cdrs.iter().all(|c| c["disposition"] == "abandoned"),
        "{cdrs:?}"
    );
}
