//! The media benchmark behind `carillon bench media`: how many concurrent G.711 calls the relay
//! carries on one core with under 0.1% loss, the latency it adds, the CPU it spends per relayed
//! call-second, and how many calls it carries with every call recorded.
//!
//! The relay under test runs the real [`CallMedia`] tasks on a tokio `current_thread` runtime in
//! one thread (one core). Simulated phones run in one other thread on loopback: a small set of
//! sockets per side, each standing for many phones, sends one 20 ms packet per call and
//! direction every 20 ms (spread evenly over the period, as independent phones would be) and
//! receives what the relay forwards. Each packet carries its send time, so the receiver measures
//! the latency the relay adds (the loopback hop included) without any clock shared across
//! processes. Load rises in steps until loss passes the bar; each step is bounded in time, the
//! whole run in steps.
//!
//! CPU time is the relay thread's own, from `/proc/thread-self/schedstat` (Linux).
#![allow(clippy::disallowed_methods)] // a benchmark adapter: it measures wall and CPU time

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};
use tokio::sync::mpsc;

use crate::bench_ng::NgClient;
use crate::recording::{Recorder, Recording, RecordingTarget};
use crate::rtp::RtpHeader;
use crate::{CallMedia, Codec, MediaError, MediaLeg, PortPool};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Sockets per side of the simulated phones; each carries `calls / PHONE_SOCKETS` phones.
const PHONE_SOCKETS: usize = 8;
/// Receive buffer asked of the OS for each phone socket.
const PHONE_SOCKET_BUFFER_BYTES: usize = 4 << 20;
const PACKET_BYTES: usize = 12 + 160;
const FRAME_PERIOD: Duration = Duration::from_millis(20);
/// Latency histogram: 10 us buckets up to 1 s (a saturated relay queues for hundreds of ms).
const LATENCY_BUCKET_US: u64 = 10;
const LATENCY_BUCKETS: usize = 100_000;
/// Time after the last send to collect packets still in flight.
const DRAIN_TIME: Duration = Duration::from_millis(300);
/// The loss bar of the figures.
pub const LOSS_MAX: f64 = 0.001;

/// What to run.
#[derive(Clone, Debug)]
pub struct MediaBenchOptions {
    /// Calls in the first step, and added at each next step.
    pub calls_step: usize,
    /// The largest step (the run stops earlier at the first step over the loss bar).
    pub calls_max: usize,
    /// Load time of each step.
    pub step_ms: u64,
    /// The first port of the range the relay's pool uses (4 ports per call).
    pub port_min: u16,
    /// Where the recorded runs write (a temporary directory of their own is made inside and
    /// removed after).
    pub recordings_dir: PathBuf,
    /// Also run the recorded steps.
    pub recorded: bool,
    /// Measure this relay instead of ours (the yardstick); recorded steps are then skipped.
    pub external: Option<ExternalRelay>,
}

/// A relay in another process, loaded by the same simulated phones: rtpengine, set up over its
/// ng control protocol, its CPU time summed over every thread of its process.
#[derive(Clone, Debug)]
pub struct ExternalRelay {
    /// rtpengine's `--listen-ng` address.
    pub ng: SocketAddr,
    /// Its process id.
    pub pid: u32,
}

impl Default for MediaBenchOptions {
    fn default() -> MediaBenchOptions {
        MediaBenchOptions {
            calls_step: 500,
            calls_max: 4500,
            step_ms: 3000,
            port_min: 10_000,
            recordings_dir: std::env::temp_dir(),
            recorded: true,
            external: None,
        }
    }
}

/// One step's measurements.
#[derive(Clone, Debug, PartialEq)]
pub struct StepFigures {
    pub calls: usize,
    pub recorded: bool,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub loss: f64,
    pub added_p50_ms: f64,
    pub added_p99_ms: f64,
    /// Relay thread CPU time over the load, per call-second.
    pub cpu_us_per_call_second: f64,
    /// Relay thread CPU time over wall time (1.0 is a full core).
    pub relay_core_share: f64,
}

