//! `carillon demo --nodes 3`: the demo's center as a three-node Raft cluster in this
//! process, shaped like `examples/cluster/`.
//!
//! n1 (127.0.0.1) and n2 (127.0.0.2) sit at site `hq`, n3 (127.0.0.3) at site `branch`;
//! each asks the OS for free ports on its own address for SIP, HTTP and Raft/QUIC. A
//! cluster CA and one certificate per node are made into the demo's temporary
//! directory, as `carillon certs` would. The demo's driver (`demo`) registers the agent
//! phones at the nodes in turn and gives every node a trunk of its own; this module draws
//! the per-node live view and tells, from the CDRs, which answered calls crossed nodes
//! (the owning node is not the one where the agent's phone registered).
//!
//! What it leaves to others: the call load and the summary (`demo`), the cluster itself
//! (`cluster`, `carillon-consensus`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use carillon_ops::records::Cdr;
use serde_json::Value;

use crate::config::Config;
use crate::demo::{config_text, hold_music, toml_string, DemoArgs, NodePlace, NodeReport};
use crate::node::{Node, NodeHandle};
use crate::sim::caller::CallerStats;
use crate::sim::{AgentPhone, Caller};

/// Members of the demo cluster.
pub const CLUSTER_NODES: usize = 3;
/// Each member's site, as in `examples/cluster/`.
const SITES: [&str; CLUSTER_NODES] = ["hq", "hq", "branch"];
/// How long the cluster gets to elect a leader and commit the queue configuration.
const START_WAIT_MS: u64 = 20_000;
/// Pause between looks at a starting cluster.
const START_POLL_MS: u64 = 100;
/// Tries at finding a port free for both TCP and UDP on one address.
const PORT_TRIES_MAX: usize = 50;

/// Makes the certificates and starts the three members in this process, then waits
/// (bounded) until each has a leader and the demo queue is committed. On failure every
/// member already started is shut down.
pub async fn start_nodes(args: &DemoArgs, dir: &Path) -> anyhow::Result<Vec<NodeHandle>> {
    let names: Vec<String> = (1..=CLUSTER_NODES).map(|i| format!("n{i}")).collect();
    carillon_consensus::certs::generate(&dir.join("certs"), &names, true)
        .context("making the demo cluster's CA and node certificates")?;
    let hold = hold_music(dir)?;
    let mut places = Vec::with_capacity(CLUSTER_NODES);
    let mut rafts = Vec::with_capacity(CLUSTER_NODES);
    for (i, name) in names.iter().enumerate() {
        // 127.0.0.1, .2, .3: n is at most CLUSTER_NODES, far below 255.
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8 + 1));
        let [sip, http, raft] = distinct_free_ports(ip)?;
        places.push(NodePlace {
            id: name.clone(),
            site: SITES[i].to_string(),
            sip: SocketAddr::new(ip, sip),
            http: SocketAddr::new(ip, http),
            rtp_ip: ip,
            data_dir: name.clone(),
        });
        rafts.push(SocketAddr::new(ip, raft));
    }
    let members: String = places
        .iter()
        .zip(&rafts)
        .map(|(p, raft)| {
            format!(
                "\n[[cluster.members]]\nid = {}\nraft = \"{raft}\"\nsip = \"{}\"\nhttp = \"{}\"\nsite = {}\n",
                toml_string(&p.id),
                p.sip,
                p.http,
                toml_string(&p.site)
            )
        })
        .collect();

    let mut configs = Vec::with_capacity(CLUSTER_NODES);
    for (place, raft) in places.iter().zip(&rafts) {
        let text = format!(
            "{}\n[cluster]\nlisten = \"{raft}\"\nca = \"certs/ca.pem\"\ncert = \"certs/{id}.pem\"\n\
             key = \"certs/{id}.key\"\nbootstrap = true\n{members}",
            config_text(args, &hold, place),
            id = place.id,
        );
        configs.push(Config::from_toml(
            &text,
            &format!("demo member {} (built in)", place.id),
            dir.to_path_buf(),
        )?);
    }
    // All at once, as three machines would boot: no member spends an election timeout
    // asking for votes from peers that are not up yet.
    let mut starting = tokio::task::JoinSet::new();
    for (i, config) in configs.into_iter().enumerate() {
        starting.spawn(async move { (i, Node::start(config).await) });
    }
    let mut slots: Vec<Option<NodeHandle>> = (0..CLUSTER_NODES).map(|_| None).collect();
    let mut failure = None;
    while let Some(joined) = starting.join_next().await {
        match joined {
            Ok((i, Ok(node))) => slots[i] = Some(node),
            Ok((i, Err(e))) => {
                failure.get_or_insert(
                    e.context(format!("demo cluster member n{} did not start", i + 1)),
                );
            }
            Err(e) => {
                failure.get_or_insert(anyhow::anyhow!(
                    "a demo cluster member's start-up task failed: {e}"
                ));
            }
        }
    }
    let nodes: Vec<NodeHandle> = slots.into_iter().flatten().collect();
    if let Some(e) = failure {
        shutdown_all(nodes).await;
        return Err(e);
    }
    if let Err(e) = wait_ready(&nodes).await {
        shutdown_all(nodes).await;
        return Err(e);
    }
    Ok(nodes)
}

