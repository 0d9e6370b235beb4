//! `carillon bench sip`: SIP call throughput, post-dial delay and memory per call of one
//! node process, measured with SIPp over loopback.
//!
//! It starts a node from a config (examples/load-node.toml by default) with its listen
//! addresses, RTP range and data dir replaced by free ones, registers the agents through
//! SIPp agent phones that answer and echo RTP, then offers SIPp calls at increasing rates.
//! It reports the highest rate at which every call succeeded (SIPp saw no failure and
//! every CDR says answered), post-dial delay percentiles (a CDR's offered_at_ms minus
//! arrived_at_ms) from those rates, and the node's RSS growth per concurrent call. Every
//! process it starts is killed before it returns (on error too), and the whole run is
//! bounded by `BENCH_DEADLINE_S`.
// A benchmark of a real process measures wall-clock time: reading the clock is its job.
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use carillon_media::Codec;
use carillon_ops::records::Cdr;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout, Instant};

use crate::ctl::http_get;

/// The whole benchmark stays under five minutes.
const BENCH_DEADLINE_S: u64 = 280;
/// Longest a single rate step may take (load, calls finishing, SIPp's own wind-down).
const STEP_TIMEOUT_S: u64 = 20;
const STARTUP_TIMEOUT_S: u64 = 20;
/// Registrations per second while logging the agents in.
const REGISTER_RATE_PER_S: u32 = 1000;
/// How often the node's calls and RSS are sampled during a step.
const SAMPLE_INTERVAL_MS: u64 = 200;
/// Ports the node's RTP range gets (2 per call leg, 2 legs per call: room for 2000 calls).
const RTP_RANGE_PORTS: u16 = 8000;
/// Where RTP ranges are looked for: below Linux's ephemeral ports (32768+).
const RTP_SEARCH_FIRST_PORT: u16 = 10_000;
const RTP_SEARCH_LAST_PORT: u16 = 32_000;

/// `carillon bench sip` options.
#[derive(clap::Args, Debug, Clone)]
pub struct SipBenchArgs {
    /// Node config to load; its listen addresses, RTP range and data dir are replaced.
    #[arg(long, default_value = "examples/load-node.toml")]
    pub config: PathBuf,
    /// The carillon binary to run the node with [default: target/release/carillon when
    /// built, else this executable].
    #[arg(long)]
    pub node_bin: Option<PathBuf>,
    /// Directory of the SIPp scenarios (register.xml, agent_uas.xml, caller.xml)
    /// [default: tests/sipp of this source tree].
    #[arg(long)]
    pub scenarios: Option<PathBuf>,
    /// Agents to register (at most those of the config's first [[agents]] range).
    #[arg(long, default_value_t = 2000)]
    pub agents: u32,
    /// Call rates to try, in calls per second, lowest first.
    #[arg(long, value_delimiter = ',', default_value = "50,100,200,300,400")]
    pub rates_cps: Vec<u32>,
    /// How long each caller stays after the node answers.
    #[arg(long, default_value_t = 2000)]
    pub call_ms: u32,
    /// Seconds of offered load per rate.
    #[arg(long, default_value_t = 8)]
    pub step_load_s: u32,
    /// SIPp agent phones to split the agents between (each echoes RTP on its own port).
    #[arg(long, default_value_t = 4)]
    pub agent_phones: u32,
    /// Keep the work directory (config, node log, SIPp output) and print its path.
    #[arg(long)]
    pub keep: bool,
    /// Run the node under test as one member of a three-node Raft cluster (two more
    /// `carillon run` processes on loopback, same site): every routing command of every
    /// call is committed through Raft over QUIC. The headline becomes
    /// `cluster_cps_zero_fail`.
    #[arg(long)]
    pub cluster: bool,
    /// Pin the node under test to this CPU and everything else (this bench, SIPp, the other
    /// cluster members) to the remaining CPUs, as if the node had a machine of its own:
    /// compares one node with a cluster member without the two extra members taking the
    /// node's CPU (they would run elsewhere in a deployment). Needs `taskset` (util-linux).
    #[arg(long)]
    pub node_cpu: Option<usize>,
}

/// Runs the benchmark and prints `bench: ...` lines; returns the highest rate that passed,
/// in calls per second.
pub async fn run(args: SipBenchArgs) -> anyhow::Result<u32> {
    if args.rates_cps.is_empty() || args.agent_phones == 0 || args.agents == 0 {
        bail!("--rates-cps, --agents and --agent-phones must be non-empty and non-zero");
    }
    require_sipp()?;
    if let Some(cpu) = args.node_cpu {
        pin_self_away_from(cpu).await?;
    }
    let work = std::env::temp_dir().join(format!("carillon-bench-sip-{}", std::process::id()));
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut procs = Procs::default();
    let result = bench(&args, &work, &mut procs).await;
    procs.kill_all().await;
    if args.keep || result.is_err() {
        eprintln!("bench: work directory kept in {}", work.display());
    } else {
        let _ = fs::remove_dir_all(&work);
    }
    result
}