/// The figures `carillon bench media` prints.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MediaBenchFigures {
    /// The largest step relayed with loss under [`LOSS_MAX`]; 0 if none was.
    pub relay_calls_one_core: usize,
    /// Added latency p99 at that step, ms.
    pub relay_added_p99_ms: f64,
    /// CPU per relayed call-second at that step, us.
    pub relay_cpu_us_per_call_second: f64,
    /// The largest recorded step under the loss bar (and without recording drops).
    pub recorded_calls_one_core: usize,
    pub steps: Vec<StepFigures>,
    /// The figures are rtpengine's (`rtpengine_*` lines), not our relay's.
    pub external: bool,
}

impl MediaBenchFigures {
    /// `bench: NAME VALUE UNIT` lines.
    pub fn lines(&self) -> Vec<String> {
        let relay = if self.external { "rtpengine" } else { "relay" };
        let mut lines = vec![
            format!(
                "bench: {relay}_calls_one_core {} calls",
                self.relay_calls_one_core
            ),
            format!(
                "bench: {relay}_added_p99_ms {:.3} ms",
                self.relay_added_p99_ms
            ),
            format!(
                "bench: {relay}_cpu_us_per_call_second {:.1} us",
                self.relay_cpu_us_per_call_second
            ),
        ];
        if self.steps.iter().any(|s| s.recorded) {
            lines.push(format!(
                "bench: recorded_calls_one_core {} calls",
                self.recorded_calls_one_core
            ));
        }
        lines
    }
}

/// Runs the benchmark: relay-only steps, then (if asked) recorded steps.
pub fn run(options: &MediaBenchOptions) -> Result<MediaBenchFigures, MediaError> {
    let mut figures = MediaBenchFigures {
        external: options.external.is_some(),
        ..MediaBenchFigures::default()
    };
    let modes: &[bool] = if options.recorded && options.external.is_none() {
        &[false, true]
    } else {
        &[false]
    };
    for &recorded in modes {
        let mut calls = options.calls_step.max(1);
        while calls <= options.calls_max {
            let step = run_step(options, calls, recorded)?;
            tracing::info!(?step, "media bench step");
            let passed = step.loss < LOSS_MAX;
            if passed {
                if recorded {
                    figures.recorded_calls_one_core = calls;
                } else {
                    figures.relay_calls_one_core = calls;
                    figures.relay_added_p99_ms = step.added_p99_ms;
                    figures.relay_cpu_us_per_call_second = step.cpu_us_per_call_second;
                }
            }
            figures.steps.push(step);
            if !passed {
                break;
            }
            calls += options.calls_step.max(1);
        }
    }
    Ok(figures)
}

enum RelayCommand {
    MeasureStart,
    MeasureStop(std::sync::mpsc::Sender<Duration>),
}