async fn shutdown_all(nodes: Vec<NodeHandle>) {
    for node in nodes {
        node.shutdown().await;
    }
}

/// Waits until every member knows a leader and shows the demo queue (the leader's
/// upkeep committed the configuration and the member applied it).
async fn wait_ready(nodes: &[NodeHandle]) -> anyhow::Result<()> {
    let deadline = crate::clock::instant() + Duration::from_millis(START_WAIT_MS);
    // Bounded by START_WAIT_MS.
    loop {
        let leaders = nodes.iter().filter(|n| leader_of(n).is_some()).count();
        let configured = nodes
            .iter()
            .filter(|n| n.status()["acd"]["queues"][crate::demo::DEMO_QUEUE].is_object())
            .count();
        if leaders == nodes.len() && configured == nodes.len() {
            return Ok(());
        }
        if crate::clock::instant() >= deadline {
            anyhow::bail!(
                "the demo cluster was not ready within {} s: {leaders} of {} members know a \
                 leader, {configured} have the queue configuration; run with \
                 CARILLON_LOG=info,openraft=warn to see why",
                START_WAIT_MS / 1000,
                nodes.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(START_POLL_MS)).await;
    }
}

/// Three distinct ports on `ip`, each free for TCP and UDP a moment ago (SIP takes
/// both; HTTP TCP; Raft's QUIC UDP).
fn distinct_free_ports(ip: IpAddr) -> anyhow::Result<[u16; 3]> {
    let mut ports = [0u16; 3];
    let mut found = 0;
    for _ in 0..PORT_TRIES_MAX {
        let port = TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .with_context(|| {
                format!(
                    "cannot bind {ip}: the cluster demo needs the loopback addresses \
                     127.0.0.1-127.0.0.3 (Linux has all of 127.0.0.0/8; elsewhere add \
                     them as loopback aliases)"
                )
            })?
            .port();
        if UdpSocket::bind((ip, port)).is_ok() && !ports[..found].contains(&port) {
            ports[found] = port;
            found += 1;
            if found == ports.len() {
                return Ok(ports);
            }
        }
    }
    anyhow::bail!("no three ports free for TCP and UDP on {ip} after {PORT_TRIES_MAX} tries")
}

/// The member this node believes leads, if any.
fn leader_of(node: &NodeHandle) -> Option<u64> {
    node.shared().routing.cluster().and_then(|c| c.leader())
}

/// Answered calls whose agent's phone registered at another node than the call's owner.
/// `homes` maps agent id to node name.
pub fn crossed(cdrs: &[Cdr], homes: &HashMap<String, String>) -> usize {
    cdrs.iter().filter(|c| crossed_one(c, homes)).count()
}

fn crossed_one(cdr: &Cdr, homes: &HashMap<String, String>) -> bool {
    cdr.disposition == "answered"
        && cdr
            .agent
            .as_ref()
            .and_then(|a| homes.get(a))
            .is_some_and(|home| *home != cdr.node)
}

/// One member's share of the run, from its CDRs and its trunk.
pub fn node_report(
    node: &NodeHandle,
    cdrs: &[Cdr],
    placed: &CallerStats,
    phones: &[AgentPhone],
    homes: &HashMap<String, String>,
) -> NodeReport {
    let name = node.shared().node_id.clone();
    let count = |d: &str| cdrs.iter().filter(|c| c.disposition == d).count();
    NodeReport {
        agents_registered: phones
            .iter()
            .filter(|p| p.stats().registered && homes.get(p.agent_id()) == Some(&name))
            .count(),
        site: node.shared().config.node.site.clone(),
        calls_placed: placed.calls_placed,
        cdrs: cdrs.len(),
        answered: count("answered"),
        abandoned: count("abandoned"),
        crossed_out: crossed(cdrs, homes),
        name,
    }
}

/// The cluster's live view: one row per member (leader marked), totals, then the
/// replicated ACD's queue and agents as the leader sees them.
pub fn live_view(
    nodes: &[NodeHandle],
    callers: &[Arc<Caller>],
    phones: &[AgentPhone],
    homes: &HashMap<String, String>,
    elapsed: Duration,
    args: &DemoArgs,
) -> String {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        s,
        "Carillon demo: {}-node cluster  t={:>4}s  agents={}  rate={} calls/s  seed={}   (Ctrl-C ends)",
        nodes.len(),
        elapsed.as_secs(),
        args.agents,
        args.cps,
        args.seed
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "  node  site    sip                  term applied   calls  answered abandoned lost  crossed  agents talking  placed"
    );
    let mut totals = [0u64; 8];
    let mut leader_status = None;
    for (i, node) in nodes.iter().enumerate() {
        let status = node.status();
        let name = node.shared().node_id.clone();
        let cluster = node.shared().routing.cluster();
        let figures = cluster.map(|c| c.raft_figures());
        let is_leader = cluster.is_some_and(|c| c.is_leader());
        if is_leader {
            leader_status = Some(status.clone());
        }
        let calls = &status["calls"];
        let crossed_out = crossed(&node.cdrs(), homes) as u64;
        let home_phones = || {
            phones
                .iter()
                .filter(|p| homes.get(p.agent_id()) == Some(&name))
        };
        let registered = home_phones().filter(|p| p.stats().registered).count() as u64;
        let talking = home_phones().filter(|p| p.stats().calls_active > 0).count() as u64;
        let placed = callers.get(i).map_or(0, |c| c.stats().calls_placed);
        let row = [
            n(&calls["active"]),
            n(&calls["answered"]),
            n(&calls["abandoned"]),
            n(&calls["lost"]),
            crossed_out,
            registered,
            talking,
            placed,
        ];
        for (t, v) in totals.iter_mut().zip(row) {
            *t += v;
        }
        let _ = writeln!(
            s,
            "{} {:<5} {:<7} {:<20} {:>4} {:>7}   {:>5} {:>9} {:>9} {:>4} {:>8} {:>7} {:>7} {:>7}",
            if is_leader { '*' } else { ' ' },
            name,
            status["site"].as_str().unwrap_or("?"),
            status["sip"].as_str().unwrap_or("?"),
            figures.as_ref().map_or(0, |f| f.term),
            figures.as_ref().and_then(|f| f.last_applied).unwrap_or(0),
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            row[6],
            row[7],
        );
    }
    let _ = writeln!(
        s,
        "  all                                                  {:>5} {:>9} {:>9} {:>4} {:>8} {:>7} {:>7} {:>7}",
        totals[0], totals[1], totals[2], totals[3], totals[4], totals[5], totals[6], totals[7]
    );
    let _ = writeln!(s);

    // The routing state is replicated: the leader's copy is the freshest.
    let acd_status =
        leader_status.unwrap_or_else(|| nodes.first().map(|n| n.status()).unwrap_or_default());
    let acd = &acd_status["acd"];
    let (mut waiting, mut offering, mut connected, mut longest) = (0, 0, 0, 0);
    if let Some(queues) = acd["queues"].as_object() {
        for q in queues.values() {
            waiting += n(&q["waiting"]);
            offering += n(&q["offering"]);
            connected += n(&q["connected"]);
            longest = longest.max(n(&q["longest_wait_ms"]));
        }
    }
    let leader = nodes
        .first()
        .and_then(leader_of)
        .map_or("none (electing)".to_string(), |id| format!("n{id}"));
    let _ = writeln!(
        s,
        "cluster  leader {leader}   waiting {waiting:>4}   ringing an agent {offering:>4}   \
         talking {connected:>4}   longest wait {:.1} s",
        longest as f64 / 1000.0
    );
    let _ = write!(s, "agents  ");
    if let Some(states) = acd["agents"].as_object() {
        for (state, count) in states {
            let _ = write!(s, "  {state} {}", n(count));
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "(* leader; calls: owned by the node, where its trunk sent them; crossed: answered \
         by an agent registered at another node)"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdr(node: &str, agent: Option<&str>, disposition: &str) -> Cdr {
        Cdr {
            call_id: "c".into(),
            sip_call_id: "s".into(),
            caller: "555".into(),
            dialled: "100".into(),
            queue: "support".into(),
            agent: agent.map(String::from),
            arrived_at_ms: 0,
            offered_at_ms: None,
            answered_at_ms: None,
            ended_at_ms: 0,
            wait_ms: 0,
            disposition: disposition.into(),
            hangup_by: "caller".into(),
            cause: None,
            offers: 0,
            post_dial_us: None,
            rtp_caller_to_agent: 0,
            rtp_agent_to_caller: 0,
            node: node.into(),
            hold_ms: 0,
            ended_by: None,
            direction: "inbound".into(),
            transfer: None,
        }
    }

    #[test]
    fn crossing_is_an_answered_call_taken_at_another_node() {
        let homes: HashMap<String, String> = [("1001", "n1"), ("1002", "n3")]
            .map(|(a, n)| (a.to_string(), n.to_string()))
            .into_iter()
            .collect();
        let cdrs = [
            cdr("n1", Some("1001"), "answered"),
            cdr("n1", Some("1002"), "answered"),
            cdr("n2", Some("1001"), "answered"),
            cdr("n2", None, "abandoned"),
            cdr("n3", Some("9999"), "answered"),
        ];
        assert_eq!(crossed(&cdrs, &homes), 2);
    }

    #[test]
    fn other_node_counts_are_refused() {
        for nodes in [0, 2, 4] {
            let args = DemoArgs {
                nodes,
                ..DemoArgs::default()
            };
            let err = crate::demo::validate(&args).expect_err("refused");
            assert!(err.to_string().contains("choose 1"), "{err}");
        }
        let args = DemoArgs {
            nodes: 3,
            ..DemoArgs::default()
        };
        assert!(crate::demo::validate(&args).is_ok());
    }

    /// The whole cluster demo for 12 s: every node's trunk gets calls answered, some
    /// calls cross to an agent registered at another node, and every call has a record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster_demo_answers_at_every_node_and_crosses_nodes() {
        // 25 s, not 12: talk times are long, so in 12 s each agent may take only the first
        // call that reaches it, a local one; later answers cross nodes.
        let args = DemoArgs {
            duration: Some(25),
            agents: 6,
            cps: 2.0,
            seed: 3,
            nodes: 3,
        };
        let report = crate::demo::run_with(&args, false)
            .await
            .expect("cluster demo runs");
        println!("{}", report.render());
        assert_eq!(report.agents_registered, 6, "{report:?}");
        assert_eq!(report.nodes.len(), 3, "{report:?}");
        for node in &report.nodes {
            assert_eq!(node.agents_registered, 2, "{node:?}");
            assert!(node.calls_placed >= 1, "{node:?}");
            assert!(node.answered >= 1, "no call answered at {node:?}");
        }
        assert!(
            report.crossed_nodes.is_some_and(|c| c >= 1),
            "no call crossed nodes: {report:?}"
        );
        assert!(report.rtp_relayed > 0, "{report:?}");
        assert!(report.phone_rtp_received > 0, "{report:?}");
    }
}
