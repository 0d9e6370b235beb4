//! `carillon demo --nodes 3` as a user runs it: a three-node cluster in one process with
//! simulated phones. It exits 0 on its own after `--duration`, every node's callers got
//! answers, some calls crossed nodes (summary lines), the live view marked a leader, and
//! no process it may have started outlives it. Also: `--nodes 2` is refused clearly.
// A real process, waited on in wall-clock time.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::carillon_bin;

/// The demo runs 25 s, plus start-up, registration, drain and settle (~10 s).
const DEMO_LIMIT_S: u64 = 80;

#[test]
fn demo_three_nodes_answers_everywhere_and_crosses_nodes() {
    let mut child = Command::new(carillon_bin())
        // 25 s: the demo's talk times are long, so in 12 s each agent may take only the
        // first call that reaches it, which is a local one; later answers take whichever
        // call waits longest, at any node, and some cross.
        .args(["demo", "--nodes", "3", "--duration", "25"])
        .args(["--agents", "6", "--cps", "2", "--seed", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("carillon demo starts");
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    // Watch for children of the demo while it runs, to check afterwards they are gone.
    let mut descendants = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(DEMO_LIMIT_S);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting on the demo") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("carillon demo --nodes 3 did not end within {DEMO_LIMIT_S} s");
        }
        descendants.extend(children_of(pid));
        std::thread::sleep(Duration::from_millis(500));
    };
    let out = reader.join().expect("stdout reader");
    let err = err_reader.join().expect("stderr reader");
    assert!(status.success(), "exit {status:?}\n{out}\n{err}");

    let summary = &out[out.find("Carillon demo summary").unwrap_or(0)..];
    for node in ["n1", "n2", "n3"] {
        let row: Vec<&str> = summary
            .lines()
            .find(|l| l.split_whitespace().next() == Some(node))
            .unwrap_or_else(|| panic!("no summary row for {node}:\n{summary}"))
            .split_whitespace()
            .collect();
        // name site agents placed CDRs answered abandoned crossed-out
        let answered: u64 = row[5].parse().expect("answered is a number");
        assert!(answered >= 1, "no call answered at {node}:\n{summary}");
    }
    let crossed: u64 = summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("crossed nodes"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no crossed-nodes line:\n{summary}"));
    assert!(crossed >= 1, "no call crossed nodes:\n{summary}");
    assert!(
        out.lines().any(|l| l.starts_with("* n")),
        "the live view never marked a leader:\n{out}"
    );
    for p in descendants {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists(),
            "process {p} started by the demo is still running"
        );
    }
}

#[test]
fn demo_refuses_other_node_counts() {
    let out = Command::new(carillon_bin())
        .args(["demo", "--nodes", "2", "--duration", "1"])
        .output()
        .expect("carillon demo runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--nodes 2") && err.contains("choose 1"),
        "{err}"
    );
}

/// Pids whose parent is `pid`, from /proc (Linux).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // The command name may hold spaces: fields resume after its ')'.
                    let rest = &s[s.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}
