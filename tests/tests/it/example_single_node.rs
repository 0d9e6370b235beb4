//! examples/single-node.toml exactly as written (fixed ports 5060/8080, RTP 20000-29999,
//! data in var/single-node): its first agent registers and takes one call to its first
//! number. Runs in the nextest group `fixed-ports` (.config/nextest.toml).

use std::fs;
use std::time::Duration;

use crate::harness::{agent_phone, cdr_str, register, Node, Sipp};

#[test]
fn example_single_node() {
    let path = crate::harness::workspace_dir().join("examples/single-node.toml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let config: toml::Table =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (agent, password) = first_agent(&config);
    let number = config["numbers"][0]["number"]
        .as_str()
        .unwrap_or_else(|| panic!("examples/single-node.toml has no [[numbers]]"))
        .to_string();

    let node = Node::start_exact("single-node.toml");
    // The data dir outlives runs: count this run's CDRs from what is there now.
    let before = node.cdrs().len();
    let (_phone, phone_port) = agent_phone(&node, "phone");
    let csv = node.dir().join("agent.csv");
    fs::write(&csv, format!("SEQUENTIAL\n{agent};{password};\n"))
        .unwrap_or_else(|e| panic!("{}: {e}", csv.display()));
    register(&node, &csv, 1, phone_port, 3600, "register").assert_success("example agent");

    Sipp::uac("caller.xml", node.sip, node.dir(), "caller")
        .media_port(node.sipp_media_port())
        .args(["-s", number.as_str(), "-d", "1000"])
        .key("caller", "5551009")
        .calls(1, 1)
        .run(Duration::from_secs(20))
        .assert_success("one call to the example's number");
    let cdrs = node.wait_cdrs(before + 1, Duration::from_secs(5));
    let cdr = &cdrs[before];
    assert_eq!(cdr_str(cdr, "disposition"), "answered", "CDR: {cdr}");
    assert_eq!(cdr_str(cdr, "agent"), agent, "CDR: {cdr}");
}

/// The first agent of the first [[agents]] entry and its password.
fn first_agent(config: &toml::Table) -> (String, String) {
    let entry = &config["agents"][0];
    let (id, password) = match (entry.get("ids"), entry.get("id")) {
        (Some(ids), _) => {
            let first = ids.as_str().and_then(|r| r.split('-').next()).unwrap_or("");
            let prefix = entry
                .get("password_prefix")
                .and_then(|p| p.as_str())
                .unwrap_or("");
            (first.to_string(), format!("{prefix}{first}"))
        }
        (None, Some(id)) => (
            id.as_str().unwrap_or("").to_string(),
            entry
                .get("password")
                .and_then(|p| p.as_str())
                .unwrap_or("")
                .to_string(),
        ),
        _ => panic!("the first [[agents]] entry has neither ids nor id"),
    };
    assert!(!id.is_empty(), "the first [[agents]] entry has an empty id");
    (id, password)
}
