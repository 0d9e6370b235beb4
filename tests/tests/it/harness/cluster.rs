//! A cluster of real `carillon` processes for one test: certificates made by
//! `carillon certs` in the test's own directory, every member on 127.0.0.1 with ports from
//! the OS (SIP, HTTP, gRPC, Raft over QUIC), configs from examples/cluster/ with this
//! test's cast. Members are killed on drop like any [`Node`].

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use toml::{Table, Value as Toml};

use super::http;
use super::node::{carillon_bin, Node, NodeSpec};
use super::ports::free_port;

/// A member's addresses, chosen before any member starts.
#[derive(Clone)]
pub struct Plan {
    pub id: String,
    pub site: String,
    pub sip: SocketAddr,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub raft: SocketAddr,
}

pub struct TestCluster {
    /// `None` once a member was killed and dropped (or, for a spare, not started yet).
    pub nodes: Vec<Option<Node>>,
    /// Every planned member's addresses: the founders first, then the spares.
    pub plans: Vec<Plan>,
    /// The founders' `[[cluster.members]]`, given to every member's config.
    members: Toml,
    certs: tempfile::TempDir,
}

impl TestCluster {
    /// Starts one member per entry of `sites` (n1 at sites[0]...) and waits for a leader.
    /// `tune` edits each member's spec (index, spec) before it starts.
    pub fn start(sites: &[&str], tune: impl FnMut(usize, &mut NodeSpec)) -> TestCluster {
        TestCluster::start_with_spares(sites, &[], tune)
    }

    /// Like [`TestCluster::start`], and plans (certificates and addresses, not started)
    /// one more member per entry of `spare_sites`, to join later with
    /// [`TestCluster::start_spare`] and `ctl cluster add-node`.
    pub fn start_with_spares(
        sites: &[&str],
        spare_sites: &[&str],
        mut tune: impl FnMut(usize, &mut NodeSpec),
    ) -> TestCluster {
        let founders = sites.len();
        let sites: Vec<&str> = sites.iter().chain(spare_sites).copied().collect();
        let total = sites.len();
        let certs = tempfile::Builder::new()
            .prefix("carillon-it-certs-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temp dir: {e}"));
        let names: Vec<String> = (1..=total).map(|i| format!("n{i}")).collect();
        make_certs(certs.path(), &names);
        let plans: Vec<Plan> = names
            .iter()
            .zip(sites)
            .map(|(id, site)| Plan {
                id: id.clone(),
                site: site.to_string(),
                sip: loopback(free_port()),
                http: loopback(free_port()),
                grpc: loopback(free_port()),
                raft: loopback(free_port()),
            })
            .collect();
        let members = Toml::Array(
            plans[..founders]
                .iter()
                .map(|p| {
                    let mut m = Table::new();
                    m.insert("id".into(), p.id.clone().into());
                    m.insert("raft".into(), p.raft.to_string().into());
                    m.insert("sip".into(), p.sip.to_string().into());
                    m.insert("http".into(), p.http.to_string().into());
                    m.insert("site".into(), p.site.clone().into());
                    Toml::Table(m)
                })
                .collect(),
        );
        let mut cluster = TestCluster {
            nodes: Vec::new(),
            plans,
            members,
            certs,
        };
        for i in 0..founders {
            let mut spec = cluster.spec(i);
            tune(i, &mut spec);
            cluster.nodes.push(Some(Node::start_as_given(spec)));
        }
        cluster.nodes.extend((founders..total).map(|_| None));
        cluster.wait_leader(Duration::from_secs(20));
        cluster
    }

    /// Starts planned spare member `i` (not bootstrapping: it waits to be added).
    pub fn start_spare(&mut self, i: usize) -> &Node {
        assert!(self.nodes[i].is_none(), "member n{} already runs", i + 1);
        let mut spec = self.spec(i);
        spec.set("cluster", "bootstrap", false);
        self.nodes[i] = Some(Node::start_as_given(spec));
        self.node(i)
    }

    /// Member `i`'s config: n1's example with the test cast and its own addresses.
    fn spec(&self, i: usize) -> NodeSpec {
        let p = &self.plans[i];
        let certs = self.certs.path();
        let members = self.members.clone();
        let mut spec = NodeSpec::from_example("cluster/n1.toml");
        spec.with_test_cast();
        spec.set("node", "id", p.id.clone())
            .set("node", "site", p.site.clone())
            .set("sip", "listen", p.sip.to_string())
            .set("http", "listen", p.http.to_string())
            .set("grpc", "listen", p.grpc.to_string())
            .set("cluster", "listen", p.raft.to_string())
            .set("cluster", "ca", cert_path(certs, "ca.pem"))
            .set(
                "cluster",
                "cert",
                cert_path(certs, &format!("{}.pem", p.id)),
            )
            .set("cluster", "key", cert_path(certs, &format!("{}.key", p.id)))
            .set("cluster", "members", members);
        spec
    }

    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i]
            .as_ref()
            .unwrap_or_else(|| panic!("member n{} was killed", i + 1))
    }

    /// The live members' indexes.
    pub fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect()
    }

    /// `/api/cluster` from member `i`, if it answers.
    pub fn status(&self, i: usize) -> Option<Value> {
        let node = self.nodes[i].as_ref()?;
        match http::get(node.http, "/api/cluster", Duration::from_millis(3_000)) {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// The index of the leader every live member agrees on, waiting up to `timeout`.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders: Vec<Option<String>> = self
                .alive()
                .iter()
                .map(|i| {
                    self.status(*i)
                        .and_then(|s| s["leader"].as_str().map(String::from))
                })
                .collect();
            if let Some(Some(first)) = leaders.first() {
                if leaders.iter().all(|l| l.as_deref() == Some(first)) {
                    let idx = first
                        .trim_start_matches('n')
                        .parse::<usize>()
                        .unwrap_or(0)
                        .saturating_sub(1);
                    if self.nodes.get(idx).is_some_and(Option::is_some) {
                        return idx;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader after {timeout:?}: {leaders:?}; logs:\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs member `i` and drops it (its test directory goes with it).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            node.kill();
        }
    }

    /// Every live member's log tail, for assertion messages.
    pub fn logs(&self) -> String {
        self.alive()
            .iter()
            .map(|i| format!("--- n{} ---\n{}", i + 1, self.node(*i).log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn cert_path(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

/// `carillon certs --out DIR --nodes n1,n2,...` (the real command).
fn make_certs(dir: &Path, names: &[String]) {
    let out = Command::new(carillon_bin())
        .arg("certs")
        .arg("--out")
        .arg(dir)
        .arg("--nodes")
        .arg(names.join(","))
        .output()
        .unwrap_or_else(|e| panic!("running carillon certs: {e}"));
    assert!(
        out.status.success(),
        "carillon certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