async fn bench(args: &SipBenchArgs, work: &Path, procs: &mut Procs) -> anyhow::Result<u32> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(BENCH_DEADLINE_S);
    let (node, agents) = start_node(args, work, procs).await?;
    let registered = register_agents(&node, &agents, args.agent_phones, procs).await?;
    let rss_idle_kib = rss_kib(node.pid)?;
    eprintln!("bench: {registered} agents ready, node RSS {rss_idle_kib} KiB");

    let mut best_cps = 0;
    let mut post_dial_us: Vec<u64> = Vec::new();
    let mut peak = Peak::default();
    let mut cdrs_seen = cdrs(&node.http).await?.len();
    let caller_media_port = free_media_port()?;
    for &rate in &args.rates_cps {
        if Instant::now() + Duration::from_secs(STEP_TIMEOUT_S + 15) > deadline {
            eprintln!("bench: stopping before {rate} cps to stay within {BENCH_DEADLINE_S} s");
            break;
        }
        let step = run_step(&node, args, rate, caller_media_port, &mut peak, cdrs_seen).await?;
        cdrs_seen = step.cdrs_seen;
        if !step.zero_fail {
            break;
        }
        best_cps = rate;
        post_dial_us.extend(step.post_dial_us);
    }

    post_dial_us.sort_unstable();
    let rss_per_call_kib = peak
        .rss_kib
        .saturating_sub(rss_idle_kib)
        .checked_div(peak.active)
        .unwrap_or(0);
    // A cluster run's figures carry their own names: `bench cluster` prints a one-node
    // baseline's just before.
    let (headline, prefix) = if args.cluster {
        ("cluster_cps_zero_fail", "cluster_")
    } else {
        ("sip_cps_zero_fail", "")
    };
    println!("bench: {headline} {best_cps} calls/s");
    println!(
        "bench: {prefix}post_dial_p50_ms {:.2} ms",
        percentile(&post_dial_us, 50) as f64 / 1000.0
    );
    println!(
        "bench: {prefix}post_dial_p99_ms {:.2} ms",
        percentile(&post_dial_us, 99) as f64 / 1000.0
    );
    println!("bench: {prefix}rss_per_call_kib {rss_per_call_kib} KiB");
    eprintln!(
        "bench: (RSS {rss_idle_kib} KiB idle, {} KiB at {} concurrent calls; {} post-dial \
         samples; {:.0} s)",
        peak.rss_kib,
        peak.active,
        post_dial_us.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(best_cps)
}

/// The node under test and what the steps need to reach it.
struct Target {
    pid: u32,
    sip: SocketAddr,
    /// HOST:PORT of its HTTP API.
    http: String,
    /// The number callers dial (the config's first [[numbers]]).
    number: String,
    scenarios: PathBuf,
    work: PathBuf,
}

/// The agents to register: ids `first..first + count`, password `prefix<id>`.
struct AgentPlan {
    first: u32,
    count: u32,
    password_prefix: String,
}

