//! A three-node cluster of real `carillon` processes on loopback with a fault proxy in
//! front of every node's Raft port, as an operator would run it: certificates from
//! `carillon certs`, one config file per node, the HTTP API to watch it.
//!
//! Every node listens on its own Raft socket and advertises its proxy (`cluster.advertise`);
//! the founding member list names the proxies, so every Raft datagram between n1, n2 and n3
//! crosses a proxy from the first vote on.
// Waits on real processes in wall-clock time, bounded by deadlines.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use toml::{Table, Value as Toml};

use crate::faults::{FaultSwitch, NodeNum};
use crate::http;
use crate::ports::{free_port, PortBlock};
use crate::procs::NodeProc;
use crate::proxy::{Proxy, ProxyCounts};
use crate::rng::XorShift;

/// Bytes of tests/../examples/prompts/hold.wav, the node's hold music.
const HOLD_WAV: &[u8] = include_bytes!("../../examples/prompts/hold.wav");
/// From spawn to a 200 on /health.
const STARTUP_TIMEOUT_MS: u64 = 20_000;
/// For the three to found the cluster and agree on a leader.
const FOUNDING_TIMEOUT_MS: u64 = 30_000;
/// Raft timing for the members (the example's WAN-ish defaults).
const ELECTION_MIN_MS: i64 = 450;
const ELECTION_MAX_MS: i64 = 700;
const HEARTBEAT_MS: i64 = 150;
pub const LEASE_MS: i64 = 3000;

/// One member's fixed addresses and files.
pub struct Member {
    pub num: NodeNum,
    pub site: String,
    pub sip: SocketAddr,
    pub http: SocketAddr,
    /// The node's own Raft socket.
    pub raft: SocketAddr,
    /// Where the other members reach it: its proxy.
    pub published: SocketAddr,
    pub config: PathBuf,
    pub ports: PortBlock,
    pub proc: Option<NodeProc>,
    starts: u32,
}

pub struct Cluster {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    exe: PathBuf,
    /// n1, n2, n3 at index 0, 1, 2.
    pub members: Vec<Member>,
    proxies: Vec<Proxy>,
    pub switch: FaultSwitch,
    runtime: tokio::runtime::Handle,
}