/// One step: `calls` bridged calls under load for `step_ms`.
pub fn run_step(
    options: &MediaBenchOptions,
    calls: usize,
    recorded: bool,
) -> Result<StepFigures, MediaError> {
    if let Some(external) = &options.external {
        return run_step_external(options, external, calls);
    }
    let (callers, caller_addrs) = phone_sockets()?;
    let (agents, agent_addrs) = phone_sockets()?;
    let recordings = if recorded {
        Some(
            tempdir_in(&options.recordings_dir).map_err(|source| MediaError::Io {
                file: options.recordings_dir.display().to_string(),
                source,
            })?,
        )
    } else {
        None
    };

    // The relay under test, on its own thread and current_thread runtime.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (command_tx, mut command_rx) = mpsc::channel::<RelayCommand>(4);
    let port_min = options.port_min;
    let port_max = port_min.saturating_add(u16::try_from(calls * 4 + 64).unwrap_or(u16::MAX));
    let recordings_path = recordings.clone();
    let relay = std::thread::Builder::new()
        .name("media-bench-relay".into())
        .spawn(move || -> Result<(u64, usize), MediaError> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| MediaError::Io {
                    file: "tokio runtime".into(),
                    source,
                })?;
            runtime.block_on(async move {
                let pool = PortPool::new(LOOPBACK, port_min, port_max)?;
                let recorder = match &recordings_path {
                    Some(dir) => Some(Recorder::new(Recording {
                        dir: dir.clone(),
                        enabled: true,
                        disk_watermark_bytes: u64::MAX,
                        disk_limit_bytes: u64::MAX,
                    })?),
                    None => None,
                };
                let mut medias = Vec::with_capacity(calls);
                let mut nodes = Vec::with_capacity(calls);
                for i in 0..calls {
                    let caller_port = pool.allocate()?;
                    let agent_port = pool.allocate()?;
                    nodes.push((caller_port.local_addr(), agent_port.local_addr()));
                    let media = CallMedia::start_seeded(
                        MediaLeg::new(
                            caller_port,
                            Codec::Pcmu,
                            Some(caller_addrs[i % PHONE_SOCKETS]),
                        ),
                        i as u64,
                    );
                    media.try_bridge(MediaLeg::new(
                        agent_port,
                        Codec::Pcmu,
                        Some(agent_addrs[i % PHONE_SOCKETS]),
                    ))?;
                    if let Some(recorder) = &recorder {
                        media.start_recording(RecordingTarget {
                            recorder: Arc::clone(recorder),
                            call_id: format!("bench-{i}"),
                            agent: "bench".into(),
                            queue: "bench".into(),
                            caller: "bench".into(),
                            start_unix_ms: 0,
                        })?;
                    }
                    medias.push(media);
                }
                // Let every task take its commands before the load starts.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = ready_tx.send(nodes);
                let mut started = None;
                while let Some(command) = command_rx.recv().await {
                    match command {
                        RelayCommand::MeasureStart => started = Some(thread_cpu_ns()),
                        RelayCommand::MeasureStop(reply) => {
                            let used = started.map_or(0, |s| thread_cpu_ns().saturating_sub(s));
                            let _ = reply.send(Duration::from_nanos(used));
                        }
                    }
                }
                let mut dropped = 0;
                for media in &mut medias {
                    if recorder.is_some() {
                        if let Some(meta) = media.stop_recording().await {
                            dropped += meta.frames_dropped;
                        }
                    }
                    media.shutdown().await;
                }
                Ok((dropped, medias.len()))
            })
        })
        .map_err(|source| MediaError::Io {
            file: "bench relay thread".into(),
            source,
        })?;
    let nodes = match ready_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(nodes) => nodes,
        Err(_) => {
            drop(command_tx);
            return match relay.join() {
                Ok(Err(error)) => Err(error),
                _ => Err(MediaError::SessionEnded),
            };
        }
    };

    let mut load = Load::new(calls, &nodes, callers, agents);
    let _ = command_tx.blocking_send(RelayCommand::MeasureStart);
    let wall = Instant::now();
    load.run(Duration::from_millis(options.step_ms));
    let (reply_tx, reply_rx) = std::sync::mpsc::channel();
    let _ = command_tx.blocking_send(RelayCommand::MeasureStop(reply_tx));
    let cpu = reply_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_default();
    let wall = wall.elapsed();
    load.drain(DRAIN_TIME);
    drop(command_tx);
    let recording_dropped = match relay.join() {
        Ok(result) => result?.0,
        Err(_) => return Err(MediaError::SessionEnded),
    };
    if let Some(dir) = recordings {
        let _ = std::fs::remove_dir_all(dir);
    }

    Ok(step_figures(
        &load,
        calls,
        recorded,
        wall,
        cpu,
        recording_dropped,
    ))
}

/// One step against an external relay: the calls are set up over ng, loaded, then deleted.
fn run_step_external(
    options: &MediaBenchOptions,
    external: &ExternalRelay,
    calls: usize,
) -> Result<StepFigures, MediaError> {
    let (callers, caller_addrs) = phone_sockets()?;
    let (agents, agent_addrs) = phone_sockets()?;
    let mut ng = NgClient::connect(external.ng)?;
    let run_tag = format!("{}-{calls}", std::process::id());
    let mut nodes = Vec::with_capacity(calls);
    let mut made = 0;
    let mut setup = || {
        for i in 0..calls {
            nodes.push(ng.bridge(
                &format!("bench-{run_tag}-{i}"),
                caller_addrs[i % PHONE_SOCKETS],
                agent_addrs[i % PHONE_SOCKETS],
            )?);
            made += 1;
        }
        Ok::<(), MediaError>(())
    };
    let figures = setup().and_then(|()| {
        let mut load = Load::new(calls, &nodes, callers, agents);
        let cpu_start = process_cpu_ns(external.pid)?;
        let wall = Instant::now();
        load.run(Duration::from_millis(options.step_ms));
        let cpu = Duration::from_nanos(process_cpu_ns(external.pid)?.saturating_sub(cpu_start));
        let wall = wall.elapsed();
        load.drain(DRAIN_TIME);
        Ok(step_figures(&load, calls, false, wall, cpu, 0))
    });
    // Delete what was made even when the step failed, so the next step starts clean.
    for i in 0..made {
        ng.delete(&format!("bench-{run_tag}-{i}"))?;
    }
    figures
}