/// Writes the node's config (free ports, own RTP range, data in `work`) and starts it.
async fn start_node(
    args: &SipBenchArgs,
    work: &Path,
    procs: &mut Procs,
) -> anyhow::Result<(Target, AgentPlan)> {
    let scenarios = scenarios_dir(args)?;
    let (config_text, config_path) = read_config(&args.config)?;
    let mut config: toml::Table = toml::from_str(&config_text)
        .with_context(|| format!("{} is not valid TOML", config_path.display()))?;
    let (first, count, password_prefix) = agent_range(&config, args.agents)?;
    let number = config
        .get("numbers")
        .and_then(|n| n.get(0))
        .and_then(|n| n.get("number"))
        .and_then(toml::Value::as_str)
        .context("the config has no [[numbers]] entry to call")?
        .to_string();
    let base = config_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let addrs = prepare_config(&mut config, &base, work)?;
    if args.cluster {
        start_cluster_peers(&mut config, &addrs, &node_bin(args)?, work, procs).await?;
    }
    let node_config = work.join("node.toml");
    fs::write(&node_config, toml::to_string(&config)?)?;
    write_tone(work)?;

    let bin = node_bin(args)?;
    eprintln!(
        "bench: node {} (sip {}, http {}), {count} agents, rates {:?} cps, {} ms calls",
        bin.display(),
        addrs.sip,
        addrs.http,
        args.rates_cps,
        args.call_ms
    );
    let node_log = fs::File::create(work.join("node.log"))?;
    let mut command = match args.node_cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let node = command
        .arg("run")
        .arg("--config")
        .arg(&node_config)
        // Per-call logging would measure the logger; keep the node to warnings.
        .env(
            "CARILLON_LOG",
            std::env::var("CARILLON_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(node_log.try_clone()?)
        .stderr(node_log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = node.id().context("the node exited at once")?;
    procs.children.push(node);
    let http = addrs.http.to_string();
    wait_healthy(&http, Duration::from_secs(STARTUP_TIMEOUT_S)).await?;
    if args.cluster {
        wait_ready(&http, Duration::from_secs(STARTUP_TIMEOUT_S)).await?;
    }
    let target = Target {
        pid,
        sip: addrs.sip,
        http,
        number,
        scenarios,
        work: work.to_path_buf(),
    };
    let plan = AgentPlan {
        first,
        count,
        password_prefix,
    };
    Ok((target, plan))
}

/// Starts `phones` agent phones (SIPp UAS with RTP echo), registers a slice of the agents
/// to each, and waits until the node has them all ready. Returns how many registered.
async fn register_agents(
    node: &Target,
    plan: &AgentPlan,
    phones: u32,
    procs: &mut Procs,
) -> anyhow::Result<u32> {
    let per_phone = plan.count.div_ceil(phones);
    let mut registered = 0;
    for phone in 0..phones {
        let first = plan.first + phone * per_phone;
        let count = per_phone.min(plan.count.saturating_sub(phone * per_phone));
        if count == 0 {
            break;
        }
        let sip_port = free_port()?;
        let media_port = free_media_port()?;
        let label = format!("phone{phone}");
        sipp(node, &label, None, sip_port)
            .args(["-mp", &media_port.to_string(), "-rtp_echo", "-aa"])
            .spawn_into(procs)?;
        let csv = node.work.join(format!("{label}.csv"));
        let mut text = String::from("SEQUENTIAL\n");
        for id in first..first + count {
            text.push_str(&format!("{id};{}{id};\n", plan.password_prefix));
        }
        fs::write(&csv, text)?;
        let count_text = count.to_string();
        let out = sipp(
            node,
            &format!("register{phone}"),
            Some(node.sip),
            free_port()?,
        )
        .scenario("register.xml")
        .args(["-inf", &csv.display().to_string()])
        .args(["-key", "contact_port", &sip_port.to_string()])
        .args(["-key", "expires", "3600"])
        .args(["-m", &count_text, "-l", &count_text])
        .args(["-r", &REGISTER_RATE_PER_S.to_string()])
        .run(Duration::from_secs(
            10 + u64::from(count / REGISTER_RATE_PER_S),
        ))
        .await?;
        if out.code != Some(0) {
            let last = first + count - 1;
            bail!("registering agents {first}-{last}: {}", out.describe());
        }
        registered += count;
    }
    let ready_by = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = status(&node.http).await?["acd"]["agents"]["ready"]
            .as_u64()
            .unwrap_or(0);
        if ready >= u64::from(registered) {
            return Ok(registered);
        }
        if Instant::now() > ready_by {
            bail!("only {ready} of {registered} agents ready 30 s after registering");
        }
        sleep(Duration::from_millis(100)).await;
    }
}

/// What one rate step found.
struct Step {
    /// SIPp saw every call succeed and every CDR of the step says answered.
    zero_fail: bool,
    /// Post-dial delays of the step's answered calls.
    post_dial_us: Vec<u64>,
    /// CDRs on the node after the step.
    cdrs_seen: usize,
}

/// Offers `rate` calls/s for `args.step_load_s` seconds, sampling the node's concurrent
/// calls and RSS into `peak`; then waits for the calls to end and reads their CDRs.
async fn run_step(
    node: &Target,
    args: &SipBenchArgs,
    rate: u32,
    media_port: u16,
    peak: &mut Peak,
    cdrs_before: usize,
) -> anyhow::Result<Step> {
    let calls = rate * args.step_load_s;
    let step_timeout_s =
        (u64::from(args.step_load_s) + u64::from(args.call_ms / 1000) + 8).min(STEP_TIMEOUT_S);
    let mut caller = sipp(
        node,
        &format!("callers{rate}"),
        Some(node.sip),
        free_port()?,
    )
    .scenario("caller.xml")
    .args(["-s", &node.number, "-key", "caller", "5550000"])
    .args([
        "-mp",
        &media_port.to_string(),
        "-d",
        &args.call_ms.to_string(),
    ])
    .args(["-r", &rate.to_string(), "-m", &calls.to_string()])
    .args(["-timeout", &format!("{step_timeout_s}s"), "-timeout_error"])
    .spawn_alone()?;
    let step_deadline = Instant::now() + Duration::from_secs(step_timeout_s + 5);
    let exit = loop {
        if let Some(status) = caller.child.try_wait()? {
            break status.code();
        }
        if Instant::now() > step_deadline {
            let _ = caller.child.kill().await;
            break None;
        }
        if let Ok(s) = status(&node.http).await {
            let active = s["calls"]["active"].as_u64().unwrap_or(0);
            if active > peak.active {
                if let Ok(rss_kib) = rss_kib(node.pid) {
                    *peak = Peak { active, rss_kib };
                }
            }
        }
        sleep(Duration::from_millis(SAMPLE_INTERVAL_MS)).await;
    };
    let outcome = caller.outcome(exit);

    // Let the node close the step's calls and write their CDRs.
    let settle_by = Instant::now() + Duration::from_secs(10);
    let mut all = cdrs(&node.http).await?;
    while Instant::now() < settle_by {
        let idle = status(&node.http).await?["calls"]["active"].as_u64() == Some(0);
        if idle && all.len() >= cdrs_before + calls as usize {
            break;
        }
        sleep(Duration::from_millis(250)).await;
        all = cdrs(&node.http).await?;
    }
    let step: Vec<&Cdr> = all.iter().skip(cdrs_before).collect();
    let answered = step.iter().filter(|c| c.disposition == "answered").count();
    let succeeded = outcome.cumulative("Successful call").unwrap_or(0);
    let failed = outcome.cumulative("Failed call").unwrap_or(0);
    let zero_fail = outcome.code == Some(0)
        && failed == 0
        && succeeded == u64::from(calls)
        && answered == calls as usize;
    eprintln!(
        "bench: {rate} cps: {succeeded}/{calls} calls succeeded, {failed} failed, \
         {answered}/{} CDRs answered, peak so far {} concurrent",
        step.len(),
        peak.active
    );
    if outcome.code != Some(0) {
        eprintln!("{}", outcome.describe());
    }
    if answered != step.len() {
        eprintln!("{}", describe_unanswered(&step));
    }
    Ok(Step {
        zero_fail,
        post_dial_us: step.iter().filter_map(|c| post_dial_delay_us(c)).collect(),
        cdrs_seen: all.len(),
    })
}

/// Why a step's unanswered calls failed: a line per (disposition, cause, hung up by) with
/// how many, whether an agent was ever rung, their waits, and when they arrived relative
/// to the step's first call (a burst at one moment points at a stall, a spread at load).
fn describe_unanswered(step: &[&Cdr]) -> String {
    use std::collections::BTreeMap;
    let first_arrival = step.iter().map(|c| c.arrived_at_ms).min().unwrap_or(0);
    let mut groups: BTreeMap<(String, String, String), Vec<&Cdr>> = BTreeMap::new();
    for c in step.iter().filter(|c| c.disposition != "answered") {
        let key = (
            c.disposition.clone(),
            c.cause.clone().unwrap_or_else(|| "-".into()),
            c.hangup_by.clone(),
        );
        groups.entry(key).or_default().push(c);
    }
    let mut out = String::from("bench: unanswered calls of this step:");
    for ((disposition, cause, by), cdrs) in groups {
        let offered = cdrs.iter().filter(|c| c.offered_at_ms.is_some()).count();
        let mut waits: Vec<u64> = cdrs.iter().map(|c| c.wait_ms).collect();
        waits.sort_unstable();
        let mut at_s: Vec<f64> = cdrs
            .iter()
            .map(|c| c.arrived_at_ms.saturating_sub(first_arrival) as f64 / 1000.0)
            .collect();
        at_s.sort_by(f64::total_cmp);
        let shown: Vec<String> = at_s.iter().take(12).map(|t| format!("{t:.1}")).collect();
        out.push_str(&format!(
            "\n  {} {disposition} (cause {cause}, hung up by {by}): {offered} offered to an \
             agent, {} offers in all; wait p50 {} ms, max {} ms; arrived at +s {}",
            cdrs.len(),
            cdrs.iter().map(|c| c.offers).sum::<u32>(),
            percentile(&waits, 50),
            waits.last().copied().unwrap_or(0),
            shown.join(" ")
        ));
    }
    out
}

/// The sample with the most concurrent calls seen, and the node's RSS then.
#[derive(Default)]
struct Peak {
    active: u64,
    rss_kib: u64,
}

/// Processes to kill when the benchmark ends, however it ends.
#[derive(Default)]
struct Procs {
    children: Vec<Child>,
}

impl Procs {
    async fn kill_all(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill().await;
        }
    }
}

/// Listen addresses given to the node.
struct Addrs {
    sip: SocketAddr,
    http: SocketAddr,
}

fn require_sipp() -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join("sipp").is_file()))
        .unwrap_or(false);
    if !found {
        bail!("sipp is not installed: run scripts/install-deps.sh (Debian package sip-tester)");
    }
    Ok(())
}

fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn scenarios_dir(args: &SipBenchArgs) -> anyhow::Result<PathBuf> {
    let candidates = match &args.scenarios {
        Some(dir) => vec![dir.clone()],
        None => vec![
            PathBuf::from("tests/sipp"),
            workspace_dir().join("tests/sipp"),
        ],
    };
    let dir = candidates
        .into_iter()
        .find(|d| d.join("caller.xml").is_file())
        .context("SIPp scenarios not found: run from the source tree or pass --scenarios DIR")?;
    // SIPp runs in the work directory: the path must not be relative.
    dir.canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))
}

/// Reads the config; a relative path that is not found here is tried from the source tree.
fn read_config(path: &Path) -> anyhow::Result<(String, PathBuf)> {
    let mut candidates = vec![path.to_path_buf()];
    if path.is_relative() {
        candidates.push(workspace_dir().join(path));
    }
    for p in candidates {
        if let Ok(text) = fs::read_to_string(&p) {
            return Ok((text, p.canonicalize().unwrap_or(p)));
        }
    }
    bail!("cannot read config {} (pass --config FILE)", path.display())
}

/// The first `[[agents]]` entry's id range, capped at `wanted`: (first id, count, password
/// prefix).
fn agent_range(config: &toml::Table, wanted: u32) -> anyhow::Result<(u32, u32, String)> {
    let entry = config
        .get("agents")
        .and_then(|a| a.get(0))
        .context("the config has no [[agents]]")?;
    let ids = entry
        .get("ids")
        .and_then(toml::Value::as_str)
        .context("the first [[agents]] entry needs an `ids = \"FIRST-LAST\"` range")?;
    let (first, last) = parse_id_range(ids)
        .with_context(|| format!("agent ids {ids:?} are not a numeric FIRST-LAST range"))?;
    let prefix = entry
        .get("password_prefix")
        .and_then(toml::Value::as_str)
        .context("the first [[agents]] entry needs a password_prefix")?;
    Ok((first, (last - first + 1).min(wanted), prefix.to_string()))
}

