//! `carillon demo`: a complete contact center on this machine, shown live.
//!
//! One node starts in-process on free loopback ports with a temporary data
//! directory (or, with `--nodes 3`, a three-node Raft cluster: see
//! `demo_cluster`); simulated agent phones register over real SIP, spread
//! over the nodes; a simulated trunk at every node places calls to number 100
//! at the requested total rate (Poisson arrivals, taken by the nodes in turn);
//! every second the screen shows calls and agents; at the end (Ctrl-C or
//! `--duration`) a summary is printed from the nodes' CDRs.
//!
//! Callers stay on the line for a random 8-25 s, or 2-8 s for the impatient
//! fifth who abandon; agents ring 0.5-2.5 s and talk 5-20 s. The seed fixes
//! those draws; wall-clock scheduling still varies between runs.
//!
//! What this leaves to others: the node's behaviour (node, call, edge), the
//! phones (sim), the cluster's addresses, certificates and live view
//! (`demo_cluster`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use carillon_ops::records::Cdr;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::node::{Node, NodeHandle};
use crate::sim::caller::{CallPlan, CallerStats};
use crate::sim::rng::SimRng;
use crate::sim::rtp::Audio;
use crate::sim::{AgentPhone, AgentPhoneConfig, Caller, CallerConfig};

/// The number callers dial and the queue behind it.
const DEMO_NUMBER: &str = "100";
pub(crate) const DEMO_QUEUE: &str = "support";
/// Agent ids run from 1001 up; a three-digit suffix allows 999 of them.
const AGENT_ID_BASE: u32 = 1000;
const AGENTS_MAX: u32 = 999;
/// Calls per second beyond this would measure the machine, not show a demo.
const CPS_MAX: f64 = 50.0;
/// Calls on the line at once; arrivals beyond it are skipped and counted.
const CALLS_IN_FLIGHT_MAX: usize = 500;
/// RTP ports the node may use (two per call leg pair, with room to rotate).
const RTP_PORT_SPAN: u16 = 2_000;
/// Time for every phone to register before calls start.
const REGISTER_WAIT_MS: u64 = 10_000;
/// After the last call is hung up, how long the node gets to write its CDRs.
const SETTLE_MS: u64 = 2_000;
/// How long hung-up calls may take to finish their BYE exchanges.
const DRAIN_MS: u64 = 5_000;
/// Seconds of generated hold music when no recording is shipped.
const HOLD_MUSIC_S: u32 = 30;

/// Options of `carillon demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Stop after this long (90, 90s, 5m, 1h); without it, run until Ctrl-C.
    #[arg(long, value_parser = parse_duration_s)]
    pub duration: Option<u64>,
    /// Number of simulated agents (ids 1001 upward, password pw<id>).
    #[arg(long, default_value_t = 10)]
    pub agents: u32,
    /// Mean calls per second arriving at number 100.
    #[arg(long, default_value_t = 1.0)]
    pub cps: f64,
    /// Seed for arrivals, patience, ring and talk times.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Nodes to run: 1, or 3 for a Raft cluster (n1 and n2 at site hq on 127.0.0.1 and
    /// 127.0.0.2, n3 at site branch on 127.0.0.3) with agents and callers at every node.
    #[arg(long, default_value_t = 1)]
    pub nodes: u32,
}

impl Default for DemoArgs {
    fn default() -> Self {
        Self {
            duration: None,
            agents: 10,
            cps: 1.0,
            seed: 1,
            nodes: 1,
        }
    }
}

