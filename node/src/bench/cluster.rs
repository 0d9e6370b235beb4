//! `carillon bench cluster`: the replicated routing log measured on three members over
//! real QUIC with mutual TLS and fsync'd redb logs, on loopback.
//!
//! The three members run in this process (each its own Raft, stores and QUIC endpoint,
//! started by the node's own `cluster` module), so the bench can stop a leader and time
//! the next committed offer; the leader is stopped abruptly (Raft and endpoint torn down
//! with no hand-over), which its peers see exactly as a dead process: silence. Then the
//! SIP benchmark runs twice: against one node alone (the baseline, `sip_cps_zero_fail`),
//! then against a member of a three-process cluster (`cluster_cps_zero_fail`), by default
//! with the node under test on a CPU of its own both times.
#![allow(clippy::disallowed_methods)] // A benchmark's wall clock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use carillon_consensus::state_machine::AppliedEntry;
use carillon_routing::{Arrival, Command, Event, QueueConfig};
use clap::Args;
use tokio::sync::{mpsc, oneshot};

use crate::bench::sip::SipBenchArgs;
use crate::clock::now_ms;
use crate::cluster::Cluster;
use crate::config::Config;

#[derive(Args, Debug, Clone)]
pub struct ClusterBenchArgs {
    /// Routing commands to commit for `raft_commits_per_sec`.
    #[arg(long, default_value_t = 60_000)]
    pub commits: usize,
    /// Proposals in flight at once (openraft batches them into appends).
    #[arg(long, default_value_t = 512)]
    pub writers: usize,
    /// Enqueue-to-offer samples.
    #[arg(long, default_value_t = 2_000)]
    pub samples: usize,
    /// Leader-kill trials for `failover_p99_ms`.
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// Skip the SIP part (`cluster_cps_zero_fail`).
    #[arg(long)]
    pub no_sip: bool,
    /// Run the SIP part without pinning the node under test to a CPU of its own (the two
    /// other members and the load then share its CPUs).
    #[arg(long)]
    pub sip_unpinned: bool,
    /// Options for the SIP part (as `carillon bench sip`).
    #[command(flatten)]
    pub sip: SipBenchArgs,
}

/// Offers the bench waits for: call id -> who to tell.
type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

struct Member {
    cluster: Cluster,
    drain: tokio::task::JoinHandle<()>,
}