fn parse_id_range(ids: &str) -> Option<(u32, u32)> {
    let (a, b) = ids.split_once('-')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some((a, b))
}

/// Points the config at this run's ports, RTP range and data dir; makes relative paths
/// absolute (the config now lives in the work dir).
fn prepare_config(config: &mut toml::Table, base: &Path, work: &Path) -> anyhow::Result<Addrs> {
    for (_, section) in config.iter_mut() {
        if let toml::Value::Table(t) = section {
            if t.contains_key("listen") {
                t.insert(
                    "listen".into(),
                    format!("127.0.0.1:{}", free_port()?).into(),
                );
            }
        }
    }
    if let Some(toml::Value::Table(media)) = config.get_mut("media") {
        for (_, v) in media.iter_mut() {
            if let toml::Value::String(s) = v {
                if Path::new(s.as_str()).is_relative() && s.contains('/') {
                    *s = base.join(s.as_str()).display().to_string();
                }
            }
        }
    }
    let (rtp_min, rtp_max) = free_rtp_range(RTP_RANGE_PORTS)?;
    let set = |config: &mut toml::Table, section: &str, key: &str, value: toml::Value| {
        if let Some(toml::Value::Table(t)) = config.get_mut(section) {
            t.insert(key.into(), value);
        }
    };
    set(
        config,
        "node",
        "data_dir",
        work.join("data").display().to_string().into(),
    );
    set(config, "rtp", "ip", "127.0.0.1".into());
    set(config, "rtp", "port_min", i64::from(rtp_min).into());
    set(config, "rtp", "port_max", i64::from(rtp_max).into());
    let listen = |section: &str| -> anyhow::Result<SocketAddr> {
        config
            .get(section)
            .and_then(|s| s.get("listen"))
            .and_then(toml::Value::as_str)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("the config has no [{section}] listen address"))
    };
    Ok(Addrs {
        sip: listen("sip")?,
        http: listen("http")?,
    })
}

