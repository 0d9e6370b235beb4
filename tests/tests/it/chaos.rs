//! `carillon chaos run` end to end, CI-sized: a fresh three-node cluster behind fault
//! proxies for each of leader-kill, loss20 and pause, a few calls at every node, and the
//! JSON report's invariants all holding.
// Real processes, waited on in wall-clock time.
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::process::Command;

/// `$CARILLON_BIN`, else the `carillon` beside this test executable (target/<profile>/).
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
        .unwrap_or_else(|| panic!("carillon binary not found: run `cargo build -p carillon` first"))
}

fn require_sipp() {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("sipp").is_file()));
    assert!(found, "sipp is not installed: run scripts/install-deps.sh");
}

#[test]
fn chaos_ci_scenarios_hold_every_invariant() {
    require_sipp();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let report = dir.path().join("chaos.json");
    let out = Command::new(carillon_bin())
        .args([
            "chaos",
            "run",
            "--scenario",
            "leader-kill,loss20,pause",
            "--calls",
            "15",
            "--fault-ms",
            "5000",
            "--keep-going",
            "--report",
        ])
        .arg(&report)
        .output()
        .unwrap_or_else(|e| panic!("running carillon chaos run: {e}"));
    let printed = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{printed}");
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no JSON report ({e}); output:\n{printed}"));
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("report is not JSON: {e}"));
    let scenarios = json["scenarios"].as_array().cloned().unwrap_or_default();
    assert_eq!(scenarios.len(), 3, "{printed}");
    for s in &scenarios {
        assert!(s["error"].is_null(), "{}: {}", s["name"], s["error"]);
        let invariants = s["invariants"].as_array().cloned().unwrap_or_default();
        assert_eq!(invariants.len(), 7, "{s}");
        for v in &invariants {
            assert_eq!(
                v["passed"], true,
                "{} / {}: {}",
                s["name"], v["name"], v["detail"]
            );
        }
        assert!(s["calls"]["placed"].as_u64().unwrap_or(0) >= 15, "{s}");
    }
    let leader_kill = &scenarios[0];
    assert!(
        leader_kill["failover_ms"].as_u64().is_some(),
        "{leader_kill}"
    );
    assert_eq!(json["passed"], true);
    assert!(out.status.success(), "{printed}");
}
