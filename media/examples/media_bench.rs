//! The media benchmark from the command line (the node's `carillon bench media` runs the same
//! [`carillon_media::bench::run`]).
//!
//! `cargo run --release -p carillon-media --example media_bench [CALLS_STEP] [CALLS_MAX] [STEP_MS]
//! [RTPENGINE_NG_ADDR RTPENGINE_PID]`
//! Defaults: steps of 500 calls up to 4500, 3 s each; bounded in steps and time. With the last
//! two, rtpengine is measured instead of our relay.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut options = carillon_media::bench::MediaBenchOptions::default();
    if let Some(step) = args.next() {
        options.calls_step = step.parse()?;
    }
    if let Some(max) = args.next() {
        options.calls_max = max.parse()?;
    }
    if let Some(ms) = args.next() {
        options.step_ms = ms.parse()?;
    }
    if let (Some(ng), Some(pid)) = (args.next(), args.next()) {
        options.external = Some(carillon_media::bench::ExternalRelay {
            ng: ng.parse()?,
            pid: pid.parse()?,
        });
    }
    let figures = carillon_media::bench::run(&options)?;
    for step in &figures.steps {
        println!(
            "step: calls {} recorded {} sent {} received {} loss {:.4}% p50 {:.3} ms p99 {:.3} ms \
             cpu {:.1} us/call-s relay core {:.0}%",
            step.calls,
            step.recorded,
            step.packets_sent,
            step.packets_received,
            step.loss * 100.0,
            step.added_p50_ms,
            step.added_p99_ms,
            step.cpu_us_per_call_second,
            step.relay_core_share * 100.0
        );
    }
    for line in figures.lines() {
        println!("{line}");
    }
    Ok(())
}