/// Makes `config` (the node under test) member n1 of a three-node cluster and starts
/// members n2 and n3 (same config, their own ports and data, no load of their own).
async fn start_cluster_peers(
    config: &mut toml::Table,
    addrs: &Addrs,
    bin: &Path,
    work: &Path,
    procs: &mut Procs,
) -> anyhow::Result<()> {
    let certs = work.join("certs");
    let names: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
    carillon_consensus::certs::generate(&certs, &names, true)?;
    let mut peers = vec![config.clone(), config.clone()];
    let mut plans = vec![(addrs.sip, addrs.http)];
    for (i, peer) in peers.iter_mut().enumerate() {
        let peer_work = work.join(format!("n{}", i + 2));
        fs::create_dir_all(&peer_work)?;
        let a = prepare_config(peer, &peer_work, &peer_work)?;
        plans.push((a.sip, a.http));
    }
    let raft: Vec<u16> = (0..3).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
    let members: Vec<toml::Value> = (0..3)
        .map(|i| {
            let mut m = toml::Table::new();
            m.insert("id".into(), format!("n{}", i + 1).into());
            m.insert("raft".into(), format!("127.0.0.1:{}", raft[i]).into());
            m.insert("sip".into(), plans[i].0.to_string().into());
            m.insert("http".into(), plans[i].1.to_string().into());
            m.insert("site".into(), "hq".into());
            toml::Value::Table(m)
        })
        .collect();
    let cluster_section = |i: usize| {
        let mut c = toml::Table::new();
        let n = format!("n{}", i + 1);
        c.insert("listen".into(), format!("127.0.0.1:{}", raft[i]).into());
        c.insert(
            "ca".into(),
            certs.join("ca.pem").display().to_string().into(),
        );
        c.insert(
            "cert".into(),
            certs.join(format!("{n}.pem")).display().to_string().into(),
        );
        c.insert(
            "key".into(),
            certs.join(format!("{n}.key")).display().to_string().into(),
        );
        c.insert("members".into(), toml::Value::Array(members.clone()));
        toml::Value::Table(c)
    };
    let set_node = |t: &mut toml::Table, i: usize| {
        if let Some(toml::Value::Table(node)) = t.get_mut("node") {
            node.insert("id".into(), format!("n{}", i + 1).into());
            node.insert("site".into(), "hq".into());
        }
        t.insert("cluster".into(), cluster_section(i));
    };
    set_node(config, 0);
    for (k, mut peer) in peers.into_iter().enumerate() {
        let i = k + 1;
        set_node(&mut peer, i);
        let dir = work.join(format!("n{}", i + 1));
        let path = dir.join("node.toml");
        fs::write(&path, toml::to_string(&peer)?)?;
        let log = fs::File::create(dir.join("node.log"))?;
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env(
                "CARILLON_LOG",
                std::env::var("CARILLON_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting cluster member n{}", i + 1))?;
        procs.children.push(child);
    }
    Ok(())
}

/// Moves every thread of this process (and so the SIPp and cluster-member processes it
/// starts) to the CPUs other than `cpu`.
async fn pin_self_away_from(cpu: usize) -> anyhow::Result<()> {
    let cpus = online_cpus();
    if cpu >= cpus || cpus < 2 {
        bail!(
            "--node-cpu {cpu}: this machine has CPUs 0 to {}; pinning needs at least two",
            cpus - 1
        );
    }
    let others: Vec<String> = (0..cpus)
        .filter(|c| *c != cpu)
        .map(|c| c.to_string())
        .collect();
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &others.join(",")])
        .arg(std::process::id().to_string())
        .stdout(Stdio::null())
        .status()
        .await
        .context("running taskset (util-linux) for --node-cpu")?;
    if !status.success() {
        bail!(
            "taskset could not pin the bench to CPUs {}: {status}",
            others.join(",")
        );
    }
    eprintln!(
        "bench: node under test on CPU {cpu}; the bench, SIPp and other members on CPUs {}",
        others.join(",")
    );
    Ok(())
}

/// The machine's online CPUs, whatever this process is pinned to (a second run in the same
/// process finds itself already pinned away from the node's CPU).
pub(crate) fn online_cpus() -> usize {
    let from_sys = fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|list| count_cpu_list(list.trim()));
    from_sys.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// Counts a kernel CPU list such as `0-3,6`; `None` if it does not parse.
