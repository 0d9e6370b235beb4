//! The `carillon` command: run a node, run the demo, administer, benchmark.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "carillon",
    version,
    about = "Carillon: a distributed contact center"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node from a TOML config file.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a complete demo center on this machine: a node, simulated agent phones and
    /// callers over real SIP and RTP on loopback, and a live view.
    Demo(carillon::demo::DemoArgs),
    /// Benchmarks; each headline figure prints as `bench: NAME VALUE UNIT`.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// Make a cluster CA and one certificate per node (PEM files).
    Certs {
        /// Directory to write `ca.pem`, `ca.key`, `n1.pem`, `n1.key`...
        #[arg(long)]
        out: PathBuf,
        /// Node names, comma separated (`n1,n2,n3`). With an existing CA in --out, only
        /// the named nodes' certificates are made, signed by it.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// Replace files that already exist.
        #[arg(long)]
        force: bool,
    },
    /// Administer a running node through its gRPC API.
    Ctl(carillon::ctl::CtlArgs),
    /// Fault injection: real node processes on loopback, checked against the invariants.
    Chaos {
        #[command(subcommand)]
        what: ChaosCmd,
    },
}

#[derive(Subcommand)]
enum ChaosCmd {
    /// Start a cluster behind fault proxies, inject faults under SIP load, check, report.
    Run(carillon_chaos::ChaosArgs),
    /// The seeded cluster simulator: many Raft nodes in one thread on a simulated network
    /// and clock; prints any failing seed and how to replay it.
    Sim(carillon_chaos::SimArgs),
}

#[derive(Subcommand)]
enum BenchCmd {
    /// SIPp callers -> node -> SIPp agents: highest zero-failure call rate, post-dial
    /// delay, memory per concurrent call.
    Sip(carillon::bench::sip::SipBenchArgs),
    /// The replicated routing log on three members over QUIC: commits per second,
    /// enqueue-to-offer latency, failover; then SIP calls per second through a cluster.
    Cluster(carillon::bench::cluster::ClusterBenchArgs),
    /// The ACD state machine alone: decisions per second, bytes per waiting call.
    Routing(carillon::bench::routing::RoutingBenchArgs),
    /// The RTP relay on one core: concurrent calls, added latency, CPU per call-second,
    /// with and without recording.
    Media(carillon::bench::media::MediaBenchArgs),
}

fn init_logs(json: bool, default: &str) {
    let filter =
        EnvFilter::try_from_env("CARILLON_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// rsipstack logs every message at info; keep its noise at warn unless asked.
const NODE_LOG: &str = "info,rsipstack=warn";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run { config } => {
            init_logs(cli.log_json, NODE_LOG);
            run(config).await
        }
        Cmd::Demo(args) => {
            // The live view is the output; a cluster's first election and its shutdown
            // are expected, not worth a warning over it.
            init_logs(
                cli.log_json,
                "warn,rsipstack=error,openraft=off,carillon_consensus=error",
            );
            carillon::demo::run(args).await
        }
        Cmd::Bench {
            what: BenchCmd::Sip(args),
        } => {
            init_logs(cli.log_json, "warn,rsipstack=error");
            carillon::bench::sip::run(args).await.map(|_| ())
        }
        Cmd::Bench {
            what: BenchCmd::Cluster(args),
        } => {
            init_logs(cli.log_json, "warn,rsipstack=error,openraft=error");
            carillon::bench::cluster::run(args).await
        }
        Cmd::Bench {
            what: BenchCmd::Routing(args),
        } => {
            init_logs(cli.log_json, "warn");
            carillon::bench::routing::run(&args)
        }
        Cmd::Bench {
            what: BenchCmd::Media(args),
        } => {
            init_logs(cli.log_json, "warn");
            // The bench runs its own runtimes on its own threads.
            match tokio::task::spawn_blocking(move || carillon::bench::media::run(&args)).await {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!("media bench thread failed: {e}")),
            }
        }
        Cmd::Certs { out, nodes, force } => {
            init_logs(cli.log_json, "warn");
            certs(&out, &nodes, force)
        }
        Cmd::Ctl(args) => {
            init_logs(cli.log_json, "warn");
            carillon::ctl::run(args).await
        }
        Cmd::Chaos {
            what: ChaosCmd::Run(args),
        } => {
            init_logs(cli.log_json, "warn,carillon_chaos=info");
            // The nodes it starts are this very binary.
            match std::env::current_exe() {
                Ok(exe) => carillon_chaos::run(args, exe).await.map(|_| ()),
                Err(e) => Err(anyhow::anyhow!("cannot locate the carillon binary: {e}")),
            }
        }
        Cmd::Chaos {
            what: ChaosCmd::Sim(args),
        } => {
            // Crashed simulated nodes log "raft stopped" errors by design: not news.
            init_logs(cli.log_json, "error,openraft=off");
            // Each seed builds its own single-threaded runtime: off the async workers.
            match tokio::task::spawn_blocking(move || carillon_chaos::run_sim(args)).await {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!("the simulator panicked: {e}")),
            }
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn certs(out: &std::path::Path, nodes: &[String], force: bool) -> anyhow::Result<()> {
    for n in nodes {
        if carillon::config::parse_node_id(n).is_none() {
            anyhow::bail!("`{n}` is not a node name: use n1, n2...");
        }
    }
    if out.join("ca.pem").exists() && !force {
        for n in nodes {
            carillon_consensus::certs::add(out, n, false)?;
        }
        println!(
            "signed {} with the existing CA in {}",
            nodes.join(", "),
            out.display()
        );
    } else {
        carillon_consensus::certs::generate(out, nodes, force)?;
        println!(
            "made a cluster CA and {} in {}",
            nodes.join(", "),
            out.display()
        );
    }
    Ok(())
}

async fn run(config: PathBuf) -> anyhow::Result<()> {
    let config = carillon::config::Config::load(&config)?;
    let node = carillon::node::Node::start(config).await?;
    tokio::signal::ctrl_c().await.ok();
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}