/// Parses `90`, `90s`, `5m` or `1h` into seconds.
pub fn parse_duration_s(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: use e.g. 90, 90s, 5m or 1h"))?;
    let scale = match unit {
        "s" | "sec" => 1,
        "m" | "min" => 60,
        "h" => 3_600,
        _ => return Err(format!("`{text}`: unknown unit `{unit}`; use s, m or h")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// What a demo run did, taken from the simulator and the node's CDRs.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    pub run_s: f64,
    pub agents_registered: usize,
    pub calls_placed: u64,
    /// Arrivals dropped because `CALLS_IN_FLIGHT_MAX` calls were already up.
    pub calls_skipped: u64,
    /// Calls the node refused or never answered (non-2xx or no response).
    pub calls_refused: u64,
    pub cdrs: usize,
    pub answered: usize,
    pub abandoned: usize,
    pub other: usize,
    /// Mean wait of answered calls (arrival to agent answer).
    pub average_wait_answered_ms: Option<u64>,
    /// Mean wait of abandoned calls.
    pub average_wait_abandoned_ms: Option<u64>,
    /// RTP packets relayed by the node, both directions, summed over CDRs.
    pub rtp_relayed: u64,
    pub agent_calls_answered: u64,
    pub phone_rtp_received: u64,
    /// One entry per node when the demo ran a cluster; empty for a single node.
    pub nodes: Vec<NodeReport>,
    /// Answered calls whose agent's phone was registered at another node than the
    /// one that owned the call (None for a single node).
    pub crossed_nodes: Option<usize>,
}

/// One cluster member's share of a demo run.
#[derive(Debug, Clone, Default)]
pub struct NodeReport {
    /// `n1`, `n2`, `n3`.
    pub name: String,
    pub site: String,
    /// Agent phones registered at this node (at the end of the load).
    pub agents_registered: usize,
    /// Calls the trunk at this node placed.
    pub calls_placed: u64,
    /// CDRs this node wrote (calls it owned), and how they ended.
    pub cdrs: usize,
    pub answered: usize,
    pub abandoned: usize,
    /// Of `answered`, those taken by an agent registered at another node.
    pub crossed_out: usize,
}

impl DemoReport {
    fn from_run(
        run_s: f64,
        agents_registered: usize,
        caller: &crate::sim::caller::CallerStats,
        calls_skipped: u64,
        phones: &[AgentPhone],
        cdrs: &[Cdr],
    ) -> Self {
        let mean = |waits: Vec<u64>| {
            (!waits.is_empty()).then(|| waits.iter().sum::<u64>() / waits.len() as u64)
        };
        let waits_of = |disposition: &str| {
            cdrs.iter()
                .filter(|c| c.disposition == disposition)
                .map(|c| c.wait_ms)
                .collect::<Vec<_>>()
        };
        let answered = cdrs.iter().filter(|c| c.disposition == "answered").count();
        let abandoned = cdrs.iter().filter(|c| c.disposition == "abandoned").count();
        DemoReport {
            run_s,
            agents_registered,
            calls_placed: caller.calls_placed,
            calls_skipped,
            calls_refused: caller.calls_refused,
            cdrs: cdrs.len(),
            answered,
            abandoned,
            other: cdrs.len() - answered - abandoned,
            average_wait_answered_ms: mean(waits_of("answered")),
            average_wait_abandoned_ms: mean(waits_of("abandoned")),
            rtp_relayed: cdrs
                .iter()
                .map(|c| c.rtp_caller_to_agent + c.rtp_agent_to_caller)
                .sum(),
            agent_calls_answered: phones.iter().map(|p| p.stats().calls_answered).sum(),
            phone_rtp_received: phones.iter().map(|p| p.stats().rtp_received).sum(),
            nodes: Vec::new(),
            crossed_nodes: None,
        }
    }

    /// The closing summary, as printed.
    pub fn render(&self) -> String {
        let ms = |v: Option<u64>| match v {
            Some(v) => format!("{:.1} s", v as f64 / 1000.0),
            None => "-".to_string(),
        };
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(s, "Carillon demo summary ({:.0} s)", self.run_s);
        let _ = writeln!(s, "  agents registered    {}", self.agents_registered);
        let _ = writeln!(s, "  calls placed         {}", self.calls_placed);
        if self.calls_skipped > 0 {
            let _ = writeln!(
                s,
                "  arrivals skipped     {} (too many calls up)",
                self.calls_skipped
            );
        }
        let _ = writeln!(s, "  refused by the node  {}", self.calls_refused);
        let _ = writeln!(s, "  call records (CDRs)  {}", self.cdrs);
        let _ = writeln!(s, "    answered           {}", self.answered);
        let _ = writeln!(s, "    abandoned          {}", self.abandoned);
        let _ = writeln!(s, "    other              {}", self.other);
        let _ = writeln!(
            s,
            "  average wait         {} answered, {} abandoned",
            ms(self.average_wait_answered_ms),
            ms(self.average_wait_abandoned_ms)
        );
        let _ = writeln!(s, "  RTP packets relayed  {}", self.rtp_relayed);
        let _ = writeln!(
            s,
            "  agent phones: {} calls answered, {} RTP packets heard",
            self.agent_calls_answered, self.phone_rtp_received
        );
        if let Some(crossed) = self.crossed_nodes {
            let _ = writeln!(
                s,
                "  crossed nodes        {crossed} of {} answered (agent registered at another node)",
                self.answered
            );
        }
        if !self.nodes.is_empty() {
            let _ = writeln!(
                s,
                "  per node             site     agents  placed  CDRs  answered  abandoned  crossed out"
            );
        }
        for n in &self.nodes {
            let _ = writeln!(
                s,
                "    {:<18} {:<8} {:>6}  {:>6}  {:>4}  {:>8}  {:>9}  {:>11}",
                n.name,
                n.site,
                n.agents_registered,
                n.calls_placed,
                n.cdrs,
                n.answered,
                n.abandoned,
                n.crossed_out
            );
        }
        s
    }
}

/// Runs the demo until Ctrl-C or `--duration`, drawing the live view on stdout,
/// then prints the summary.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let report = run_with(&args, true).await?;
    println!("{}", report.render());
    Ok(())
}

/// The demo without the closing print; `live` draws the view each second and
/// lets Ctrl-C end the run.
pub async fn run_with(args: &DemoArgs, live: bool) -> anyhow::Result<DemoReport> {
    validate(args)?;
    let dir = DemoDir::create(args.seed)?;
    let nodes = if args.nodes == 1 {
        let config = demo_config(args, dir.path())?;
        vec![Node::start(config)
            .await
            .context("the demo node did not start")?]
    } else {
        crate::demo_cluster::start_nodes(args, dir.path()).await?
    };
    let cancel = CancellationToken::new();
    let result = drive(args, &nodes, &cancel, live).await;
    cancel.cancel();
    for node in nodes {
        node.shutdown().await;
    }
    drop(dir);
    result
}

pub(crate) fn validate(args: &DemoArgs) -> anyhow::Result<()> {
    if args.agents == 0 || args.agents > AGENTS_MAX {
        anyhow::bail!("--agents {}: choose 1 to {AGENTS_MAX}", args.agents);
    }
    if !(args.cps > 0.0 && args.cps <= CPS_MAX) {
        anyhow::bail!(
            "--cps {}: choose a rate above 0 and at most {CPS_MAX}",
            args.cps
        );
    }
    if args.duration == Some(0) {
        anyhow::bail!(
            "--duration 0: give at least one second, or leave it out to run until Ctrl-C"
        );
    }
    if args.nodes != 1 && args.nodes as usize != crate::demo_cluster::CLUSTER_NODES {
        anyhow::bail!(
            "--nodes {}: choose 1 (one node) or {} (a cluster: two nodes at site hq, one at site branch)",
            args.nodes,
            crate::demo_cluster::CLUSTER_NODES
        );
    }
    Ok(())
}

async fn drive(
    args: &DemoArgs,
    nodes: &[NodeHandle],
    cancel: &CancellationToken,
    live: bool,
) -> anyhow::Result<DemoReport> {
    let mut rng = SimRng::new(args.seed);
    let registrars: Vec<SocketAddr> = nodes.iter().map(NodeHandle::sip_addr).collect();
    let phones = start_phones(args, &registrars, &mut rng, cancel).await?;
    let registered = phones.iter().filter(|p| p.stats().registered).count();
    if registered == 0 {
        anyhow::bail!(
            "no agent phone could register with the demo node(s) at {registrars:?}: \
             run with CARILLON_LOG=info to see why"
        );
    }
    // Where each agent's phone registered: node name by agent id.
    let homes: HashMap<String, String> = phones
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let node = &nodes[i % nodes.len()];
            (p.agent_id().to_string(), node.shared().node_id.clone())
        })
        .collect();

    // One trunk per node, so every node owns calls of its own.
    let mut callers = Vec::with_capacity(nodes.len());
    for node in nodes {
        let mut caller_config = CallerConfig::new(node.sip_addr());
        caller_config.seed = rng.next_u64();
        caller_config.audio = Audio::Tone { hz: 350 };
        callers.push(Arc::new(Caller::start(caller_config, cancel).await?));
    }

    let started = crate::clock::instant();
    let stop_at = args.duration.map(|s| started + Duration::from_secs(s));
    let mut calls = JoinSet::new();
    let mut skipped = 0u64;
    let mut arrivals = rng.fork(1);
    let mut next_arrival = started + secs_f64(arrivals.exp_f64(1.0 / args.cps));
    let mut next_draw = started;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut call_no: u64 = 0;
    // Bounded by --duration or Ctrl-C; each pass sleeps until the next arrival or redraw.
    loop {
        let now = crate::clock::instant();
        if stop_at.is_some_and(|t| now >= t) {
            break;
        }
        while let Some(done) = calls.try_join_next() {
            drop(done);
        }
        if now >= next_arrival {
            if calls.len() >= CALLS_IN_FLIGHT_MAX {
                skipped += 1;
            } else {
                call_no += 1;
                let plan = call_plan(&mut arrivals, call_no);
                // The nodes take arrivals in turn: each trunk carries an equal share.
                let caller = callers[(call_no as usize) % callers.len()].clone();
                calls.spawn(async move { caller.call(&plan).await });
            }
            next_arrival += secs_f64(arrivals.exp_f64(1.0 / args.cps));
            continue;
        }
        if now >= next_draw {
            if live {
                let elapsed = now.duration_since(started);
                let text = if nodes.len() == 1 {
                    live_view(&nodes[0].status(), &callers[0], &phones, elapsed, args)
                } else {
                    crate::demo_cluster::live_view(nodes, &callers, &phones, &homes, elapsed, args)
                };
                draw(&text);
            }
            next_draw += Duration::from_secs(1);
        }
        let mut wake = next_arrival.min(next_draw);
        if let Some(t) = stop_at {
            wake = wake.min(t);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            _ = &mut ctrl_c, if live => break,
        }
    }
    let run_s = crate::clock::instant()
        .duration_since(started)
        .as_secs_f64();

    // Hang up whoever is still on the line, let the BYEs finish and the nodes
    // write their records, then read them.
    for caller in &callers {
        caller.stop();
    }
    let drain = async { while calls.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_millis(DRAIN_MS), drain)
        .await
        .is_err()
    {
        calls.abort_all();
    }
    tokio::time::sleep(Duration::from_millis(SETTLE_MS)).await;
    let per_node: Vec<Vec<Cdr>> = nodes.iter().map(NodeHandle::cdrs).collect();
    let cdrs: Vec<Cdr> = per_node.iter().flatten().cloned().collect();
    let caller_stats: Vec<CallerStats> = callers.iter().map(|c| c.stats()).collect();
    let mut report = DemoReport::from_run(
        run_s,
        registered,
        &sum_caller_stats(&caller_stats),
        skipped,
        &phones,
        &cdrs,
    );
    if nodes.len() > 1 {
        report.crossed_nodes = Some(crate::demo_cluster::crossed(&cdrs, &homes));
        report.nodes = nodes
            .iter()
            .zip(&per_node)
            .zip(&caller_stats)
            .map(|((node, cdrs), placed)| {
                crate::demo_cluster::node_report(node, cdrs, placed, &phones, &homes)
            })
            .collect();
    }
    for phone in phones {
        phone.stop().await;
    }
    Ok(report)
}

