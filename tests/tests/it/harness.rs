//! The test harness: real `carillon` node processes and SIPp peers on loopback, each test
//! with its own ports, RTP range and temp directory, every wait bounded, every process
//! killed on drop (also when an assertion fails).
//!
//! Needs the node binary built first (`cargo build -p carillon`, same profile as the
//! tests) and SIPp installed (`scripts/install-deps.sh`).
// These tests drive real processes and wait on them in wall-clock time; there is no
// simulated clock to inject here.
#![allow(clippy::disallowed_methods)]

mod cluster;
mod http;
mod node;
mod ports;
mod sipp;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use cluster::TestCluster;
pub use node::{carillon_bin, workspace_dir, Grant, Node, NodeSpec};
pub use ports::free_port;
pub use sipp::{Sipp, SippOutcome, SippProcess};

/// Runs `carillon ctl --node ADDR [--token T] ARGS...` (no token from the environment);
/// returns (success, stdout, stderr).
pub fn ctl(addr: SocketAddr, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let bin = carillon_bin();
    let mut cmd = Command::new(&bin);
    cmd.arg("ctl").arg("--node").arg(addr.to_string());
    if let Some(t) = token {
        cmd.arg("--token").arg(t);
    }
    cmd.args(args).env_remove("CARILLON_TOKEN");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Registrations per second SIPp sends (the node answers each with 401, then 200).
const REGISTER_RATE_PER_S: u32 = 200;

/// Starts an agent phone: a SIPp UAS on its own port that answers every INVITE with PCMU
/// and echoes RTP. Register agents with `contact_port = phone.sip_port`.
pub fn agent_phone(node: &Node, label: &str) -> (SippProcess, u16) {
    let sipp = Sipp::uas("agent_uas.xml", node.dir(), label).rtp_echo(node.sipp_media_port());
    let port = sipp.sip_port;
    (sipp.spawn(), port)
}

/// Agent 1001 on a phone of its own that answers and hangs up after `talk_ms`, registered
/// and ready at `node`.
pub fn ready_agent_1001(node: &Node, talk_ms: &str) -> SippProcess {
    let phone = Sipp::uas("agent_uas.xml", node.dir(), "phone")
        .rtp_echo(node.sipp_media_port())
        .args(["-recv_timeout", talk_ms]);
    let port = phone.sip_port;
    let phone = phone.spawn();
    let csv = agents_csv(node.dir(), "agent-1001.csv", [1001], "pw");
    register(node, &csv, 1, port, 3600, "register-1001").assert_success("1001");
    node.wait_until("1001 ready", Duration::from_secs(5), |n| {
        n.agents_in("ready") == 1
    });
    phone
}

/// A node spec from a whole config `text` (written to a temporary `file` and read back).
pub fn spec_from_text(text: &str, file: &str) -> NodeSpec {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let path = dir.path().join(file);
    fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    // An absolute path replaces the examples directory in the join.
    NodeSpec::from_example(&path.display().to_string())
}

/// Runs register.xml for every agent in `csv` (`count` lines) with Contact at
/// `contact_port`, `Expires: expires_s` (0 unregisters); waits for SIPp to finish.
pub fn register(
    node: &Node,
    csv: &Path,
    count: u32,
    contact_port: u16,
    expires_s: u32,
    label: &str,
) -> SippOutcome {
    Sipp::uac("register.xml", node.sip, node.dir(), label)
        .arg("-inf")
        .arg(csv.display().to_string())
        .key("contact_port", contact_port)
        .key("expires", expires_s)
        .calls(count, REGISTER_RATE_PER_S)
        .run(Duration::from_secs(
            10 + u64::from(count / REGISTER_RATE_PER_S),
        ))
}

/// Writes a SEQUENTIAL SIPp CSV for register.xml: `id;password;` per agent, passwords
/// `prefix<id>` (the config's `password_prefix`). Returns its path.
pub fn agents_csv(
    dir: &Path,
    name: &str,
    ids: impl IntoIterator<Item = u32>,
    prefix: &str,
) -> PathBuf {
    let mut text = String::from("SEQUENTIAL\n");
    let mut count = 0;
    for id in ids {
        text.push_str(&format!("{id};{prefix}{id};\n"));
        count += 1;
    }
    assert!(count > 0, "agents_csv({name}) with no agents");
    let path = dir.join(name);
    fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// Writes tone.pcmu (1 s of 440 Hz, G.711 mu-law, 8 kHz) that caller.xml streams in a loop.
pub fn write_tone(dir: &Path) {
    const SAMPLE_RATE_HZ: f64 = 8000.0;
    const TONE_HZ: f64 = 440.0;
    let bytes: Vec<u8> = (0..8000)
        .map(|i| {
            let t = f64::from(i) / SAMPLE_RATE_HZ;
            // Amplitude 8000 of 32767: loud enough to hear, far from clipping.
            let sample = (8000.0 * (2.0 * std::f64::consts::PI * TONE_HZ * t).sin()) as i16;
            linear_to_ulaw(sample)
        })
        .collect();
    let path = dir.join("tone.pcmu");
    fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// G.711 mu-law encoding of one 16-bit sample (ITU-T G.711, with the usual 0x84 bias).
fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    let s = s.min(CLIP) + BIAS;
    // The segment is the position of the highest set bit above bit 7.
    let exponent = (7..15)
        .rev()
        .find(|b| s & (1 << b) != 0)
        .map_or(0, |b| b - 7);
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    // Values are masked to 8 bits, so the cast keeps them whole.
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// The CDR field `key` as a string ("" when absent or null).
pub fn cdr_str<'a>(cdr: &'a serde_json::Value, key: &str) -> &'a str {
    cdr[key].as_str().unwrap_or("")
}

/// The CDR field `key` as a number (panics with the CDR when absent).
pub fn cdr_u64(cdr: &serde_json::Value, key: &str) -> u64 {
    cdr[key]
        .as_u64()
        .unwrap_or_else(|| panic!("CDR has no numeric `{key}`: {cdr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_matches_reference_points() {
        // Silence encodes to 0xFF; full scale to 0x80 / 0x00 (G.711 table).
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(-i16::MAX), 0x00);
        assert_eq!(linear_to_ulaw(100), 0xF2);
    }
}
