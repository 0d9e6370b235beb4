//! Carillon's chaos harness, process level: `carillon chaos run` starts real node
//! processes on loopback behind UDP fault proxies, drives calls over real SIP (SIPp),
//! injects one fault per scenario (SIGKILL of the leader or a follower, SIGSTOP, a cut-off
//! minority, restart of all, a site cut, 20% loss, 200 ms delay, a full disk), heals, and
//! checks DESIGN.md's invariants on the history gathered from every node. It prints a
//! report, writes it as JSON on request, and fails when an invariant does.
//!
//! It talks to nodes only as an operator would (processes, config files, the HTTP API),
//! so it does not depend on the node crate. The seeded in-process simulator (`carillon chaos
//! sim`) is [`sim`]: the consensus and routing crates in one thread on a simulated clock.

pub mod cluster;
pub mod faults;
pub mod history;
pub mod http;
pub mod invariants;
pub mod ports;
pub mod procs;
pub mod proxy;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod sim;
pub mod sipp;

use std::path::PathBuf;

use anyhow::Context;

pub use report::Report;
pub use sim::{run_cli as run_sim, SimArgs};

/// `carillon chaos run` options.
#[derive(clap::Args, Clone, Debug)]
pub struct ChaosArgs {
    /// A scenario (leader-kill, follower-kill, pause, minority-loss, restart-all,
    /// site-cut, loss20, delay200, disk-full), several separated by commas, or `all`.
    #[arg(long, default_value = "all")]
    pub scenario: String,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Calls per scenario during the fault phase, spread over the three nodes.
    #[arg(long, default_value_t = 60)]
    pub calls: u32,
    /// New calls per second at each node.
    #[arg(long, default_value_t = 2)]
    pub rate: u32,
    /// How long each caller stays after being answered, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub hold_ms: u64,
    /// How long a fault lasts before healing, in milliseconds (pause: 3000 always).
    #[arg(long, default_value_t = 6000)]
    pub fault_ms: u64,
    /// Seed for every random choice (which follower, which datagrams).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run the remaining scenarios after one fails.
    #[arg(long)]
    pub keep_going: bool,
    /// Keep each scenario's directory (configs, node logs, SIPp logs) and print its path.
    #[arg(long)]
    pub keep_dirs: bool,
}

impl Default for ChaosArgs {
    fn default() -> Self {
        ChaosArgs {
            scenario: "all".into(),
            report: None,
            calls: 60,
            rate: 2,
            hold_ms: 2000,
            fault_ms: 6000,
            seed: 1,
            keep_going: false,
            keep_dirs: false,
        }
    }
}

/// The scenario names `arg` selects.
pub fn select(arg: &str) -> anyhow::Result<Vec<&'static str>> {
    if arg == "all" {
        return Ok(scenario::NAMES.to_vec());
    }
    arg.split(',')
        .map(str::trim)
        .map(|n| {
            scenario::NAMES
                .iter()
                .copied()
                .find(|k| *k == n)
                .with_context(|| {
                    format!(
                        "unknown scenario `{n}`: one of {}, or all",
                        scenario::NAMES.join(", ")
                    )
                })
        })
        .collect()
}

/// Runs the selected scenarios with `node_exe` as the node binary, prints the report and
/// writes it when asked. Err when a scenario failed (the report is still printed/written).
pub async fn run(args: ChaosArgs, node_exe: PathBuf) -> anyhow::Result<Report> {
    let names = select(&args.scenario)?;
    anyhow::ensure!(
        node_exe.is_file(),
        "node binary {} not found",
        node_exe.display()
    );
    let settings = scenario::Settings {
        exe: node_exe,
        calls_per_node: (args.calls / 3).max(1),
        rate_cps: args.rate.max(1),
        hold_ms: args.hold_ms,
        fault_ms: args.fault_ms.max(1000),
        seed: args.seed,
        keep_dirs: args.keep_dirs,
    };
    let rt = tokio::runtime::Handle::current();
    let keep_going = args.keep_going;
    let reports = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for name in names {
            let r = scenario::run(name, &settings, rt.clone());
            let failed = !r.passed;
            print!("{}", r.render());
            out.push(r);
            if failed && !keep_going {
                break;
            }
        }
        out
    })
    .await
    .context("the chaos runner thread failed")?;
    let report = Report::new(args.seed, reports);
    print!("{}", report.summary());
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if !report.passed {
        anyhow::bail!(
            "chaos: invariants failed (seed {}){}",
            args.seed,
            args.report
                .as_ref()
                .map(|p| format!("; report in {}", p.display()))
                .unwrap_or_default()
        );
    }
    Ok(report)
}