fn sum_caller_stats(all: &[CallerStats]) -> CallerStats {
    all.iter().fold(CallerStats::default(), |a, b| CallerStats {
        calls_placed: a.calls_placed + b.calls_placed,
        calls_connected: a.calls_connected + b.calls_connected,
        calls_refused: a.calls_refused + b.calls_refused,
        calls_active: a.calls_active + b.calls_active,
        hangups_by_caller: a.hangups_by_caller + b.hangups_by_caller,
        hangups_by_remote: a.hangups_by_remote + b.hangups_by_remote,
        rtp_sent: a.rtp_sent + b.rtp_sent,
        rtp_received: a.rtp_received + b.rtp_received,
    })
}

/// Starts one phone per agent, registered at the registrars in turn (agent 1001 at the
/// first, 1002 at the second...), and waits (bounded) for them to register.
async fn start_phones(
    args: &DemoArgs,
    registrars: &[SocketAddr],
    rng: &mut SimRng,
    cancel: &CancellationToken,
) -> anyhow::Result<Vec<AgentPhone>> {
    let mut phones = Vec::with_capacity(args.agents as usize);
    for n in 1..=args.agents {
        let id = (AGENT_ID_BASE + n).to_string();
        let mut cfg = AgentPhoneConfig::new(id.clone(), format!("pw{id}"));
        cfg.registrar = registrars
            .get((n as usize - 1) % registrars.len().max(1))
            .copied();
        cfg.register_expires_s = 120;
        cfg.ring_delay_ms = (500, 2_500);
        cfg.talk_time_ms = (5_000, 20_000);
        cfg.audio = Audio::Tone { hz: 440 };
        cfg.seed = rng.next_u64();
        phones.push(AgentPhone::start(cfg, cancel).await?);
    }
    let wait = Duration::from_millis(REGISTER_WAIT_MS);
    for phone in &phones {
        if let Err(e) = phone.wait_registered(wait).await {
            tracing::warn!(agent = phone.agent_id(), error = %e, "agent phone not registered");
        }
    }
    Ok(phones)
}

