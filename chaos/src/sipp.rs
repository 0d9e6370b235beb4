//! SIPp as the load: callers (one call per caller number, so every call can be matched to
//! its record), agent phones (a UAS answering every INVITE and echoing RTP) and agent
//! registrations. Scenarios are the project's own tests/sipp files, built into the binary
//! and written into the run's directory. Every instance is bounded by `-m` and `-timeout`
//! and killed on drop.
// SIPp runs in wall-clock time; waits on it are bounded by deadlines.
#![allow(clippy::disallowed_methods)]

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::ports::free_port;

const CALLER_XML: &str = include_str!("../../tests/sipp/caller.xml");
const AGENT_UAS_XML: &str = include_str!("../../tests/sipp/agent_uas.xml");
const REGISTER_XML: &str = include_str!("../../tests/sipp/register.xml");
/// Registrations per second.
const REGISTER_RATE_PER_S: u32 = 100;

/// Writes the scenarios and the caller's audio into `dir`.
pub fn install(dir: &Path) -> anyhow::Result<()> {
    // Each call's From user is the caller key followed by SIPp's call number, unique per
    // call, so the node's record of it names it.
    let caller = CALLER_XML.replace("[caller]", "[caller][call_number]");
    fs::write(dir.join("caller.xml"), caller)?;
    fs::write(dir.join("agent_uas.xml"), AGENT_UAS_XML)?;
    fs::write(dir.join("register.xml"), REGISTER_XML)?;
    // One second of mu-law silence: the relay counts packets, not what they carry.
    fs::write(dir.join("tone.pcmu"), vec![0xFFu8; 8000])?;
    Ok(())
}

/// One caller instance's load: `calls` calls to `target`, `rate_cps` per second, each
/// held `hold_ms` after the answer, SIPp giving up after `timeout_s`.
#[derive(Clone, Debug)]
pub struct CallerSpec {
    pub target: SocketAddr,
    pub media_port: u16,
    pub caller_prefix: String,
    pub calls: u32,
    pub rate_cps: u32,
    pub hold_ms: u64,
    pub timeout_s: u64,
}

/// A SIPp command line.
pub struct Sipp {
    dir: PathBuf,
    label: String,
    args: Vec<String>,
}

impl Sipp {
    fn new(dir: &Path, scenario: &str, label: &str) -> anyhow::Result<Sipp> {
        let port = free_port()?;
        let args = vec![
            "-sf".into(),
            dir.join(scenario).display().to_string(),
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-mi".into(),
            "127.0.0.1".into(),
            "-nostdin".into(),
            "-trace_err".into(),
            "-error_file".into(),
            dir.join(format!("{label}.errors.log"))
                .display()
                .to_string(),
        ];
        Ok(Sipp {
            dir: dir.to_path_buf(),
            label: label.to_string(),
            args,
        })
    }

    fn arg(mut self, a: impl ToString) -> Sipp {
        self.args.push(a.to_string());
        self
    }

    /// Callers as `spec` says; From user `spec.caller_prefix` + SIPp's call number.
    pub fn callers(dir: &Path, label: &str, spec: &CallerSpec) -> anyhow::Result<SippProc> {
        let mut s = Sipp::new(dir, "caller.xml", label)?;
        s.args.insert(0, spec.target.to_string());
        s.arg("-s")
            .arg("100")
            .arg("-mp")
            .arg(spec.media_port)
            .arg("-d")
            .arg(spec.hold_ms)
            .arg("-key")
            .arg("caller")
            .arg(&spec.caller_prefix)
            .arg("-m")
            .arg(spec.calls)
            .arg("-r")
            .arg(spec.rate_cps.max(1))
            .arg("-l")
            .arg(spec.calls)
            .arg("-timeout")
            .arg(format!("{}s", spec.timeout_s))
            .arg("-timeout_error")
            .spawn()
    }