pub async fn run(args: ClusterBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.commits > 0 && args.writers > 0 && args.samples > 0,
        "--commits, --writers and --samples must be at least 1"
    );
    anyhow::ensure!(
        args.commits <= 2_000_000 && args.trials <= 200 && args.samples <= 100_000,
        "keep runs bounded: --commits <= 2000000, --samples <= 100000, --trials <= 200"
    );
    let (p50, p99) = tokio::task::spawn_blocking(|| timer_lag_ms(Duration::from_secs(2))).await?;
    eprintln!(
        "(this machine before the run: a thread sleeping 10 ms at a time woke late by p50 \
         {p50:.2} ms, p99 {p99:.2} ms; when the p99 is more than a few ms, other tenants hold \
         the CPUs and every latency below carries that noise)"
    );
    let work = std::env::temp_dir().join(format!("carillon-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = in_process(&args, &work).await;
    let _ = std::fs::remove_dir_all(&work);
    result?;
    if !args.no_sip {
        let mut sip = args.sip.clone();
        if sip.node_cpu.is_none() && !args.sip_unpinned && crate::bench::sip::online_cpus() >= 2 {
            // In a deployment each member has a machine of its own: give the node under
            // test a CPU of its own, as the one-node baseline gets, so the two other
            // members' work does not come out of its share.
            sip.node_cpu = Some(0);
        }
        // The bar is "no lower than one node alone": measure one node alone first, with
        // the same settings, so both figures come from the same machine and minute.
        eprintln!("bench: one node alone first (the baseline), then a cluster member");
        let single = crate::bench::sip::run(SipBenchArgs {
            cluster: false,
            ..sip.clone()
        })
        .await?;
        sip.cluster = true;
        let cluster = crate::bench::sip::run(sip).await?;
        let verdict = if single == 0 {
            "inconclusive: one node alone passed no step (see its unanswered calls above)"
        } else if cluster >= single {
            "no lower than one node alone"
        } else {
            "LOWER than one node alone"
        };
        eprintln!(
            "bench: a cluster member took {cluster} calls/s with zero failures, one node alone \
             {single}: {verdict}"
        );
    }
    Ok(())
}

async fn in_process(args: &ClusterBenchArgs, work: &Path) -> anyhow::Result<()> {
    let names: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
    carillon_consensus::certs::generate(&work.join("certs"), &names, true)?;
    let configs = member_configs(work)?;
    let waiters: Waiters = Arc::default();
    // Runtime stalls, lined up with the slow samples and trials below.
    let stalls: Stalls = Arc::default();
    let sink = Arc::clone(&stalls);
    let watchdog = tokio::spawn(crate::watchdog::run(move |late| {
        if late >= STALL_MIN {
            lock_stalls(&sink).push((Instant::now(), late));
        }
    }));
    let mut members = Vec::new();
    for c in &configs {
        members.push(Some(start_member(c, &waiters).await?));
    }
    let leader = wait_leader(&members, Duration::from_secs(15)).await?;
    let any = |m: &Vec<Option<Member>>| -> anyhow::Result<Cluster> {
        m.iter()
            .flatten()
            .next()
            .map(|m| m.cluster.clone())
            .context("no member running")
    };
    // Cluster handles keep their member's stores open: hold them only within a phase, so a
    // stopped member's files are free for its restart.
    let c = any(&members)?;
    let queue = QueueConfig {
        name: "bench".into(),
        skill: "bench".into(),
        wrapup_ms: 0,
        ring_timeout_ms: 60_000,
        ..QueueConfig::default()
    };
    propose(
        &c,
        Command::ConfigureQueue {
            queue,
            at: now_ms(),
        },
    )
    .await?;
    for n in 1..=3u64 {
        propose(
            &c,
            Command::AgentLogin {
                agent: format!("agent{n}"),
                skills: vec!["bench".into()],
                node: n,
                site: "hq".into(),
                at: now_ms(),
            },
        )
        .await?;
    }

    drop(c);
    // raft_commits_per_sec: Ticks proposed on the leader by many writers at once.
    let leader_cluster = members[leader]
        .as_ref()
        .map(|m| m.cluster.clone())
        .context("leader gone")?;
    let started = Instant::now();
    let per_writer = args.commits.div_ceil(args.writers);
    let mut tasks = Vec::new();
    for _ in 0..args.writers {
        let c = leader_cluster.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            for _ in 0..per_writer {
                if c.propose(Command::Tick { at: now_ms() }).await.is_ok() {
                    done += 1;
                }
            }
            done
        }));
    }
    let mut committed = 0;
    for t in tasks {
        committed += t.await.unwrap_or(0);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "bench: raft_commits_per_sec {:.0} commits/s",
        committed as f64 / secs.max(1e-9)
    );
    eprintln!(
        "({committed} commits by {} writers in {secs:.1} s)",
        args.writers
    );
    drop(leader_cluster);
    // The latency samples measure a settled cluster: a member still digesting the burst
    // above (its appends, fsyncs and applies) would be measured along with them.
    let settling = Instant::now();
    wait_caught_up(&members, Duration::from_secs(60)).await?;
    eprintln!(
        "(every member applied the burst {:.1} s after it was committed)",
        settling.elapsed().as_secs_f64()
    );

    // enqueue_offer: a follower owns the call; Enqueue forwarded to the leader, the offer
    // applied back on the follower.
    let follower = (0..3).find(|i| *i != leader).context("no follower")?;
    let owner = members[follower]
        .as_ref()
        .map(|m| m.cluster.clone())
        .context("follower gone")?;
    let mut lat_us = Vec::with_capacity(args.samples);
    let phase = Instant::now();
    for i in 0..args.samples {
        let call = format!("lat-{i}");
        let t0 = Instant::now();
        offer_one(&owner, &waiters, &call, follower as u64 + 1).await?;
        lat_us.push(t0.elapsed().as_micros() as u64);
        propose(&owner, Command::Abandon { call, at: now_ms() }).await?;
    }
    drop(owner);
    let slow: Vec<(usize, u64)> = lat_us
        .iter()
        .enumerate()
        .filter(|(_, us)| **us > SLOW_OFFER_US)
        .map(|(i, us)| (i, us / 1000))
        .collect();
    eprintln!(
        "({} of {} offers took over 5 ms; sample and ms, the first 40: {:?})",
        slow.len(),
        args.samples,
        &slow[..slow.len().min(40)]
    );
    report_stalls(&stalls, phase, "offers");
    lat_us.sort_unstable();
    println!(
        "bench: enqueue_offer_p50_ms {:.2} ms",
        pct(&lat_us, 50) as f64 / 1000.0
    );
    println!(
        "bench: enqueue_offer_p99_ms {:.2} ms",
        pct(&lat_us, 99) as f64 / 1000.0
    );

    // failover: stop the leader, time until an offer commits through the new one.
    let mut failover_ms = Vec::new();
    for trial in 0..args.trials {
        let leader = wait_leader(&members, Duration::from_secs(15)).await?;
        let survivor = (0..3).find(|i| *i != leader).context("no survivor")?;
        let s = members[survivor]
            .as_ref()
            .map(|m| m.cluster.clone())
            .context("survivor gone")?;
        let dead = members[leader].take().context("leader gone")?;
        let t0 = Instant::now();
        dead.cluster.shutdown().await;
        dead.drain.abort();
        drop(dead);
        let call = format!("fail-{trial}");
        offer_one(&s, &waiters, &call, survivor as u64 + 1).await?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        failover_ms.push(ms as u64);
        eprintln!(
            "failover trial {}: n{} stopped, next offer after {ms:.0} ms",
            trial + 1,
            leader + 1
        );
        report_stalls(&stalls, t0, &format!("trial {}", trial + 1));
        propose(&s, Command::Abandon { call, at: now_ms() }).await?;
        drop(s);
        // Bring the stopped member back and let it catch up before the next trial.
        members[leader] = Some(restart_member(&configs[leader], &waiters).await?);
        wait_caught_up(&members, Duration::from_secs(20)).await?;
    }
    if !failover_ms.is_empty() {
        failover_ms.sort_unstable();
        println!("bench: failover_p50_ms {} ms", pct(&failover_ms, 50));
        println!("bench: failover_p99_ms {} ms", pct(&failover_ms, 99));
    }
    for m in members.into_iter().flatten() {
        m.cluster.shutdown().await;
        m.drain.abort();
    }
    watchdog.abort();
    Ok(())
}

