//! `carillon bench media`: the RTP relay on one core (a current-thread runtime on its own
//! thread) against simulated phones on loopback, stepping the number of concurrent G.711
//! calls until loss passes 0.1%; then the same with every call recorded. With
//! `--rtpengine-ng`, the same phones load rtpengine instead: the yardstick, on this machine.

use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug)]
pub struct MediaBenchArgs {
    /// Calls added at each step.
    #[arg(long, default_value_t = 500)]
    pub calls_step: usize,
    /// The largest step tried.
    #[arg(long, default_value_t = 4_000)]
    pub calls_max: usize,
    /// Seconds of load per step.
    #[arg(long, default_value_t = 5)]
    pub step_s: u64,
    /// First UDP port of the relay's range (4 ports per call).
    #[arg(long, default_value_t = 40_000)]
    pub port_min: u16,
    /// Skip the recorded runs.
    #[arg(long)]
    pub no_recording: bool,
    /// Measure rtpengine instead of our relay (the yardstick), set up over its ng control
    /// protocol at this address; needs --rtpengine-pid. scripts/bench-rtpengine.sh starts one.
    #[arg(long, requires = "rtpengine_pid")]
    pub rtpengine_ng: Option<std::net::SocketAddr>,
    /// rtpengine's process id, whose threads' CPU time is measured.
    #[arg(long, requires = "rtpengine_ng")]
    pub rtpengine_pid: Option<u32>,
}

pub fn run(args: &MediaBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.calls_step > 0, "--calls-step must be at least 1");
    anyhow::ensure!(
        (1..=60).contains(&args.step_s),
        "--step-s must be 1 to 60 seconds"
    );
    let dir = tempfile_dir()?;
    let options = carillon_media::bench::MediaBenchOptions {
        calls_step: args.calls_step,
        calls_max: args.calls_max,
        step_ms: args.step_s * 1_000,
        port_min: args.port_min,
        recordings_dir: dir.clone(),
        recorded: !args.no_recording,
        external: args
            .rtpengine_ng
            .zip(args.rtpengine_pid)
            .map(|(ng, pid)| carillon_media::bench::ExternalRelay { ng, pid }),
    };
    let figures = carillon_media::bench::run(&options);
    let _ = std::fs::remove_dir_all(&dir);
    for line in figures?.lines() {
        println!("{line}");
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("carillon-media-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