/// CPU time so far of every thread of process `pid`, in nanoseconds.
fn process_cpu_ns(pid: u32) -> Result<u64, MediaError> {
    let tasks = PathBuf::from(format!("/proc/{pid}/task"));
    let io = |source| MediaError::Io {
        file: tasks.display().to_string(),
        source,
    };
    let mut total = 0u64;
    for task in std::fs::read_dir(&tasks).map_err(io)? {
        // A thread that ended between the listing and the read adds nothing.
        total += schedstat_ns(&task.map_err(io)?.path().join("schedstat")).unwrap_or(0);
    }
    Ok(total)
}

/// One side's phone sockets and their addresses.
fn phone_sockets() -> Result<(Vec<UdpSocket>, Vec<SocketAddr>), MediaError> {
    let io_err = |source| MediaError::Io {
        file: "bench socket".into(),
        source,
    };
    let sockets: Vec<UdpSocket> = (0..PHONE_SOCKETS)
        .map(|_| phone_socket())
        .collect::<io::Result<_>>()
        .map_err(io_err)?;
    let addrs: Vec<SocketAddr> = sockets
        .iter()
        .map(UdpSocket::local_addr)
        .collect::<io::Result<_>>()
        .map_err(io_err)?;
    Ok((sockets, addrs))
}

fn step_figures(
    load: &Load,
    calls: usize,
    recorded: bool,
    wall: Duration,
    cpu: Duration,
    recording_dropped: u64,
) -> StepFigures {
    let received = load.received;
    let sent = load.sent;
    let mut loss = if sent == 0 {
        1.0
    } else {
        sent.saturating_sub(received) as f64 / sent as f64
    };
    if recorded && recording_dropped > 0 {
        // A recorded step that lost recording frames does not pass either.
        loss = loss.max(recording_dropped as f64 / sent.max(1) as f64);
    }
    let call_seconds = calls as f64 * wall.as_secs_f64();
    StepFigures {
        calls,
        recorded,
        packets_sent: sent,
        packets_received: received,
        loss,
        added_p50_ms: load.percentile_ms(0.50),
        added_p99_ms: load.percentile_ms(0.99),
        cpu_us_per_call_second: cpu.as_secs_f64() * 1e6 / call_seconds.max(1e-9),
        relay_core_share: cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9),
    }
}

fn phone_socket() -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind((LOOPBACK, 0))?;
    socket.set_nonblocking(true)?;
    // Best effort: the OS caps it at its maximum; a smaller buffer only shows as loss.
    let _ = setsockopt(&socket, sockopt::RcvBuf, &PHONE_SOCKET_BUFFER_BYTES);
    let _ = setsockopt(&socket, sockopt::SndBuf, &PHONE_SOCKET_BUFFER_BYTES);
    Ok(socket)
}

