//! `carillon bench routing`: the ACD state machine alone, in this process, on one thread:
//! routing decisions per second with 1,000 agents and 10,000 waiting calls, and the size
//! of a waiting call. The state machine reads no clock; this adapter lends it one.
#![allow(clippy::disallowed_methods)] // A benchmark's wall clock.

use clap::Args;

#[derive(Args, Debug)]
pub struct RoutingBenchArgs {
    #[arg(long, default_value_t = 1_000)]
    pub agents: usize,
    #[arg(long, default_value_t = 10_000)]
    pub waiting: usize,
    /// Decisions to time (each frees an agent who is offered the head of the line).
    #[arg(long, default_value_t = 200_000)]
    pub decisions: usize,
}

pub fn run(args: &RoutingBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.agents > 0 && args.waiting > 0 && args.decisions > 0,
        "--agents, --waiting and --decisions must be at least 1"
    );
    anyhow::ensure!(
        args.decisions <= 10_000_000,
        "--decisions is capped at 10,000,000 so a run stays bounded"
    );
    eprintln!(
        "routing bench: {} agents, {} waiting calls, {} decisions...",
        args.agents, args.waiting, args.decisions
    );
    let clock = std::time::Instant::now();
    let f = carillon_routing::bench::run(args.agents, args.waiting, args.decisions, || {
        clock.elapsed()
    });
    println!(
        "bench: routing_decisions_per_sec {:.0} decisions/s",
        f.decisions_per_sec
    );
    println!(
        "bench: routing_cycles_per_sec {:.0} cycles/s",
        f.cycles_per_sec
    );
    println!(
        "bench: bytes_per_waiting_call {:.0} bytes",
        f.bytes_per_waiting_call
    );
    println!(
        "bench: heap_bytes_per_waiting_call {:.0} bytes",
        f.heap_bytes_per_waiting_call
    );
    eprintln!(
        "decisions_per_sec times the commands that decide (an agent freed and offered the head of the line); \
         cycles_per_sec whole answer/end/new-call cycles (three commands). bytes_per_waiting_call: \
         postcard snapshot growth per waiting call; heap_bytes_per_waiting_call: in-memory estimate."
    );
    Ok(())
}
