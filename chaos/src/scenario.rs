//! One scenario, start to finish, on a fresh cluster: agents registered at n1 and n3 (n2
//! has none, so its calls cross nodes), SIPp callers at every node, one fault injected
//! while calls are up, then healing (processes restarted or resumed, the network healed,
//! agents registered again where their node restarted), a wave of calls that routing must
//! answer, replica samples, and every node's records gathered into a [`History`].
// The runner drives real processes in wall-clock time; every wait has a deadline.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::cluster::Cluster;
use crate::faults::{Faults, NodeNum};
use crate::history::{FaultEvent, History, Placed, Record};
use crate::http;
use crate::invariants;
use crate::report::{CallFigures, ScenarioReport};
use crate::rng::XorShift;
use crate::sipp::{CallerSpec, Sipp, SippOutcome, SippProc};

/// Agents whose phones register at n1 and at n3.
const AGENTS_N1: [u32; 6] = [1001, 1002, 1003, 1004, 1005, 1006];
const AGENTS_N3: [u32; 6] = [1007, 1008, 1009, 1010, 1011, 1012];
/// How long SIGSTOP lasts in `pause`.
const PAUSE_MS: u64 = 3_000;
/// Load runs this long before the fault.
const LOAD_BEFORE_FAULT_MS: u64 = 3_000;
/// The file-size limit of the disk-full node: far below any of its files.
const DISK_FULL_FSIZE_BYTES: u64 = 4096;
/// Calls per node in the check wave after healing, and how long each waits for an agent
/// (a caller still waiting after this hangs up and the call counts as not resumed).
const HEAL_CALLS_PER_NODE: u32 = 2;
const HEAL_HOLD_MS: u64 = 5_000;
/// Bounds on the healing phase's waits.
const HEAL_LEADER_TIMEOUT_MS: u64 = 30_000;
const AGENTS_READY_TIMEOUT_MS: u64 = 20_000;
const REPLICA_SAMPLING_MS: u64 = 10_000;
/// How long the last hang-ups get to reach the routing state.
const OPEN_CALLS_SETTLE_MS: u64 = 5_000;
/// Common indexes to collect before replica sampling stops early.
const REPLICA_INDEXES_WANTED: usize = 5;

/// The scenarios, in the order `all` runs them.
pub const NAMES: [&str; 9] = [
    "leader-kill",
    "follower-kill",
    "pause",
    "minority-loss",
    "restart-all",
    "site-cut",
    "loss20",
    "delay200",
    "disk-full",
];

/// The knobs of one run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub exe: PathBuf,
    pub calls_per_node: u32,
    pub rate_cps: u32,
    pub hold_ms: u64,
    pub fault_ms: u64,
    pub seed: u64,
    pub keep_dirs: bool,
}