/// How late a plain thread wakes from 10 ms sleeps over `span`, as (p50, p99) in ms: the
/// machine's own noise, with nothing of ours running.
fn timer_lag_ms(span: Duration) -> (f64, f64) {
    let tick = Duration::from_millis(10);
    let mut late_us: Vec<u64> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < span && late_us.len() < 10_000 {
        let due = Instant::now() + tick;
        std::thread::sleep(tick);
        late_us.push(Instant::now().saturating_duration_since(due).as_micros() as u64);
    }
    late_us.sort_unstable();
    let ms = |p| pct(&late_us, p) as f64 / 1000.0;
    (ms(50), ms(99))
}

/// An enqueue-to-offer sample this slow is counted against the stalls of its phase.
const SLOW_OFFER_US: u64 = 5_000;
/// A late wake of the runtime watchdog this long is reported beside the slow samples.
const STALL_MIN: Duration = Duration::from_millis(3);

/// Runtime stalls seen by the watchdog: when each ended, and how long it was.
type Stalls = Arc<Mutex<Vec<(Instant, Duration)>>>;

fn lock_stalls(s: &Stalls) -> std::sync::MutexGuard<'_, Vec<(Instant, Duration)>> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Prints the runtime stalls that ended since `since`, for `what`.
fn report_stalls(stalls: &Stalls, since: Instant, what: &str) {
    let seen: Vec<u128> = lock_stalls(stalls)
        .iter()
        .filter(|(at, _)| *at >= since)
        .map(|(_, late)| late.as_millis())
        .collect();
    if !seen.is_empty() {
        eprintln!(
            "({what}: the runtime woke {} times at least {} ms late, ms: {seen:?})",
            seen.len(),
            STALL_MIN.as_millis()
        );
    }
}

/// Proposes an Enqueue owned by `owner_node` through `c` and waits until the offer for it
/// is applied on `c`'s member.
async fn offer_one(
    c: &Cluster,
    waiters: &Waiters,
    call: &str,
    owner_node: u64,
) -> anyhow::Result<()> {
    let (tx, rx) = oneshot::channel();
    lock(waiters).insert(call.to_string(), tx);
    let cmd = Command::Enqueue(Arrival {
        call: call.to_string(),
        queue: "bench".into(),
        caller: "5550000".into(),
        dialled: "100".into(),
        owner: owner_node,
        site: "hq".into(),
        at: now_ms(),
        ..Arrival::default()
    });
    propose(c, cmd).await?;
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .with_context(|| format!("no offer for {call} within 10 s"))?
        .ok();
    Ok(())
}