/// A fresh directory under `parent`, named after this process and the time.
fn tempdir_in(parent: &std::path::Path) -> io::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = parent.join(format!(
        "carillon-media-bench-{}-{stamp}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// This thread's CPU time so far, in nanoseconds (0 where the kernel does not say).
fn thread_cpu_ns() -> u64 {
    schedstat_ns(Path::new("/proc/thread-self/schedstat")).unwrap_or(0)
}

/// The CPU time a `schedstat` file reports (its first field), in nanoseconds.
fn schedstat_ns(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The simulated phones of one step.
struct Load {
    /// Per call: the relay's caller and agent addresses.
    nodes: Vec<(SocketAddr, SocketAddr)>,
    callers: Vec<UdpSocket>,
    agents: Vec<UdpSocket>,
    epoch: Instant,
    sequence: u16,
    sent: u64,
    received: u64,
    histogram: Vec<u64>,
}

impl Load {
    fn new(
        calls: usize,
        nodes: &[(SocketAddr, SocketAddr)],
        callers: Vec<UdpSocket>,
        agents: Vec<UdpSocket>,
    ) -> Load {
        Load {
            nodes: nodes[..calls.min(nodes.len())].to_vec(),
            callers,
            agents,
            epoch: Instant::now(),
            sequence: 0,
            sent: 0,
            received: 0,
            histogram: vec![0; LATENCY_BUCKETS],
        }
    }

    /// Sends 20 ms frames for every call both ways for `duration`, receiving as it goes.
    fn run(&mut self, duration: Duration) {
        let slots = 20usize;
        let slot_time = FRAME_PERIOD / slots as u32;
        let start = Instant::now();
        let mut packet = [0xFFu8; PACKET_BYTES];
        let mut period = 0u64;
        while start.elapsed() < duration {
            for slot in 0..slots {
                let due = start + FRAME_PERIOD * period as u32 + slot_time * slot as u32;
                while Instant::now() < due {
                    if self.receive() == 0 {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
                for call in (slot..self.nodes.len()).step_by(slots) {
                    let (caller_node, agent_node) = self.nodes[call];
                    let socket = call % PHONE_SOCKETS;
                    for (direction, (from, to)) in [
                        (&self.callers[socket], caller_node),
                        (&self.agents[socket], agent_node),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        RtpHeader {
                            marker: false,
                            payload_type: 0,
                            sequence: self.sequence,
                            timestamp: u32::from(self.sequence) * 160,
                            ssrc: (call * 2 + direction) as u32,
                        }
                        .write(&mut packet);
                        let sent_ns = self.epoch.elapsed().as_nanos() as u64;
                        packet[12..20].copy_from_slice(&sent_ns.to_le_bytes());
                        if from.send_to(&packet, to).is_ok() {
                            self.sent += 1;
                        }
                    }
                }
            }
            self.sequence = self.sequence.wrapping_add(1);
            period += 1;
        }
    }

    /// Receives what is still in flight for `duration`.
    fn drain(&mut self, duration: Duration) {
        let start = Instant::now();
        while start.elapsed() < duration {
            if self.receive() == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Reads every queued packet on every phone socket; returns how many.
    fn receive(&mut self) -> usize {
        let mut buf = [0u8; 2048];
        let mut count = 0;
        for socket in self.callers.iter().chain(&self.agents) {
            while let Ok((len, _)) = socket.recv_from(&mut buf) {
                if len != PACKET_BYTES {
                    continue;
                }
                let mut stamp = [0u8; 8];
                stamp.copy_from_slice(&buf[12..20]);
                let sent_ns = u64::from_le_bytes(stamp);
                let now_ns = self.epoch.elapsed().as_nanos() as u64;
                let bucket = (now_ns.saturating_sub(sent_ns) / 1000 / LATENCY_BUCKET_US) as usize;
                self.histogram[bucket.min(LATENCY_BUCKETS - 1)] += 1;
                self.received += 1;
                count += 1;
            }
        }
        count
    }

    fn percentile_ms(&self, quantile: f64) -> f64 {
        let total: u64 = self.histogram.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = (quantile * total as f64).ceil() as u64;
        let mut seen = 0;
        for (bucket, count) in self.histogram.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return ((bucket as u64 + 1) * LATENCY_BUCKET_US) as f64 / 1000.0;
            }
        }
        (LATENCY_BUCKETS as u64 * LATENCY_BUCKET_US) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_step_relays_everything_and_reports() {
        let options = MediaBenchOptions {
            calls_step: 20,
            calls_max: 20,
            step_ms: 500,
            port_min: 44_000,
            recordings_dir: std::env::temp_dir(),
            recorded: true,
            external: None,
        };
        let figures = run(&options).expect("bench runs");
        assert_eq!(figures.steps.len(), 2, "{figures:?}");
        for step in &figures.steps {
            assert!(step.packets_sent >= 20 * 2 * 20, "{step:?}");
            assert!(step.packets_received > 0, "{step:?}");
        }
        let lines = figures.lines();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("bench: relay_calls_one_core "));
        assert!(lines[3].starts_with("bench: recorded_calls_one_core "));
    }
}