fn count_cpu_list(list: &str) -> Option<usize> {
    let mut count = 0;
    for part in list.split(',') {
        count += match part.split_once('-') {
            Some((lo, hi)) => {
                hi.parse::<usize>()
                    .ok()?
                    .checked_sub(lo.parse::<usize>().ok()?)?
                    + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    Some(count)
}

/// Waits until the node reports a cluster leader on /ready.
async fn wait_ready(http: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if crate::ctl::http_get(http, "/ready").await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the cluster elected no leader within {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node_bin(args: &SipBenchArgs) -> anyhow::Result<PathBuf> {
    if let Some(bin) = &args.node_bin {
        return bin
            .canonicalize()
            .with_context(|| format!("--node-bin {}", bin.display()));
    }
    let release = workspace_dir().join("target/release/carillon");
    if release.is_file() {
        return Ok(release);
    }
    std::env::current_exe().context("cannot find this executable; pass --node-bin")
}

/// A loopback port free for both TCP and UDP a moment ago (another process could still
/// take it before it is bound).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port after 50 tries")
}

/// A SIPp media port: SIPp binds it and the port two above (for video).
fn free_media_port() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        if port < u16::MAX - 3
            && (port..port + 4).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
        {
            return Ok(port);
        }
    }
    bail!("no free run of 4 loopback UDP ports after 50 tries")
}

/// A run of `len` UDP ports, all free now, below the ephemeral range.
fn free_rtp_range(len: u16) -> anyhow::Result<(u16, u16)> {
    let mut first = RTP_SEARCH_FIRST_PORT;
    while first.saturating_add(len) <= RTP_SEARCH_LAST_PORT {
        match (first..first + len).find(|&p| UdpSocket::bind(("127.0.0.1", p)).is_err()) {
            None => return Ok((first, first + len - 1)),
            // Restart past the busy port, on an even number (RTP ports are even).
            Some(busy) => first = (busy + 2) & !1,
        }
    }
    bail!("no {len} free UDP ports in {RTP_SEARCH_FIRST_PORT}-{RTP_SEARCH_LAST_PORT}")
}

/// tone.pcmu: 1 s of 440 Hz in G.711 mu-law, which caller.xml streams in a loop.
fn write_tone(work: &Path) -> anyhow::Result<()> {
    let rate = f64::from(carillon_media::codec::CLOCK_RATE_HZ);
    let bytes: Vec<u8> = (0..carillon_media::codec::CLOCK_RATE_HZ)
        .map(|i| {
            let t = f64::from(i) / rate;
            // A quarter of full scale: audible, never clipping.
            Codec::Pcmu.encode((8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16)
        })
        .collect();
    fs::write(work.join("tone.pcmu"), bytes)?;
    Ok(())
}

async fn wait_healthy(http: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let attempt = timeout(Duration::from_secs(1), http_get(http, "/health")).await;
        if matches!(attempt, Ok(Ok(_))) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "node not healthy on http://{http}/health after {} s",
                limit.as_secs()
            );
        }
        sleep(Duration::from_millis(100)).await;
    }
}

async fn status(http: &str) -> anyhow::Result<Value> {
    let body = http_get(http, "/api/status").await?;
    serde_json::from_str(&body).context("/api/status is not JSON")
}

async fn cdrs(http: &str) -> anyhow::Result<Vec<Cdr>> {
    let body = http_get(http, "/api/cdrs").await?;
    serde_json::from_str(&body).context("/api/cdrs is not a JSON array of CDRs")
}

/// The node's resident set size, from /proc (Linux).
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (is the node alive?)"))?;
    parse_vm_rss_kib(&text).context("no VmRSS line in /proc/PID/status")
}

fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Microseconds from the caller's INVITE in to the agent's INVITE out, as the node
/// measured it with its monotonic clock.
fn post_dial_delay_us(cdr: &Cdr) -> Option<u64> {
    if cdr.disposition != "answered" {
        return None;
    }
    cdr.post_dial_us
}