impl Cluster {
    /// Starts n1 and n2 at site `hq` and n3 at `branch` behind proxies, and waits until
    /// they agree on a leader. `keep_dir` keeps the files for a post-mortem.
    pub fn start(
        exe: &Path,
        runtime: tokio::runtime::Handle,
        seed: u64,
        keep_dir: bool,
    ) -> anyhow::Result<Cluster> {
        let tmp = tempfile::Builder::new()
            .prefix("carillon-chaos-")
            .tempdir()
            .context("creating the run directory")?;
        let dir = tmp.path().to_path_buf();
        let tmp = if keep_dir {
            let _ = tmp.keep();
            None
        } else {
            Some(tmp)
        };
        make_certs(exe, &dir)?;
        std::fs::write(dir.join("hold.wav"), HOLD_WAV)?;
        crate::sipp::install(&dir)?;
        let sites = ["hq", "hq", "branch"];
        let mut members = Vec::new();
        for (i, site) in sites.iter().enumerate() {
            let num = i as NodeNum + 1;
            let raft = loopback(free_port()?);
            members.push(Member {
                num,
                site: site.to_string(),
                sip: loopback(free_port()?),
                http: loopback(free_port()?),
                raft,
                published: raft,
                config: dir.join(format!("n{num}.toml")),
                ports: PortBlock::reserve(seed as usize % 50 + i * 7)?,
                proc: None,
                starts: 0,
            });
        }
        let switch = FaultSwitch::default();
        let peers: HashMap<SocketAddr, NodeNum> = members.iter().map(|m| (m.raft, m.num)).collect();
        let mut rng = XorShift::new(seed);
        let mut proxies = Vec::new();
        for m in members.iter_mut() {
            let proxy = runtime.block_on(Proxy::start(
                loopback(0),
                m.raft,
                m.num,
                peers.clone(),
                switch.clone(),
                rng.fork(m.num),
            ))?;
            m.published = proxy.listen;
            proxies.push(proxy);
        }
        for i in 0..members.len() {
            let text = config_text(&dir, &members, i)?;
            std::fs::write(&members[i].config, text)?;
        }
        let mut cluster = Cluster {
            dir,
            _tmp: tmp,
            exe: exe.to_path_buf(),
            members,
            proxies,
            switch,
            runtime,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        for i in 0..cluster.members.len() {
            cluster.wait_healthy(i)?;
        }
        if let Err(e) = cluster.wait_leader(Duration::from_millis(FOUNDING_TIMEOUT_MS)) {
            bail!("founding the cluster: {e:#}\n{}", cluster.log_tails(12));
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &mut self.members[i];
        m.starts += 1;
        let log = self.dir.join(format!("n{}.{}.log", m.num, m.starts));
        m.proc = Some(NodeProc::spawn(&self.exe, &m.config, &log)?);
        Ok(())
    }

    fn wait_healthy(&mut self, i: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_millis(STARTUP_TIMEOUT_MS);
        loop {
            let m = &mut self.members[i];
            if let Some(p) = m.proc.as_mut() {
                if !p.is_running() {
                    bail!(
                        "n{} exited during start-up; log: {}",
                        m.num,
                        p.log.display()
                    );
                }
            }
            if let Ok((200, _)) = http::request(m.http, "GET", "/health", 500) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("n{} not healthy after {STARTUP_TIMEOUT_MS} ms", m.num);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `lines` lines of every member's current log, for an error report.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for m in &self.members {
            let Some(p) = m.proc.as_ref() else { continue };
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "--- n{} ({}), last lines:\n",
                m.num,
                p.log.display()
            ));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// `/api/cluster` from member `i`, if it answers.
    pub fn cluster_status(&self, i: usize) -> Option<Value> {
        let m = self.members.get(i)?;
        m.proc.as_ref().filter(|p| !p.is_paused())?;
        http::get_json(m.http, "/api/cluster").ok()
    }

    /// The leader member `i` names on `/ready` (cheap: no call to its peers, unlike
    /// `/api/cluster`, which asks every peer and waits on a dead one).
    pub fn leader_seen(&self, i: usize) -> Option<NodeNum> {
        let m = self.members.get(i)?;
        m.proc.as_ref().filter(|p| !p.is_paused())?;
        let (status, body) = http::request(m.http, "GET", "/ready", 1_000).ok()?;
        if status != 200 {
            return None;
        }
        // "ready (leader n2)"
        let at = body.find("leader n")? + "leader n".len();
        body[at..]
            .trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .ok()
    }

    /// `/api/status` from member `i`.
    pub fn status(&self, i: usize) -> Option<Value> {
        let m = self.members.get(i)?;
        m.proc.as_ref().filter(|p| !p.is_paused())?;
        http::get_json(m.http, "/api/status").ok()
    }

    /// Indexes of members that run and are not paused.
    pub fn live(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| {
                self.members[*i]
                    .proc
                    .as_ref()
                    .is_some_and(|p| !p.is_paused())
            })
            .collect()
    }

    /// The index of the leader all live members agree on, waiting up to `timeout`.
    pub fn wait_leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        self.wait_leader_among(&self.live(), None, timeout)
    }

    /// The leader that every member in `who` names, other than `not`, within `timeout`.
    pub fn wait_leader_among(
        &self,
        who: &[usize],
        not: Option<NodeNum>,
        timeout: Duration,
    ) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders: Vec<Option<NodeNum>> = who.iter().map(|i| self.leader_seen(*i)).collect();
            if let Some(Some(first)) = leaders.first() {
                if leaders.iter().all(|l| *l == Some(*first)) && Some(*first) != not {
                    let idx = (*first as usize).saturating_sub(1);
                    if who.contains(&idx) {
                        return Ok(idx);
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("no agreed leader after {timeout:?}: {leaders:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill();
        }
    }

    /// Starts member `i` again on its data dir and waits for /health.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_healthy(i)
    }

    pub fn proc_mut(&mut self, i: usize) -> anyhow::Result<&mut NodeProc> {
        let num = self.members[i].num;
        self.members[i]
            .proc
            .as_mut()
            .with_context(|| format!("n{num} is not running"))
    }

    /// What the proxies did, summed.
    pub fn proxy_counts(&self) -> ProxyCounts {
        let mut sum = ProxyCounts::default();
        for p in &self.proxies {
            let c = p.stats.counts();
            sum.relayed += c.relayed;
            sum.dropped += c.dropped;
            sum.duplicated += c.duplicated;
            sum.delayed += c.delayed;
            sum.overflowed += c.overflowed;
        }
        sum
    }

    pub fn nums(&self) -> Vec<NodeNum> {
        self.members.iter().map(|m| m.num).collect()
    }

    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut p) = m.proc.take() {
                p.kill();
            }
        }
        // Proxies own tasks on the runtime; dropping them aborts those tasks.
        self.proxies.clear();
    }
}