/// Runs scenario `name`; never panics, an error becomes a failed report.
pub fn run(name: &str, s: &Settings, rt: tokio::runtime::Handle) -> ScenarioReport {
    let started = Instant::now();
    let mut report = match run_inner(name, s, rt) {
        Ok(r) => r,
        Err(e) => ScenarioReport {
            name: name.to_string(),
            passed: false,
            error: Some(format!("{e:#}")),
            ..ScenarioReport::default()
        },
    };
    report.duration_ms = started.elapsed().as_millis() as u64;
    report
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the fault phase measured.
#[derive(Default)]
struct Measured {
    failover_ms: Option<u64>,
    progress_ms: Option<u64>,
    /// Members restarted during healing: their agents register again.
    restarted: Vec<usize>,
}

fn run_inner(
    name: &str,
    s: &Settings,
    rt: tokio::runtime::Handle,
) -> anyhow::Result<ScenarioReport> {
    if !NAMES.contains(&name) {
        bail!(
            "unknown scenario `{name}`: one of {} or all",
            NAMES.join(", ")
        );
    }
    let mut rng = XorShift::new(s.seed);
    tracing::info!(scenario = name, "starting a fresh cluster");
    let mut cluster = Cluster::start(&s.exe, rt, s.seed, s.keep_dirs)?;
    let dir = cluster.dir.clone();
    let mut history = History::default();

    // Agent phones at n1 and n3; n2 holds none.
    let mut phones = Vec::new();
    let mut contact = BTreeMap::new();
    for (i, agents) in [(0usize, &AGENTS_N1[..]), (2usize, &AGENTS_N3[..])] {
        let mp = cluster.members[i].ports.sipp_media_port()?;
        let (phone, port) = Sipp::phone(&dir, &format!("phones-n{}", i + 1), mp)?;
        phones.push(phone);
        contact.insert(i, (port, agents));
        register(&cluster, i, agents, port, "register")?;
    }
    let total_agents = (AGENTS_N1.len() + AGENTS_N3.len()) as u64;
    wait_agents_ready(&cluster, total_agents)?;

    // Load at every node.
    let mut callers = Vec::new();
    for i in 0..3 {
        callers.push(start_callers(
            &mut cluster,
            i,
            1,
            s.calls_per_node,
            s.rate_cps,
            s.hold_ms,
        )?);
    }
    thread::sleep(Duration::from_millis(LOAD_BEFORE_FAULT_MS));

    let fault_from = now_ms();
    let measured = inject(name, s, &mut cluster, &mut history, &mut rng)?;
    let fault_to = now_ms();
    history.fault_window_ms = Some((fault_from, fault_to));

    for (i, wave, c) in callers {
        let timeout = caller_timeout(s.calls_per_node, s.rate_cps, s.hold_ms) + 10;
        let outcome = c.wait(Duration::from_secs(timeout));
        history
            .placed
            .push(placed(i, wave, s.calls_per_node, &outcome, false));
    }

    // Healing: one leader for all, agents back, then calls routing must answer.
    cluster.wait_leader_among(
        &[0, 1, 2],
        None,
        Duration::from_millis(HEAL_LEADER_TIMEOUT_MS),
    )?;
    for i in &measured.restarted {
        if let Some((port, agents)) = contact.get(i) {
            register(
                &cluster,
                *i,
                agents,
                *port,
                &format!("reregister-{}", now_ms()),
            )?;
        }
    }
    let mut notes = Vec::new();
    if let Err(e) = wait_agents_ready(&cluster, total_agents) {
        tracing::warn!(error = %e, "not every agent is ready again after healing");
        notes.push(format!("after healing: {e:#}"));
    }
    let mut heal_wave = Vec::new();
    for i in 0..3 {
        heal_wave.push(start_callers(
            &mut cluster,
            i,
            9,
            HEAL_CALLS_PER_NODE,
            2,
            HEAL_HOLD_MS,
        )?);
    }
    for (i, wave, c) in heal_wave {
        let timeout = caller_timeout(HEAL_CALLS_PER_NODE, 2, HEAL_HOLD_MS) + 10;
        let outcome = c.wait(Duration::from_secs(timeout));
        history
            .placed
            .push(placed(i, wave, HEAL_CALLS_PER_NODE, &outcome, true));
    }
    drop(phones);

    history.open_calls_after = open_calls(&cluster);
    history.replica_samples = sample_replicas(&cluster);
    history.records = gather_records(&cluster)?;
    let verdicts = invariants::check_all(&history);
    let calls = figures(&history);
    Ok(ScenarioReport {
        name: name.to_string(),
        passed: verdicts.iter().all(|v| v.passed),
        error: None,
        duration_ms: 0,
        faults: history.faults.clone(),
        faulted_nodes: history.faulted.iter().map(|n| format!("n{n}")).collect(),
        calls,
        invariants: verdicts,
        failover_ms: measured.failover_ms,
        progress_ms: measured.progress_ms,
        proxy: cluster.proxy_counts(),
        run_dir: s.keep_dirs.then(|| dir.display().to_string()),
        notes,
    })
}

/// Injects `name`'s fault, holds it, heals it; measures failover where there is one.
fn inject(
    name: &str,
    s: &Settings,
    cluster: &mut Cluster,
    h: &mut History,
    rng: &mut XorShift,
) -> anyhow::Result<Measured> {
    let leader = cluster.wait_leader(Duration::from_secs(10))?;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let follower = followers[rng.below(followers.len() as u64) as usize];
    let nums = cluster.nums();
    let mut m = Measured::default();
    let note = |h: &mut History, what: String| {
        tracing::info!(fault = %what);
        h.faults.push(FaultEvent {
            at_ms: now_ms(),
            what,
        });
    };
    let answered_before = answered_total(cluster);
    let t0 = Instant::now();
    match name {
        "leader-kill" | "follower-kill" | "disk-full" => {
            let target = if name == "leader-kill" {
                leader
            } else {
                follower
            };
            let n = nums[target];
            h.faulted.insert(n);
            if name == "disk-full" {
                cluster
                    .proc_mut(target)?
                    .limit_file_size(DISK_FULL_FSIZE_BYTES)?;
                note(
                    h,
                    format!(
                        "disk full on n{n}: writes past {DISK_FULL_FSIZE_BYTES} bytes fail (EFBIG)"
                    ),
                );
            } else {
                cluster.kill(target);
                note(
                    h,
                    format!(
                        "SIGKILL n{n} ({})",
                        if target == leader {
                            "leader"
                        } else {
                            "follower"
                        }
                    ),
                );
            }
            let survivors: Vec<usize> = (0..3).filter(|i| *i != target).collect();
            let old = (target == leader).then_some(n);
            (m.failover_ms, m.progress_ms) =
                measure(cluster, &survivors, old, answered_before, t0, s.fault_ms);
            hold_until(t0, s.fault_ms);
            note(h, format!("restart n{n}"));
            cluster.restart(target)?;
            m.restarted.push(target);
        }
        "pause" => {
            let n = nums[leader];
            h.faulted.insert(n);
            cluster.proc_mut(leader)?.pause()?;
            note(h, format!("SIGSTOP n{n} (leader) for {PAUSE_MS} ms"));
            (m.failover_ms, m.progress_ms) =
                measure(cluster, &followers, Some(n), answered_before, t0, PAUSE_MS);
            hold_until(t0, PAUSE_MS);
            cluster.proc_mut(leader)?.resume()?;
            note(h, format!("SIGCONT n{n}"));
        }
        "minority-loss" => {
            let n = nums[leader];
            h.faulted.insert(n);
            cluster.switch.update(|f| f.isolate(n, &nums));
            note(
                h,
                format!(
                    "leader n{n} cut off from the majority for {} ms",
                    s.fault_ms
                ),
            );
            (m.failover_ms, m.progress_ms) = measure(
                cluster,
                &followers,
                Some(n),
                answered_before,
                t0,
                s.fault_ms,
            );
            hold_until(t0, s.fault_ms);
            cluster.switch.heal();
            note(h, "network healed".into());
        }
        "site-cut" => {
            cluster.switch.update(|f| f.partition(&[3], &[1, 2]));
            h.faulted.insert(3);
            note(
                h,
                format!(
                    "site branch (n3) cut off from hq (n1, n2) for {} ms",
                    s.fault_ms
                ),
            );
            let old = (leader == 2).then_some(3);
            (m.failover_ms, m.progress_ms) =
                measure(cluster, &[0, 1], old, answered_before, t0, s.fault_ms);
            hold_until(t0, s.fault_ms);
            cluster.switch.heal();
            note(h, "network healed".into());
        }
        "loss20" | "delay200" => {
            let faults = if name == "loss20" {
                Faults {
                    drop_pct: 20.0,
                    ..Faults::default()
                }
            } else {
                Faults {
                    delay_ms: 200,
                    jitter_ms: 20,
                    ..Faults::default()
                }
            };
            let what = if name == "loss20" {
                "20% datagram loss between all nodes"
            } else {
                "200 ms (+0-20 ms jitter) added between all nodes"
            };
            cluster.switch.set(faults);
            note(h, format!("{what} for {} ms", s.fault_ms));
            (_, m.progress_ms) =
                measure(cluster, &[0, 1, 2], None, answered_before, t0, s.fault_ms);
            hold_until(t0, s.fault_ms);
            cluster.switch.heal();
            note(h, "network healed".into());
        }
        "restart-all" => {
            for (i, n) in nums.iter().enumerate() {
                cluster.kill(i);
                h.faulted.insert(*n);
            }
            note(h, "SIGKILL n1, n2, n3".into());
            thread::sleep(Duration::from_millis(1_000));
            for i in 0..3 {
                cluster.restart(i)?;
                m.restarted.push(i);
            }
            note(h, "restart n1, n2, n3".into());
            m.failover_ms = cluster
                .wait_leader_among(
                    &[0, 1, 2],
                    None,
                    Duration::from_millis(HEAL_LEADER_TIMEOUT_MS),
                )
                .ok()
                .map(|_| t0.elapsed().as_millis() as u64);
        }
        other => bail!("unknown scenario `{other}`"),
    }
    Ok(m)
}

fn hold_until(t0: Instant, ms: u64) {
    let end = t0 + Duration::from_millis(ms);
    let now = Instant::now();
    if end > now {
        thread::sleep(end - now);
    }
}

/// Polls the members in `who` until `limit_ms` after `t0`: milliseconds until they all
/// name one leader other than `old` (when `old` is given), and until one of them counts
/// more answered calls than `before`.
fn measure(
    cluster: &Cluster,
    who: &[usize],
    old: Option<NodeNum>,
    before: u64,
    t0: Instant,
    limit_ms: u64,
) -> (Option<u64>, Option<u64>) {
    let deadline = t0 + Duration::from_millis(limit_ms);
    let (mut leader_ms, mut progress_ms) = (None, None);
    while Instant::now() < deadline
        && (progress_ms.is_none() || (old.is_some() && leader_ms.is_none()))
    {
        if let (Some(old), None) = (old, leader_ms) {
            let seen: Vec<Option<NodeNum>> = who.iter().map(|i| cluster.leader_seen(*i)).collect();
            if let Some(Some(first)) = seen.first() {
                if *first != old && seen.iter().all(|l| *l == Some(*first)) {
                    leader_ms = Some(t0.elapsed().as_millis() as u64);
                }
            }
        }
        if progress_ms.is_none() {
            let now = who
                .iter()
                .filter_map(|i| cluster.status(*i))
                .filter_map(|st| st["acd"]["totals"]["answered"].as_u64())
                .max()
                .unwrap_or(0);
            if now > before {
                progress_ms = Some(t0.elapsed().as_millis() as u64);
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    (leader_ms, progress_ms)
}

fn answered_total(cluster: &Cluster) -> u64 {
    cluster
        .live()
        .iter()
        .filter_map(|i| cluster.status(*i))
        .filter_map(|st| st["acd"]["totals"]["answered"].as_u64())
        .max()
        .unwrap_or(0)
}

fn register(
    cluster: &Cluster,
    i: usize,
    agents: &[u32],
    port: u16,
    label: &str,
) -> anyhow::Result<()> {
    let out = Sipp::register(
        &cluster.dir,
        &format!("{label}-n{}", i + 1),
        cluster.members[i].sip,
        agents,
        port,
    )?;
    if out.code != Some(0) {
        bail!(
            "registering agents at n{} failed: {}",
            i + 1,
            tail(&out.output)
        );
    }
    Ok(())
}

/// Waits until every member counts `n` agents ready (routing state is replicated).
fn wait_agents_ready(cluster: &Cluster, n: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_millis(AGENTS_READY_TIMEOUT_MS);
    loop {
        let counts: Vec<Option<u64>> = (0..3)
            .map(|i| {
                cluster
                    .status(i)
                    .and_then(|st| st["acd"]["agents"]["ready"].as_u64())
            })
            .collect();
        if counts.iter().all(|c| *c == Some(n)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            // What the agents are doing instead, and the queues, as n1 sees them.
            let seen = cluster
                .status(0)
                .map(|st| {
                    format!(
                        "agents {} queues {}",
                        st["acd"]["agents"], st["acd"]["queues"]
                    )
                })
                .unwrap_or_default();
            bail!("agents ready per node {counts:?}, wanted {n} everywhere; n1: {seen}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn caller_timeout(calls: u32, rate_cps: u32, hold_ms: u64) -> u64 {
    u64::from(calls / rate_cps.max(1)) + hold_ms / 1000 + 60
}

/// Callers at member `i`, wave `wave`: caller numbers `9<node><wave><k>`.
fn start_callers(
    cluster: &mut Cluster,
    i: usize,
    wave: u32,
    calls: u32,
    rate_cps: u32,
    hold_ms: u64,
) -> anyhow::Result<(usize, u32, SippProc)> {
    let mp = cluster.members[i].ports.sipp_media_port()?;
    let prefix = format!("9{}{wave}", i + 1);
    let spec = CallerSpec {
        target: cluster.members[i].sip,
        media_port: mp,
        caller_prefix: prefix,
        calls,
        rate_cps,
        hold_ms,
        timeout_s: caller_timeout(calls, rate_cps, hold_ms),
    };
    let p = Sipp::callers(&cluster.dir, &format!("callers-n{}-w{wave}", i + 1), &spec)?;
    Ok((i, wave, p))
}

fn placed(i: usize, wave: u32, calls: u32, o: &SippOutcome, after_heal: bool) -> Placed {
    let ok = o.cumulative("Successful call").unwrap_or(0);
    let failed = o.cumulative("Failed call").unwrap_or(0);
    // SIPp places exactly -m calls when it runs to the end; if it was cut short, what it
    // counted.
    let count = if o.code.is_some() {
        u64::from(calls)
    } else {
        (ok + failed).min(u64::from(calls))
    };
    Placed {
        node: i as NodeNum + 1,
        prefix: format!("9{}{wave}", i + 1),
        count,
        sipp_ok: ok,
        sipp_failed: failed,
        after_heal,
    }
}

/// Calls still in the routing state after every caller is done, as the leader sees
/// them; waits a little for the last hang-ups to commit.
fn open_calls(cluster: &Cluster) -> Option<(u64, String)> {
    let deadline = Instant::now() + Duration::from_millis(OPEN_CALLS_SETTLE_MS);
    let mut last = None;
    while Instant::now() < deadline {
        let leader = cluster.wait_leader(Duration::from_secs(5)).ok()?;
        if let Some(st) = cluster.status(leader) {
            let queues = &st["acd"]["queues"];
            let open: u64 = queues
                .as_object()
                .map(|qs| {
                    qs.values()
                        .map(|q| {
                            ["waiting", "offering", "connected"]
                                .iter()
                                .filter_map(|k| q[*k].as_u64())
                                .sum::<u64>()
                        })
                        .sum()
                })
                .unwrap_or(0);
            last = Some((open, queues.to_string()));
            if open == 0 {
                break;
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    last
}

/// Samples each member's ACD summary at a stable `last_applied`, until enough indexes are
/// common to all or the time is up.
fn sample_replicas(cluster: &Cluster) -> BTreeMap<NodeNum, BTreeMap<u64, Value>> {
    let mut samples: BTreeMap<NodeNum, BTreeMap<u64, Value>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_millis(REPLICA_SAMPLING_MS);
    while Instant::now() < deadline {
        for i in 0..3 {
            let applied = |c: Option<Value>| c.and_then(|c| c["last_applied"].as_u64());
            let before = applied(cluster.cluster_status(i));
            let acd = cluster.status(i).map(|st| st["acd"].clone());
            let after = applied(cluster.cluster_status(i));
            if let (Some(b), Some(acd), Some(a)) = (before, acd, after) {
                if a == b {
                    samples.entry(i as NodeNum + 1).or_default().insert(a, acd);
                }
            }
        }
        let common = samples
            .get(&1)
            .map(|first| {
                first
                    .keys()
                    .filter(|k| samples.values().all(|m| m.contains_key(k)))
                    .count()
            })
            .unwrap_or(0);
        if samples.len() == 3 && common >= REPLICA_INDEXES_WANTED {
            break;
        }
    }
    samples
}

/// Every member's records, identical copies (read from two nodes) kept once.
fn gather_records(cluster: &Cluster) -> anyhow::Result<Vec<Record>> {
    let mut out: Vec<Record> = Vec::new();
    for (i, m) in cluster.members.iter().enumerate() {
        let list = http::get_json(m.http, "/api/cdrs")
            .with_context(|| format!("reading n{}'s call records", i + 1))?;
        let Value::Array(list) = list else {
            bail!("n{}: /api/cdrs is not a JSON array", i + 1);
        };
        for v in &list {
            let Some(r) = Record::from_json(v, m.num) else {
                bail!("n{}: a call record lacks call_id or times: {v}", i + 1);
            };
            let same = |o: &Record| {
                o.call_id == r.call_id
                    && o.node == r.node
                    && o.ended_at_ms == r.ended_at_ms
                    && o.disposition == r.disposition
            };
            if !out.iter().any(same) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

fn figures(h: &History) -> CallFigures {
    let mut f = CallFigures::default();
    let by_caller = h.by_caller();
    for p in &h.placed {
        f.placed += p.count;
        f.sipp_failed += p.sipp_failed;
        for caller in p.callers() {
            if !by_caller.contains_key(caller.as_str()) {
                f.no_record += 1;
                let cause = if h.faulted.contains(&p.node) {
                    format!("owned by faulted n{}: no record", p.node)
                } else {
                    format!("no record at healthy n{}", p.node)
                };
                *f.lost_by_cause.entry(cause).or_default() += 1;
            }
        }
    }
    for r in &h.records {
        match r.disposition.as_str() {
            "answered" => f.answered += 1,
            "abandoned" => f.abandoned += 1,
            "lost" => {
                f.lost += 1;
                let cause = if r.cause.is_empty() {
                    "(no cause)"
                } else {
                    &r.cause
                };
                *f.lost_by_cause
                    .entry(format!("{}: {cause}", r.node))
                    .or_default() += 1;
            }
            _ => {}
        }
    }
    f
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