/// Nearest-rank percentile of sorted samples; 0 when there are none.
fn percentile(sorted: &[u64], pct: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (pct * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// A SIPp command line (scenario in the scenarios dir, loopback, logs in the work dir).
struct SippCmd {
    label: String,
    work: PathBuf,
    scenarios: PathBuf,
    scenario: String,
    args: Vec<String>,
}

/// SIPp on `port` (an agent phone by default; see `SippCmd::scenario`), calling `target`
/// when given.
fn sipp(node: &Target, label: &str, target: Option<SocketAddr>, port: u16) -> SippCmd {
    let mut args: Vec<String> = target.map(|t| t.to_string()).into_iter().collect();
    let errors = node.work.join(format!("{label}.errors.log"));
    args.extend(
        [
            "-i",
            "127.0.0.1",
            "-mi",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-nostdin",
            "-trace_err",
            "-error_file",
            &errors.display().to_string(),
        ]
        .map(String::from),
    );
    SippCmd {
        label: label.to_string(),
        work: node.work.clone(),
        scenarios: node.scenarios.clone(),
        scenario: "agent_uas.xml".to_string(),
        args,
    }
}

impl SippCmd {
    fn scenario(mut self, name: &str) -> SippCmd {
        self.scenario = name.to_string();
        self
    }

    fn args<const N: usize>(mut self, more: [&str; N]) -> SippCmd {
        self.args.extend(more.map(String::from));
        self
    }

    fn command(&self) -> anyhow::Result<Command> {
        let out = fs::File::create(self.work.join(format!("{}.out", self.label)))?;
        let mut cmd = Command::new("sipp");
        cmd.arg("-sf")
            .arg(self.scenarios.join(&self.scenario))
            .args(&self.args)
            .current_dir(&self.work)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// Starts SIPp in the background, owned by `procs`.
    fn spawn_into(self, procs: &mut Procs) -> anyhow::Result<()> {
        let child = self.command()?.spawn().context("starting sipp")?;
        procs.children.push(child);
        Ok(())
    }

    /// Starts SIPp; the returned handle kills it when dropped.
    fn spawn_alone(self) -> anyhow::Result<RunningSipp> {
        let child = self.command()?.spawn().context("starting sipp")?;
        Ok(RunningSipp { child, cmd: self })
    }

    /// Runs SIPp to completion, killing it after `limit`.
    async fn run(self, limit: Duration) -> anyhow::Result<SippOutcome> {
        let mut running = self.spawn_alone()?;
        let code = match timeout(limit, running.child.wait()).await {
            Ok(status) => status?.code(),
            Err(_) => {
                let _ = running.child.kill().await;
                None
            }
        };
        Ok(running.outcome(code))
    }
}

struct RunningSipp {
    child: Child,
    cmd: SippCmd,
}

impl RunningSipp {
    fn outcome(&self, code: Option<i32>) -> SippOutcome {
        let read = |suffix: &str| {
            fs::read_to_string(self.cmd.work.join(format!("{}.{suffix}", self.cmd.label)))
                .unwrap_or_default()
        };
        SippOutcome {
            label: self.cmd.label.clone(),
            code,
            output: read("out"),
            errors: read("errors.log"),
        }
    }
}

struct SippOutcome {
    label: String,
    /// 0: every call succeeded; None: killed or signalled.
    code: Option<i32>,
    output: String,
    errors: String,
}

impl SippOutcome {
    /// A cumulative counter from SIPp's final screen, e.g. "Successful call".
    fn cumulative(&self, counter: &str) -> Option<u64> {
        sipp_cumulative(&self.output, counter)
    }

    fn describe(&self) -> String {
        let tail = |t: &str| {
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        format!(
            "sipp {} exit {:?}\n{}\n{}",
            self.label,
            self.code,
            tail(&self.output),
            tail(&self.errors)
        )
    }
}

/// "  Successful call   |   12   |   200   ": the last column is the cumulative count.
fn sipp_cumulative(screen: &str, counter: &str) -> Option<u64> {
    let line = screen
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with(counter))?;
    line.split('|').nth(2)?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 50), 50);
        assert_eq!(percentile(&samples, 99), 99);
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[], 50), 0);
    }

    #[test]
    fn counts_kernel_cpu_lists() {
        assert_eq!(count_cpu_list("0-1"), Some(2));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
    }

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tcarillon\nVmPeak:\t  99 kB\nVmRSS:\t   12345 kB\nThreads: 3\n";
        assert_eq!(parse_vm_rss_kib(status), Some(12345));
        assert_eq!(parse_vm_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn reads_sipp_counters() {
        let screen = "  Successful call        |        3                  |      200                 \n\
                      \x20 Failed call            |        0                  |        1                 \n";
        assert_eq!(sipp_cumulative(screen, "Successful call"), Some(200));
        assert_eq!(sipp_cumulative(screen, "Failed call"), Some(1));
        assert_eq!(sipp_cumulative(screen, "Retransmissions"), None);
    }

    #[test]
    fn parses_agent_ranges() {
        assert_eq!(parse_id_range("10000-11999"), Some((10000, 11999)));
        assert_eq!(parse_id_range("5-4"), None);
        assert_eq!(parse_id_range("abc"), None);
    }
}