/// The leader's number in an `/api/cluster` answer.
pub fn leader_num(st: &Value) -> Option<NodeNum> {
    st["leader"].as_str()?.trim_start_matches('n').parse().ok()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `carillon certs --out DIR/certs --nodes n1,n2,n3`.
fn make_certs(exe: &Path, dir: &Path) -> anyhow::Result<()> {
    let out = Command::new(exe)
        .arg("certs")
        .arg("--out")
        .arg(dir.join("certs"))
        .arg("--nodes")
        .arg("n1,n2,n3")
        .output()
        .with_context(|| format!("running {} certs", exe.display()))?;
    if !out.status.success() {
        bail!(
            "carillon certs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn table(entries: Vec<(&str, Toml)>) -> Toml {
    Toml::Table(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn path(p: PathBuf) -> Toml {
    Toml::String(p.display().to_string())
}

/// Member `i`'s config: all three found the cluster with the published (proxy) addresses.
fn config_text(dir: &Path, members: &[Member], i: usize) -> anyhow::Result<String> {
    let m = &members[i];
    let entry = |x: &Member, raft: SocketAddr| {
        table(vec![
            ("id", format!("n{}", x.num).into()),
            ("raft", raft.to_string().into()),
            ("sip", x.sip.to_string().into()),
            ("http", x.http.to_string().into()),
            ("site", x.site.clone().into()),
        ])
    };
    let listed: Vec<Toml> = members.iter().map(|x| entry(x, x.published)).collect();
    let (rtp_min, rtp_max) = m.ports.rtp_range();
    let mut t = Table::new();
    t.insert(
        "node".into(),
        table(vec![
            ("id", format!("n{}", m.num).into()),
            ("site", m.site.clone().into()),
            ("data_dir", path(dir.join(format!("data-n{}", m.num)))),
            ("max_concurrent_calls", 1000.into()),
        ]),
    );
    t.insert(
        "sip".into(),
        table(vec![("listen", m.sip.to_string().into())]),
    );
    t.insert(
        "rtp".into(),
        table(vec![
            ("ip", "127.0.0.1".into()),
            ("port_min", i64::from(rtp_min).into()),
            ("port_max", i64::from(rtp_max).into()),
        ]),
    );
    t.insert(
        "http".into(),
        table(vec![("listen", m.http.to_string().into())]),
    );
    t.insert(
        "media".into(),
        table(vec![("hold_music", path(dir.join("hold.wav")))]),
    );
    t.insert(
        "trunks".into(),
        Toml::Array(vec![table(vec![
            ("name", "local".into()),
            ("allow", Toml::Array(vec!["127.0.0.0/8".into()])),
        ])]),
    );
    t.insert(
        "agents".into(),
        Toml::Array(vec![table(vec![
            ("ids", "1001-1020".into()),
            ("password_prefix", "pw".into()),
            ("skills", Toml::Array(vec!["support".into()])),
        ])]),
    );
    // No wrap-up and no site preference, so offers follow arrival order and can be checked.
    t.insert(
        "queues".into(),
        Toml::Array(vec![table(vec![
            ("name", "support".into()),
            ("skill", "support".into()),
            ("wrapup_s", 0.into()),
            ("ring_timeout_s", 10.into()),
            ("local_wait_s", 0.into()),
        ])]),
    );
    t.insert(
        "numbers".into(),
        Toml::Array(vec![table(vec![
            ("number", "100".into()),
            ("queue", "support".into()),
        ])]),
    );
    let certs = dir.join("certs");
    t.insert(
        "cluster".into(),
        table(vec![
            ("listen", m.raft.to_string().into()),
            ("advertise", m.published.to_string().into()),
            ("ca", path(certs.join("ca.pem"))),
            ("cert", path(certs.join(format!("n{}.pem", m.num)))),
            ("key", path(certs.join(format!("n{}.key", m.num)))),
            ("bootstrap", true.into()),
            ("election_timeout_min_ms", ELECTION_MIN_MS.into()),
            ("election_timeout_max_ms", ELECTION_MAX_MS.into()),
            ("heartbeat_ms", HEARTBEAT_MS.into()),
            ("lease_ms", LEASE_MS.into()),
            ("members", Toml::Array(listed)),
        ]),
    );
    toml::to_string(&t).context("writing a node config")
}
