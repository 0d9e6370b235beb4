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
    /// The Raft cluster: status and membership.
    Cluster {
        #[command(subcommand)]
        action: ClusterCmd,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Leader, term, members, last applied index and lag per node.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Add a node: it joins as a learner, catches up, then becomes a voter. Send it to
    /// the leader.
    AddNode {
        /// `n4` (or 4).
        id: String,
        /// Its Raft (QUIC) address, HOST:PORT.
        addr: String,
        /// Its site (default `default`).
        #[arg(long)]
        site: Option<String>,
        /// Its SIP address (default: the Raft host, port 5060).
        #[arg(long)]
        sip: Option<String>,
        /// Its HTTP address (default: the Raft host, port 8080).
        #[arg(long)]
        http: Option<String>,
    },
    /// Remove a node from the cluster. Send it to the leader.
    RemoveNode { id: String },
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
        Cmd::Certs { out, nodes, force } => {
            init_logs(cli.log_json, "warn");
            certs(&out, &nodes, force)
        }
        Cmd::Ctl { node, what } => {
            init_logs(cli.log_json, "warn");
            match what {
                CtlCmd::Cdr {
                    action: CdrCmd::List { json, limit },
                } => carillon::ctl::cdr_list(&node, json, limit).await,
                CtlCmd::Cluster { action } => match action {
                    ClusterCmd::Status { json } => carillon::ctl::cluster_status(&node, json).await,
                    ClusterCmd::AddNode {
                        id,
                        addr,
                        site,
                        sip,
                        http,
                    } => {
                        carillon::ctl::cluster_add_node(
                            &node,
                            &id,
                            &addr,
                            site.as_deref(),
                            sip.as_deref(),
                            http.as_deref(),
                        )
                        .await
                    }
                    ClusterCmd::RemoveNode { id } => {
                        carillon::ctl::cluster_remove_node(&node, &id).await
                    }
                },
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
        println!("signed {} with the existing CA in {}", nodes.join(", "), out.display());
    } else {
        carillon_consensus::certs::generate(out, nodes, force)?;
        println!("made a cluster CA and {} in {}", nodes.join(", "), out.display());
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