/// One caller's plan: a fifth are impatient (2-8 s), the rest stay 8-25 s.
fn call_plan(rng: &mut SimRng, call_no: u64) -> CallPlan {
    let hold_for_ms = if rng.chance(0.2) {
        rng.range_u64(2_000, 8_000)
    } else {
        rng.range_u64(8_000, 25_000)
    };
    CallPlan {
        number: DEMO_NUMBER.to_string(),
        from_user: Some(format!("555{:04}", call_no % 10_000)),
        hold_for_ms,
    }
}

fn secs_f64(s: f64) -> Duration {
    // exp_f64 is finite and non-negative; cap absurd gaps at an hour.
    Duration::from_secs_f64(s.clamp(0.0, 3_600.0))
}

/// Draws a live view: clear (on a terminal) and print.
fn draw(text: &str) {
    let mut out = std::io::stdout().lock();
    if out.is_terminal() {
        // Clear the screen and home the cursor.
        let _ = out.write_all(b"\x1b[2J\x1b[H");
    } else {
        let _ = out.write_all(b"\n");
    }
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn live_view(
    status: &Value,
    caller: &Caller,
    phones: &[AgentPhone],
    elapsed: Duration,
    args: &DemoArgs,
) -> String {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let acd = &status["acd"];
    let (mut waiting, mut offering, mut connected, mut longest) = (0, 0, 0, 0);
    if let Some(queues) = acd["queues"].as_object() {
        for q in queues.values() {
            waiting += n(&q["waiting"]);
            offering += n(&q["offering"]);
            connected += n(&q["connected"]);
            longest = longest.max(n(&q["longest_wait_ms"]));
        }
    }
    let calls = &status["calls"];
    let cs = caller.stats();
    let registered = phones.iter().filter(|p| p.stats().registered).count();
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        s,
        "Carillon demo  t={:>4}s  agents={}  rate={} calls/s  seed={}   (Ctrl-C ends)",
        elapsed.as_secs(),
        args.agents,
        args.cps,
        args.seed
    );
    let _ = writeln!(
        s,
        "node {}  sip {}",
        status["node"].as_str().unwrap_or("?"),
        status["sip"].as_str().unwrap_or("?")
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "now      waiting {waiting:>4}   ringing an agent {offering:>4}   talking {connected:>4}   \
         calls at the node {:>4}   longest wait {:.1} s",
        n(&calls["active"]),
        longest as f64 / 1000.0
    );
    let _ = writeln!(
        s,
        "placed   {:>5} calls ({} refused)   ended: answered {:>5}   abandoned {:>5}   lost {:>4}",
        cs.calls_placed,
        cs.calls_refused,
        n(&calls["answered"]),
        n(&calls["abandoned"]),
        n(&calls["lost"]),
    );
    let _ = writeln!(
        s,
        "rtp      relayed by the node (ended calls) {:>8}   trunk sent/heard {:>7}/{:<7}",
        n(&calls["rtp_relayed"]),
        cs.rtp_sent,
        cs.rtp_received
    );
    let _ = write!(s, "agents   registered {registered:>3}/{} ", phones.len());
    if let Some(states) = acd["agents"].as_object() {
        for (state, count) in states {
            let _ = write!(s, "  {state} {}", n(count));
        }
    }
    let _ = writeln!(s);
    s
}

