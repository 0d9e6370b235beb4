//! Membership through `carillon ctl` end to end: a fourth node is started with no log,
//! added with `ctl cluster add-node` (learner, catch-up, voter), shows up in
//! `ctl cluster status --json` with its applied index level with the leader, takes an
//! agent registration whose call arrives at another node, and is then removed with
//! `ctl cluster remove-node`.
// Real processes, waited on in wall-clock time.
#![allow(clippy::disallowed_methods)]

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{agent_phone, agents_csv, cdr_str, ctl, register, Sipp, TestCluster};

/// The admin token of examples/cluster/n1.toml, which every member's config starts from.
const ADMIN: &str = "change-me-admin-token";
/// The planned fourth member's index.
const NEW: usize = 3;
/// Entries a member may trail the asked node by and count as caught up (liveness leases
/// commit one entry per node per second).
const CAUGHT_UP_LAG_MAX: u64 = 8;

#[test]
fn ctl_adds_a_node_that_serves_then_removes_it() {
    let mut cluster =
        TestCluster::start_with_spares(&["hq", "hq", "branch"], &["branch"], |_, _| {});
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let leader_grpc = cluster.plans[leader].grpc;
    cluster.start_spare(NEW);
    let n4 = cluster.plans[NEW].clone();

    // Asking a follower is refused with a pointer to the leader, not half-done.
    let follower = (0..3).find(|i| *i != leader).unwrap_or(0);
    let (ok, out, err) = ctl(
        cluster.plans[follower].grpc,
        Some(ADMIN),
        &["cluster", "add-node", "n4", &n4.raft.to_string()],
    );
    assert!(!ok, "add-node at a follower must fail: {out}");
    assert!(
        err.contains("leader"),
        "the refusal names the leader: {err}"
    );

    let (ok, out, err) = ctl(
        leader_grpc,
        Some(ADMIN),
        &[
            "cluster",
            "add-node",
            "n4",
            &n4.raft.to_string(),
            "--site",
            "branch",
            "--sip",
            &n4.sip.to_string(),
            "--http",
            &n4.http.to_string(),
        ],
    );
    assert!(ok, "add-node failed: {err}{out}");

    // Status (asked of the new member itself): four voters, n4 caught up.
    let status = wait_status(n4.grpc, Duration::from_secs(15), |s| {
        member(s, "n4").is_some_and(|m| {
            m["role"] == "voter"
                && m["lag"]
                    .as_u64()
                    .is_some_and(|lag| lag <= CAUGHT_UP_LAG_MAX)
        })
    });
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(4),
        "{status}"
    );
    let joined = member(&status, "n4").cloned().unwrap_or_default();
    assert_eq!(joined["addr"], n4.raft.to_string(), "{status}");
    assert_eq!(joined["site"], "branch", "{status}");
    assert_eq!(
        status["leader"],
        format!("n{}", leader + 1),
        "n4 follows the same leader: {status}"
    );
    let n4_node = cluster.node(NEW);

    // n4 serves: an agent registered there answers a call that arrives at n1.
    let (phone, port) = agent_phone(n4_node, "phone-n4");
    let csv = agents_csv(n4_node.dir(), "agents.csv", 1001..1002, "pw");
    register(n4_node, &csv, 1, port, 3600, "register").assert_success("registering 1001 at n4");
    let entry = cluster.node(0);
    entry.wait_until("1001 ready at n1", Duration::from_secs(10), |n| {
        n.agents_in("ready") == 1
    });
    let outcome = Sipp::uac("caller.xml", entry.sip, entry.dir(), "caller")
        .media_port(entry.sipp_media_port())
        .args(["-s", "100", "-d", "500"])
        .key("caller", "5554000")
        .calls(1, 1)
        .args(["-timeout", "30s", "-timeout_error"])
        .spawn()
        .wait(Duration::from_secs(40));
    outcome.assert_success("a call at n1 for the agent at n4");
    let cdrs = entry.wait_cdrs(1, Duration::from_secs(10));
    assert_eq!(cdr_str(&cdrs[0], "disposition"), "answered", "{}", cdrs[0]);
    assert_eq!(cdr_str(&cdrs[0], "agent"), "1001", "{}", cdrs[0]);
    drop(phone);

    // Removal: the cluster goes back to three members.
    let (ok, out, err) = ctl(leader_grpc, Some(ADMIN), &["cluster", "remove-node", "n4"]);
    assert!(ok, "remove-node failed: {err}{out}");
    let status = wait_status(leader_grpc, Duration::from_secs(10), |s| {
        s["members"].as_array().map(Vec::len) == Some(3)
    });
    assert!(member(&status, "n4").is_none(), "{status}");
    // Unknown ids are refused with their name.
    let (ok, _, err) = ctl(leader_grpc, Some(ADMIN), &["cluster", "remove-node", "n9"]);
    assert!(!ok && err.contains("n9"), "{err}");
}

/// `ctl cluster status --json` from `grpc`, until `done` holds.
fn wait_status(
    grpc: std::net::SocketAddr,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (ok, out, err) = ctl(grpc, Some(ADMIN), &["cluster", "status", "--json"]);
        let status: Value = if ok {
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("status is not JSON ({e}): {out}"))
        } else {
            Value::Null
        };
        if ok && done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "cluster status never reached the expected state: {status} {err}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn member<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    status["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["id"] == id))
}
