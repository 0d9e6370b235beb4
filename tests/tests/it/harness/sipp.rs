//! SIPp processes for one test: a builder for the command line (scenario from tests/sipp/,
//! loopback addresses, its own signalling and media ports, logs in the test's directory),
//! a blocking run bounded by a deadline, and a background instance killed on drop.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::ports::free_port;

/// Lines of SIPp output and error log shown in assertion messages.
const OUTPUT_TAIL_LINES: usize = 30;
/// The most calls one SIPp instance opens at once (see [`Sipp::calls`]).
const CALLS_AT_ONCE_MAX: u32 = 30;

/// tests/sipp/`name`.
pub fn scenario_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sipp")
        .join(name)
}

/// Panics with the fix when SIPp is not installed.
pub fn require_sipp() {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join("sipp").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "sipp is not installed: run scripts/install-deps.sh (Debian package sip-tester)"
    );
}

/// A SIPp command line being built.
pub struct Sipp {
    label: String,
    dir: PathBuf,
    args: Vec<String>,
    pub sip_port: u16,
}

impl Sipp {
    /// A UAC running tests/sipp/`scenario` against `target`. `label` names its log files
    /// in `dir` (also its working directory, where tone.pcmu lives).
    pub fn uac(scenario: &str, target: SocketAddr, dir: &Path, label: &str) -> Sipp {
        let mut s = Sipp::new(scenario, dir, label);
        s.args.insert(0, target.to_string());
        s
    }

    /// A UAS running tests/sipp/`scenario`; it answers on `self.sip_port`.
    pub fn uas(scenario: &str, dir: &Path, label: &str) -> Sipp {
        Sipp::new(scenario, dir, label).arg("-aa")
    }

    fn new(scenario: &str, dir: &Path, label: &str) -> Sipp {
        require_sipp();
        let sip_port = free_port();
        let errors = dir.join(format!("{label}.errors.log"));
        let args = [
            "-sf",
            &scenario_path(scenario).display().to_string(),
            "-i",
            "127.0.0.1",
            "-p",
            &sip_port.to_string(),
            "-mi",
            "127.0.0.1",
            "-nostdin",
            "-trace_err",
            "-error_file",
            &errors.display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        Sipp {
            label: label.to_string(),
            dir: dir.to_path_buf(),
            args,
            sip_port,
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Sipp {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Sipp {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// `-key name value`: a [name] keyword in the scenario.
    pub fn key(self, name: &str, value: impl ToString) -> Sipp {
        self.args(["-key".to_string(), name.to_string(), value.to_string()])
    }

    /// SIPp's own media port, and RTP echo on it (agent phones).
    pub fn rtp_echo(self, media_port: u16) -> Sipp {
        self.args([
            "-mp".to_string(),
            media_port.to_string(),
            "-rtp_echo".into(),
        ])
    }

    /// SIPp's own media port (callers stream from it).
    pub fn media_port(self, media_port: u16) -> Sipp {
        self.args(["-mp".to_string(), media_port.to_string()])
    }

    /// `-m calls -r rate_cps`, and `-l` so that SIPp never has more than
    /// [`CALLS_AT_ONCE_MAX`] calls open at once: when a loaded machine slows the node, SIPp
    /// waits instead of opening calls the test's RTP block (76 port pairs, one per caller
    /// and one per agent leg) cannot hold.
    pub fn calls(self, calls: u32, rate_cps: u32) -> Sipp {
        self.args([
            "-m".to_string(),
            calls.to_string(),
            "-r".into(),
            rate_cps.to_string(),
            "-l".into(),
            calls.min(CALLS_AT_ONCE_MAX).to_string(),
        ])
    }

    /// Logs every SIP message to `<label>.messages.log`.
    #[allow(dead_code)] // for debugging a scenario: add `.trace_messages()` to a test
    pub fn trace_messages(self) -> Sipp {
        let file = self.dir.join(format!("{}.messages.log", self.label));
        self.args([
            "-trace_msg".to_string(),
            "-message_file".into(),
            file.display().to_string(),
        ])
    }

    /// Starts SIPp in the background; killed on drop.
    pub fn spawn(self) -> SippProcess {
        let errors_path = self.dir.join(format!("{}.errors.log", self.label));
        let out_path = self.dir.join(format!("{}.out", self.label));
        let out = File::create(&out_path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", out_path.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("cloning a file handle: {e}"));
        let child = Command::new("sipp")
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning sipp {:?}: {e}", self.args));
        SippProcess {
            child: Some(child),
            label: self.label,
            out_path,
            errors_path,
            args: self.args,
        }
    }

    /// Runs to completion; SIPp is told to give up after `timeout` and is killed a little
    /// later if it has not.
    pub fn run(self, timeout: Duration) -> SippOutcome {
        let secs = timeout.as_secs().max(1);
        self.args([
            "-timeout".to_string(),
            format!("{secs}s"),
            "-timeout_error".into(),
        ])
        .spawn()
        .wait(timeout + Duration::from_secs(5))
    }
}

/// A SIPp instance in the background. Killed on drop.
pub struct SippProcess {
    child: Option<Child>,
    label: String,
    out_path: PathBuf,
    errors_path: PathBuf,
    args: Vec<String>,
}

impl SippProcess {
    /// Waits for SIPp to exit, at most `timeout` (then it is killed and the outcome says so).
    pub fn wait(mut self, timeout: Duration) -> SippOutcome {
        let deadline = Instant::now() + timeout;
        let mut status = None;
        let mut killed = false;
        if let Some(child) = self.child.as_mut() {
            loop {
                if let Ok(Some(s)) = child.try_wait() {
                    status = Some(s);
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    status = child.wait().ok();
                    killed = true;
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        self.child = None;
        self.outcome(status, killed)
    }

    fn outcome(&self, status: Option<ExitStatus>, killed: bool) -> SippOutcome {
        let errors = fs::read_to_string(&self.errors_path).unwrap_or_default();
        SippOutcome {
            label: self.label.clone(),
            args: self.args.join(" "),
            code: if killed {
                None
            } else {
                status.and_then(|s| s.code())
            },
            output: fs::read_to_string(&self.out_path).unwrap_or_default(),
            errors,
        }
    }
}

impl Drop for SippProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How a SIPp run ended.
pub struct SippOutcome {
    pub label: String,
    pub args: String,
    /// SIPp's exit code (0: every call succeeded; 1: some failed); None if killed.
    pub code: Option<i32>,
    pub output: String,
    pub errors: String,
}

impl SippOutcome {
    /// Panics, with SIPp's statistics and error log, unless every call succeeded.
    pub fn assert_success(&self, context: &str) {
        assert_eq!(self.code, Some(0), "{context}: {}", self.describe());
    }

    /// A counter from SIPp's final statistics screen, e.g. "Successful call", "Failed call".
    pub fn cumulative(&self, counter: &str) -> Option<u64> {
        let line = self
            .output
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with(counter))?;
        // "  Successful call   |   0   |   200   ": the last column is cumulative.
        line.split('|').nth(2)?.trim().parse().ok()
    }

    pub fn describe(&self) -> String {
        format!(
            "sipp `{}` ({}) exit {:?}\n--- output (tail) ---\n{}\n--- errors (tail) ---\n{}",
            self.label,
            self.args,
            self.code,
            tail(&self.output),
            tail(&self.errors)
        )
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(OUTPUT_TAIL_LINES)..].join("\n")
}
