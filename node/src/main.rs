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
    /// Administer a running node.
    Ctl {
        /// The node's HTTP address (HOST:PORT).
        #[arg(long, default_value = "127.0.0.1:8080", global = true)]
        node: String,
        #[command(subcommand)]
        what: CtlCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// SIPp callers -> node -> SIPp agents: highest zero-failure call rate, post-dial
    /// delay, memory per concurrent call.
    Sip(carillon::bench::sip::SipBenchArgs),
}

#[derive(Subcommand)]
enum CtlCmd {
    /// Call detail records.
    Cdr {
        #[command(subcommand)]
        action: CdrCmd,
    },
    /// The node's live status as JSON.
    Status,
    /// Agent state: make an agent ready or not ready.
    Agent {
        #[command(subcommand)]
        action: AgentCmd,
    },
}

#[derive(Subcommand)]
enum AgentCmd {
    /// Make a logged-in agent ready to take calls.
    Ready { agent: String },
    /// Make an agent not ready, with a reason code.
    NotReady {
        agent: String,
        #[arg(long, default_value = "break")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum CdrCmd {
    /// List CDRs, oldest first.
    List {
        #[arg(long)]
        json: bool,
        /// At most this many records.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
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
            init_logs(cli.log_json, "warn,rsipstack=error");
            carillon::demo::run(args).await
        }
        Cmd::Bench {
            what: BenchCmd::Sip(args),
        } => {
            init_logs(cli.log_json, "warn,rsipstack=error");
            carillon::bench::sip::run(args).await
        }
        Cmd::Ctl { node, what } => {
            init_logs(cli.log_json, "warn");
            match what {
                CtlCmd::Cdr {
                    action: CdrCmd::List { json, limit },
                } => carillon::ctl::cdr_list(&node, json, limit).await,
                CtlCmd::Status => carillon::ctl::http_get(&node, "/api/status")
                    .await
                    .map(|body| println!("{body}")),
                CtlCmd::Agent { action } => {
                    let path = match action {
                        AgentCmd::Ready { agent } => format!("/api/agents/{agent}/ready"),
                        AgentCmd::NotReady { agent, reason } => {
                            format!("/api/agents/{agent}/not-ready?reason={reason}")
                        }
                    };
                    carillon::ctl::http_post(&node, &path)
                        .await
                        .map(|body| println!("{body}"))
                }
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

async fn run(config: PathBuf) -> anyhow::Result<()> {
    let config = carillon::config::Config::load(&config)?;
    let node = carillon::node::Node::start(config).await?;
    tokio::signal::ctrl_c().await.ok();
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}