async fn propose(c: &Cluster, cmd: Command) -> anyhow::Result<()> {
    c.propose(cmd).await.map_err(|e| anyhow::anyhow!("{e}"))
}

fn lock(w: &Waiters) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<()>>> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

async fn start_member(config: &Config, waiters: &Waiters) -> anyhow::Result<Member> {
    let (cluster, rx) = Cluster::start(config).await?;
    let drain = tokio::spawn(drain(
        rx,
        waiters.clone(),
        config.node_number().unwrap_or(0),
    ));
    Ok(Member { cluster, drain })
}

/// Restarts a stopped member on its own data (its redb files may take a moment to be
/// released by the stopped Raft's last write).
async fn restart_member(config: &Config, waiters: &Waiters) -> anyhow::Result<Member> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match start_member(config, waiters).await {
            Ok(m) => return Ok(m),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "member not restartable yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Keeps the member's applied-entry channel drained; tells waiters of offers for calls
/// this member owns.
async fn drain(mut rx: mpsc::Receiver<AppliedEntry>, waiters: Waiters, me: u64) {
    while let Some(entry) = rx.recv().await {
        for e in entry.applied.events {
            if let Event::Offered { call, owner, .. } = e {
                if owner == me {
                    if let Some(tx) = lock(&waiters).remove(&call) {
                        let _ = tx.send(());
                    }
                }
            }
        }
    }
}

async fn wait_leader(members: &[Option<Member>], limit: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + limit;
    loop {
        for (i, m) in members.iter().enumerate() {
            if let Some(m) = m {
                if m.cluster.is_leader() {
                    return Ok(i);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no leader within {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_caught_up(members: &[Option<Member>], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let applied: Vec<u64> = members
            .iter()
            .flatten()
            .map(|m| m.cluster.last_applied())
            .collect();
        let max = applied.iter().copied().max().unwrap_or(0);
        if applied.len() == 3 && applied.iter().all(|a| *a == max) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "members did not catch up within {} s: {applied:?}",
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three members' configs with free loopback ports and data under `work`.
fn member_configs(work: &Path) -> anyhow::Result<Vec<Config>> {
    let ports: Vec<[u16; 3]> = (0..3)
        .map(|_| -> anyhow::Result<[u16; 3]> {
            Ok([
                crate::bench::sip::free_port()?,
                crate::bench::sip::free_port()?,
                crate::bench::sip::free_port()?,
            ])
        })
        .collect::<anyhow::Result<_>>()?;
    let members: String = (0..3)
        .map(|i| {
            let [sip, http, raft] = ports[i];
            format!(
                "[[cluster.members]]\nid = \"n{}\"\nraft = \"127.0.0.1:{raft}\"\nsip = \"127.0.0.1:{sip}\"\nhttp = \"127.0.0.1:{http}\"\nsite = \"hq\"\n",
                i + 1
            )
        })
        .collect();
    let certs = work.join("certs");
    (0..3)
        .map(|i| {
            let [sip, http, raft] = ports[i];
            let n = i + 1;
            let data: PathBuf = work.join(format!("n{n}"));
            let text = format!(
                "[node]\nid = \"n{n}\"\nsite = \"hq\"\ndata_dir = {data:?}\n\
                 [sip]\nlisten = \"127.0.0.1:{sip}\"\n\
                 [rtp]\nip = \"127.0.0.1\"\nport_min = 40000\nport_max = 40100\n\
                 [http]\nlisten = \"127.0.0.1:{http}\"\n\
                 [media]\nhold_music = \"unused.wav\"\n\
                 [cluster]\nlisten = \"127.0.0.1:{raft}\"\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n{members}",
                ca = certs.join("ca.pem"),
                cert = certs.join(format!("n{n}.pem")),
                key = certs.join(format!("n{n}.key")),
            );
            std::fs::create_dir_all(&data)?;
            Config::from_toml(&text, &format!("bench member n{n}"), work.to_path_buf())
                .map_err(anyhow::Error::from)
        })
        .collect()
}

fn pct(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * p).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}