    /// An agent phone: answers every INVITE with PCMU and echoes RTP. Returns it and the
    /// port to register as the agents' Contact.
    pub fn phone(dir: &Path, label: &str, media_port: u16) -> anyhow::Result<(SippProc, u16)> {
        let s = Sipp::new(dir, "agent_uas.xml", label)?;
        let port: u16 = s.args[5].parse().context("SIPp port")?;
        let p = s
            .arg("-aa")
            .arg("-mp")
            .arg(media_port)
            .arg("-rtp_echo")
            .spawn()?;
        Ok((p, port))
    }

    /// Registers `agents` (password `pw<id>`) at `node` with Contact port `contact_port`;
    /// waits for SIPp to finish.
    pub fn register(
        dir: &Path,
        label: &str,
        node: SocketAddr,
        agents: &[u32],
        contact_port: u16,
    ) -> anyhow::Result<SippOutcome> {
        let csv = dir.join(format!("{label}.csv"));
        let mut text = String::from("SEQUENTIAL\n");
        for a in agents {
            text.push_str(&format!("{a};pw{a};\n"));
        }
        fs::write(&csv, text)?;
        let mut s = Sipp::new(dir, "register.xml", label)?;
        s.args.insert(0, node.to_string());
        let timeout_s = 10 + agents.len() as u64 / u64::from(REGISTER_RATE_PER_S);
        let p = s
            .arg("-inf")
            .arg(csv.display())
            .arg("-key")
            .arg("contact_port")
            .arg(contact_port)
            .arg("-key")
            .arg("expires")
            .arg(3600)
            .arg("-m")
            .arg(agents.len())
            .arg("-r")
            .arg(REGISTER_RATE_PER_S)
            .arg("-timeout")
            .arg(format!("{timeout_s}s"))
            .arg("-timeout_error")
            .spawn()?;
        Ok(p.wait(Duration::from_secs(timeout_s + 5)))
    }

    fn spawn(self) -> anyhow::Result<SippProc> {
        let out_path = self.dir.join(format!("{}.out", self.label));
        let out = File::create(&out_path)?;
        let err = out.try_clone()?;
        let child = Command::new("sipp")
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting sipp (Debian package sip-tester; scripts/install-deps.sh)")?;
        Ok(SippProc {
            child: Some(child),
            label: self.label,
            out_path,
        })
    }
}

/// A SIPp instance; killed on drop.
pub struct SippProc {
    child: Option<Child>,
    label: String,
    out_path: PathBuf,
}

impl SippProc {
    /// Waits for SIPp to exit, at most `timeout` (then kills it).
    pub fn wait(mut self, timeout: Duration) -> SippOutcome {
        let deadline = Instant::now() + timeout;
        let mut code = None;
        if let Some(child) = self.child.as_mut() {
            loop {
                if let Ok(Some(s)) = child.try_wait() {
                    code = s.code();
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        self.child = None;
        SippOutcome {
            label: self.label.clone(),
            code,
            output: fs::read_to_string(&self.out_path).unwrap_or_default(),
        }
    }
}

impl Drop for SippProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How a SIPp run ended.
#[derive(Clone, Debug)]
pub struct SippOutcome {
    pub label: String,
    /// 0: every call succeeded; 1: some failed; None: killed at the deadline.
    pub code: Option<i32>,
    pub output: String,
}

impl SippOutcome {
    /// A cumulative counter from SIPp's final statistics ("Successful call"...).
    pub fn cumulative(&self, counter: &str) -> Option<u64> {
        let line = self
            .output
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with(counter))?;
        line.split('|').nth(2)?.trim().parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_scenario_numbers_each_call() {
        let dir = tempfile::tempdir().expect("temp dir");
        install(dir.path()).expect("install");
        let xml = fs::read_to_string(dir.path().join("caller.xml")).expect("read");
        assert!(xml.contains("From: <sip:[caller][call_number]@"));
        assert!(!xml.contains("[caller]@"));
    }

    #[test]
    fn reads_sipp_counters() {
        let o = SippOutcome {
            label: "x".into(),
            code: Some(0),
            output: "  Successful call   |   0   |   20   \n  Failed call  |  0  |  3 \n".into(),
        };
        assert_eq!(o.cumulative("Successful call"), Some(20));
        assert_eq!(o.cumulative("Failed call"), Some(3));
        assert_eq!(o.cumulative("Nope"), None);
    }
}
