//! Node processes under the runner's control: start, SIGKILL, SIGSTOP/SIGCONT, a file-size
//! limit that makes the node's writes fail (the disk-full fault), restart. A process is
//! SIGKILLed when its handle drops, so an error or a panic in the runner leaves none behind.
//!
//! Disk-full without root or a small filesystem: the node starts under `sh` with SIGXFSZ
//! ignored (an ignored signal stays ignored across exec), then `prlimit --fsize` lowers its
//! RLIMIT_FSIZE; every write past the limit then fails with EFBIG instead of killing the
//! process, which is what a full disk looks like to the node's storage.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// A running `carillon run --config FILE`.
pub struct NodeProc {
    child: Child,
    pub log: PathBuf,
    paused: bool,
}

impl NodeProc {
    /// Starts `exe run --config config`, output appended to `log`.
    pub fn spawn(exe: &Path, config: &Path, log: &Path) -> anyhow::Result<NodeProc> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone().context("cloning a log file handle")?;
        let child = Command::new("sh")
            .arg("-c")
            .arg("trap '' XFSZ; exec \"$0\" run --config \"$1\"")
            .arg(exe)
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        Ok(NodeProc {
            child,
            log: log.to_path_buf(),
            paused: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// False once the process has exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.paused = false;
    }

    /// SIGSTOP: the process freezes with its sockets open, as a stalled VM would.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.signal("STOP")?;
        self.paused = true;
        Ok(())
    }

    /// SIGCONT after [`NodeProc::pause`].
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.signal("CONT")?;
        self.paused = false;
        Ok(())
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Lowers the process's file-size limit to `bytes`: writes past it fail (EFBIG).
    pub fn limit_file_size(&self, bytes: u64) -> anyhow::Result<()> {
        let status = Command::new("prlimit")
            .arg("--pid")
            .arg(self.pid().to_string())
            .arg(format!("--fsize={bytes}:{bytes}"))
            .status()
            .context("running prlimit (util-linux) for the disk-full fault")?;
        anyhow::ensure!(status.success(), "prlimit --fsize failed: {status}");
        Ok(())
    }

    fn signal(&self, name: &str) -> anyhow::Result<()> {
        // `kill` from procps/util-linux: no unsafe libc call needed for two signals.
        let status = Command::new("kill")
            .arg("-s")
            .arg(name)
            .arg(self.pid().to_string())
            .status()
            .with_context(|| format!("sending SIG{name}"))?;
        anyhow::ensure!(status.success(), "kill -s {name} {} failed", self.pid());
        Ok(())
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(dir: &Path) -> NodeProc {
        // A stand-in for the node: `sleep run --config 30` is not valid, so use a script
        // that ignores its arguments.
        let exe = dir.join("fake-node");
        std::fs::write(&exe, "#!/bin/sh\nexec sleep 30\n").expect("writing a script");
        let status = Command::new("chmod")
            .arg("+x")
            .arg(&exe)
            .status()
            .expect("chmod");
        assert!(status.success());
        NodeProc::spawn(&exe, &dir.join("cfg.toml"), &dir.join("log")).expect("spawn")
    }

    #[test]
    fn pause_resume_limit_and_kill() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut p = sleeper(dir.path());
        assert!(p.is_running());
        p.pause().expect("SIGSTOP");
        // The signal lands asynchronously: poll /proc for the stopped state a little.
        let stopped = (0..100).any(|_| {
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", p.pid())).unwrap_or_default();
            std::thread::sleep(std::time::Duration::from_millis(10));
            stat.contains(") T ")
        });
        assert!(stopped, "not stopped after SIGSTOP");
        p.resume().expect("SIGCONT");
        p.limit_file_size(4096).expect("prlimit");
        let limits =
            std::fs::read_to_string(format!("/proc/{}/limits", p.pid())).unwrap_or_default();
        assert!(
            limits
                .lines()
                .any(|l| l.starts_with("Max file size") && l.contains("4096")),
            "{limits}"
        );
        p.kill();
        assert!(!p.is_running());
    }

    #[test]
    fn dropped_handle_kills_the_process() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = sleeper(dir.path());
        let pid = p.pid();
        drop(p);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