/// The demo's node config, written as TOML so it goes through the same
/// parsing and validation as a config file.
fn demo_config(args: &DemoArgs, dir: &Path) -> anyhow::Result<Config> {
    let sip_port =
        crate::bench::sip::free_port().context("no free UDP+TCP port on 127.0.0.1 for SIP")?;
    let localhost = std::net::IpAddr::from([127, 0, 0, 1]);
    let place = NodePlace {
        id: "demo".to_string(),
        site: "local".to_string(),
        sip: SocketAddr::new(localhost, sip_port),
        http: SocketAddr::new(localhost, 0),
        rtp_ip: localhost,
        data_dir: "data".to_string(),
    };
    let text = config_text(args, &hold_music(dir)?, &place);
    Ok(Config::from_toml(
        &text,
        "demo (built in)",
        dir.to_path_buf(),
    )?)
}

/// Where one demo node listens and keeps its data.
pub(crate) struct NodePlace {
    pub id: String,
    pub site: String,
    pub sip: SocketAddr,
    pub http: SocketAddr,
    pub rtp_ip: std::net::IpAddr,
    /// Relative to the demo's directory.
    pub data_dir: String,
}

/// A demo node's config (TOML) at `place`, without any `[cluster]` section.
pub(crate) fn config_text(args: &DemoArgs, hold: &Path, place: &NodePlace) -> String {
    let rtp_min = rtp_range_start(args.seed);
    let last_agent = AGENT_ID_BASE + args.agents;
    format!(
        r#"
[node]
id = {id}
site = {site}
data_dir = {data_dir}
max_concurrent_calls = {calls_max}

[sip]
listen = "{sip}"
realm = "carillon"

[rtp]
ip = "{rtp_ip}"
port_min = {rtp_min}
port_max = {rtp_max}

[http]
listen = "{http}"

[media]
hold_music = {hold}

[[trunks]]
name = "demo"
allow = ["127.0.0.0/8"]

[[agents]]
ids = "{first_agent}-{last_agent}"
password_prefix = "pw"
skills = ["{DEMO_QUEUE}"]

[[queues]]
name = "{DEMO_QUEUE}"
skill = "{DEMO_QUEUE}"
wrapup_s = 1
ring_timeout_s = 10

[[numbers]]
number = "{DEMO_NUMBER}"
queue = "{DEMO_QUEUE}"
"#,
        id = toml_string(&place.id),
        site = toml_string(&place.site),
        data_dir = toml_string(&place.data_dir),
        sip = place.sip,
        http = place.http,
        rtp_ip = place.rtp_ip,
        calls_max = CALLS_IN_FLIGHT_MAX * 2,
        rtp_max = rtp_min + RTP_PORT_SPAN - 1,
        hold = toml_string(&hold.display().to_string()),
        first_agent = AGENT_ID_BASE + 1,
    )
}

/// A TOML basic string with backslashes and quotes escaped.
pub(crate) fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Where the demo's RTP range starts: spread by process and seed so parallel
/// demos (tests) rarely share ports; the node's pool skips ports in use anyway.
fn rtp_range_start(seed: u64) -> u16 {
    const LOW: u64 = 20_000;
    const SLOTS: u64 = 20;
    let slot = (u64::from(std::process::id()) ^ seed.wrapping_mul(0x9E37)) % SLOTS;
    // LOW + 19 * 2000 = 58000, below 65535 with room for the span.
    (LOW + slot * u64::from(RTP_PORT_SPAN)) as u16
}

/// The shipped hold music when run from a checkout, else a generated melody.
pub(crate) fn hold_music(dir: &Path) -> anyhow::Result<PathBuf> {
    let shipped = [
        PathBuf::from("examples/prompts/hold.wav"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/prompts/hold.wav"),
    ];
    if let Some(found) = shipped.iter().find(|p| p.is_file()) {
        return Ok(std::fs::canonicalize(found).unwrap_or_else(|_| found.clone()));
    }
    let path = dir.join("hold.wav");
    carillon_media::wav::write_pcm16(&path, &carillon_media::tone::hold_music(HOLD_MUSIC_S))
        .context("cannot write the generated hold music")?;
    Ok(path)
}

/// A scratch directory for the demo node's data, removed when dropped.
struct DemoDir(PathBuf);

impl DemoDir {
    fn create(seed: u64) -> anyhow::Result<Self> {
        let base = std::env::temp_dir();
        // Process id plus a counter keeps parallel demos in one process apart.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = base.join(format!("carillon-demo-{}-{seed}-{n}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).ok();
        }
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create the demo's data dir {}", path.display()))?;
        Ok(DemoDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_s("90"), Ok(90));
        assert_eq!(parse_duration_s("90s"), Ok(90));
        assert_eq!(parse_duration_s("5m"), Ok(300));
        assert_eq!(parse_duration_s("1h"), Ok(3_600));
        assert!(parse_duration_s("soon").is_err());
        assert!(parse_duration_s("5d").is_err());
        assert!(parse_duration_s("99999999999999999999h").is_err());
    }

    #[test]
    fn bad_args_are_refused_with_a_hint() {
        let bad = DemoArgs {
            agents: 0,
            ..DemoArgs::default()
        };
        assert!(validate(&bad).is_err());
        let bad = DemoArgs {
            cps: 0.0,
            ..DemoArgs::default()
        };
        assert!(validate(&bad).is_err());
        let bad = DemoArgs {
            cps: f64::NAN,
            ..DemoArgs::default()
        };
        assert!(validate(&bad).is_err());
        assert!(validate(&DemoArgs::default()).is_ok());
    }

    #[test]
    fn built_config_is_valid() {
        let dir = DemoDir::create(99).expect("temp dir");
        let config = demo_config(&DemoArgs::default(), dir.path()).expect("demo config validates");
        assert_eq!(config.agent_accounts().len(), 10);
        assert!(config.hold_music_path().is_file());
    }

    #[test]
    fn plans_mix_patient_and_impatient_callers() {
        let mut rng = SimRng::new(5);
        let plans: Vec<_> = (0..200).map(|i| call_plan(&mut rng, i)).collect();
        let short = plans.iter().filter(|p| p.hold_for_ms < 8_000).count();
        assert!((20..=70).contains(&short), "{short}");
        assert!(plans
            .iter()
            .all(|p| (2_000..=25_000).contains(&p.hold_for_ms)));
    }

    /// Phones against a real node: digest registration, refresh before expiry,
    /// a wrong password refused, unregister on stop, and the node's refusals
    /// reaching the caller.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn phones_register_refresh_and_get_refused_properly() {
        let args = DemoArgs {
            agents: 2,
            ..DemoArgs::default()
        };
        let dir = DemoDir::create(11).expect("temp dir");
        let mut config = demo_config(&args, dir.path()).expect("demo config");
        config.blacklist.callers = vec!["666".to_string()];
        let node = Node::start(config).await.expect("node starts");
        let cancel = CancellationToken::new();

        let mut good = AgentPhoneConfig::new("1001", "pw1001");
        good.registrar = Some(node.sip_addr());
        good.register_expires_s = 2;
        let good = AgentPhone::start(good, &cancel)
            .await
            .expect("phone starts");
        good.wait_registered(Duration::from_secs(5))
            .await
            .expect("right password registers");

        let mut bad = AgentPhoneConfig::new("1002", "wrong");
        bad.registrar = Some(node.sip_addr());
        let bad = AgentPhone::start(bad, &cancel).await.expect("phone starts");
        match bad.wait_registered(Duration::from_secs(5)).await {
            Err(crate::sim::SimError::RegisterRefused { status, .. }) => assert_eq!(status, 403),
            other => panic!("wrong password should be refused with 403, got {other:?}"),
        }
        assert_eq!(node.status()["agents_registered"], 1, "{}", node.status());

        // Granted 2 s, refreshed at 75%: a second REGISTER within ~3 s.
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        assert!(good.stats().registrations_ok >= 2, "{:?}", good.stats());
        assert!(good.stats().registered);

        let caller = Caller::start(CallerConfig::new(node.sip_addr()), &cancel)
            .await
            .expect("caller starts");
        let unknown = CallPlan {
            number: "999".to_string(),
            from_user: None,
            hold_for_ms: 3_000,
        };
        let outcome = caller.call(&unknown).await.expect("call returns");
        assert_eq!(outcome.final_status, Some(404), "{outcome:?}");
        let blacklisted = CallPlan {
            number: DEMO_NUMBER.to_string(),
            from_user: Some("666".to_string()),
            hold_for_ms: 3_000,
        };
        let outcome = caller.call(&blacklisted).await.expect("call returns");
        assert_eq!(outcome.final_status, Some(403), "{outcome:?}");

        good.stop().await;
        assert_eq!(node.status()["agents_registered"], 0, "{}", node.status());
        bad.stop().await;
        cancel.cancel();
        node.shutdown().await;
    }

    /// The whole demo for ~8 s with 3 agents: calls are answered by agent
    /// phones through the node, and the node writes CDRs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_answers_calls_and_writes_cdrs() {
        let args = DemoArgs {
            duration: Some(8),
            agents: 3,
            cps: 1.5,
            seed: 7,
            nodes: 1,
        };
        let report = run_with(&args, false).await.expect("demo runs");
        println!("{}", report.render());
        assert_eq!(report.agents_registered, 3, "{report:?}");
        assert!(report.calls_placed >= 3, "{report:?}");
        assert!(report.cdrs >= 3, "{report:?}");
        assert!(report.answered >= 1, "{report:?}");
        assert!(report.agent_calls_answered >= 1, "{report:?}");
        assert!(report.rtp_relayed > 0, "{report:?}");
        assert!(report.phone_rtp_received > 0, "{report:?}");
    }
}
