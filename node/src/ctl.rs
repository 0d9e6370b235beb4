//! `carillon ctl`: administration of a running node through its gRPC API (no side
//! channel). `--node HOST[:PORT]` picks the node (port 9090 when left out), `--token`
//! (or `$CARILLON_TOKEN`) is the bearer token, `--ca FILE` turns on TLS and trusts that
//! CA for the node's certificate.
//!
//! The small HTTP/1.1 client below is not used by ctl: `carillon bench` reads the node's
//! HTTP status with it.

use std::time::Duration;

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use carillon_ops::api::v1 as pb;
use carillon_ops::records::Cdr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Largest response ctl reads (a CDR listing of a busy day fits comfortably).
const RESPONSE_MAX_BYTES: usize = 256 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(30);

/// GETs `path` from the node at `node` (HOST:PORT) and returns the body.
pub async fn http_get(node: &str, path: &str) -> anyhow::Result<String> {
    http_request(node, "GET", path).await
}

/// POSTs (with no body) to `path` and returns the response body.
pub async fn http_post(node: &str, path: &str) -> anyhow::Result<String> {
    http_request(node, "POST", path).await
}

async fn http_request(node: &str, method: &str, path: &str) -> anyhow::Result<String> {
    http_send(node, method, path, None).await
}

/// Sends one request with an optional JSON body and returns the response body.
pub async fn http_send(
    node: &str,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> anyhow::Result<String> {
    let work = async {
        let mut stream = TcpStream::connect(node)
            .await
            .with_context(|| format!("cannot reach node at {node} (is it running? see --node)"))?;
        let body = json.unwrap_or("");
        let content_type = if json.is_some() {
            "Content-Type: application/json\r\n"
        } else {
            ""
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {node}\r\nConnection: close\r\n{content_type}Content-Length: {}\r\nAccept: application/json\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(RESPONSE_MAX_BYTES as u64)
            .read_to_end(&mut raw)
            .await?;
        parse_response(&raw)
    };
    tokio::time::timeout(TIMEOUT, work).await.with_context(|| {
        format!(
            "node at {node} did not answer within {}s",
            TIMEOUT.as_secs()
        )
    })?
}

fn parse_response(raw: &[u8]) -> anyhow::Result<String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("malformed HTTP response")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status line")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    let text = String::from_utf8(body).context("response is not UTF-8")?;
    if status != 200 {
        bail!("node answered HTTP {status}: {}", text.trim());
    }
    Ok(text)
}

fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("malformed chunked body")?;
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .context("malformed chunk size")?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            bail!("truncated chunked body");
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

/// `carillon ctl`'s arguments.
#[derive(clap::Args)]
pub struct CtlArgs {
    /// The node's gRPC API, HOST[:PORT] (port 9090 when left out).
    #[arg(long, default_value = "127.0.0.1:9090", global = true)]
    pub node: String,
    /// Bearer token (a key of the node's [grpc.tokens]); default $CARILLON_TOKEN.
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) that signed the node's API certificate: connect over TLS.
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// The name the node's API certificate carries, when it is not the host in --node
    /// (a certificate from `carillon certs` names `n1.carillon`).
    #[arg(long, global = true)]
    pub tls_name: Option<String>,
    #[command(subcommand)]
    pub what: CtlCmd,
}

#[derive(clap::Subcommand)]
pub enum CtlCmd {
    /// The node's live status as JSON.
    Status,
    /// Call detail records.
    Cdr {
        #[command(subcommand)]
        action: CdrCmd,
    },
    /// Agents: list, state, log in and out, skills.
    Agent {
        #[command(subcommand)]
        action: AgentCmd,
    },
    /// Queues: list, create or change.
    Queue {
        #[command(subcommand)]
        action: QueueCmd,
    },
    /// VIP callers.
    Vip {
        #[command(subcommand)]
        action: VipCmd,
    },
    /// The Raft cluster: status and membership.
    Cluster {
        #[command(subcommand)]
        action: ClusterCmd,
    },
    /// The audit log of refused and sensitive API actions (admin tokens).
    Audit {
        #[command(subcommand)]
        action: AuditCmd,
    },
    /// Voicemail messages left by callers (supervisor tokens).
    Voicemail {
        #[command(subcommand)]
        action: VoicemailCmd,
    },
    /// Call recordings made on the node (supervisor tokens).
    Recordings {
        #[command(subcommand)]
        action: RecordingsCmd,
    },
    /// IVR flows of the node, changed live (admin tokens to change them).
    Flows {
        #[command(subcommand)]
        action: FlowsCmd,
    },
    /// Call control: hang up, hold, resume, blind transfer, click-to-dial, pick up,
    /// consultation (consult, complete, conference, cancel-consult).
    Call {
        #[command(subcommand)]
        action: CallCmd,
    },
    /// The live blacklist of caller numbers (list: supervisor; add, remove: admin).
    Blacklist {
        #[command(subcommand)]
        action: BlacklistCmd,
    },
    /// Join a supervisor's registered phone to a live call, or switch its mode
    /// (supervisor tokens).
    Supervise {
        #[command(subcommand)]
        mode: SuperviseCmd,
    },
}

#[derive(clap::Subcommand)]
pub enum FlowsCmd {
    /// Every flow: name, start step, step count, the numbers that run it (JSON).
    List,
    /// Add a flow, or replace the one of the same name, from a TOML file holding one
    /// flow: name, start, optional prompt_dir, and its steps as [[steps]] tables (the
    /// keys of a [[flows]] entry in the config). The next call runs it.
    Set { file: std::path::PathBuf },
    /// Remove a flow that no number runs.
    Delete { name: String },
    /// Make calls to NUMBER (a configured number) run FLOW.
    Attach { number: String, flow: String },
    /// Calls to NUMBER run no flow: they go straight to its queue.
    Detach { number: String },
}

#[derive(clap::Subcommand)]
pub enum CallCmd {
    /// End a connected call (BYE to both sides).
    Hangup {
        call: String,
        /// The agent acting (agent tokens: their own; empty means the token's agent).
        #[arg(long, default_value = "")]
        agent: String,
    },
    /// Put a connected call on hold: the caller hears the hold music.
    Hold {
        call: String,
        #[arg(long, default_value = "")]
        agent: String,
    },
    /// Take a call off hold.
    Resume {
        call: String,
        #[arg(long, default_value = "")]
        agent: String,
    },
    /// Blind transfer to exactly one of --queue, --to-agent or --number.
    Transfer {
        call: String,
        #[arg(long, default_value = "")]
        agent: String,
        #[arg(long, conflicts_with_all = ["to_agent", "number"], required_unless_present_any = ["to_agent", "number"])]
        queue: Option<String>,
        #[arg(long, conflicts_with = "number")]
        to_agent: Option<String>,
        #[arg(long)]
        number: Option<String>,
    },
    /// Click-to-dial: ring AGENT's phone, then NUMBER through the gateway.
    Dial { agent: String, number: String },
    /// AGENT picks up CALL, which rings another agent or waits in line.
    Pickup { call: String, agent: String },
    /// Consult NUMBER (through the gateway) with the caller on hold music; waits until it
    /// answers (agent and NUMBER talk) or fails (the caller is back with the agent).
    Consult {
        call: String,
        #[arg(long, default_value = "")]
        agent: String,
        #[arg(long)]
        number: String,
    },
    /// Consulted transfer: the consulted party takes the call; the agent's leg is hung up.
    Complete {
        call: String,
        #[arg(long, default_value = "")]
        agent: String,
    },
    /// Three-way conference with the consulted party: everyone hears everyone.
    Conference {
        call: String,
        #[arg(long, default_value = "")]
        agent: String,
    },
    /// Hang up the consulted party; the caller is back with the agent.
    CancelConsult {
        call: String,
        #[arg(long, default_value = "")]
        agent: String,
    },
}

#[derive(clap::Subcommand)]
pub enum BlacklistCmd {
    /// The callers refused now (configured and live changes).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Refuse calls from CALLER on every node, from now on.
    Add { caller: String },
    /// Let calls from CALLER in again (also one from the config's [blacklist]).
    Remove { caller: String },
}

/// What the supervisor does on the call.
#[derive(clap::Subcommand)]
pub enum SuperviseCmd {
    /// Hear caller and agent; nobody hears the supervisor.
    Monitor(SuperviseArgs),
    /// Only the agent hears the supervisor.
    Whisper(SuperviseArgs),
    /// Everyone hears everyone.
    Barge(SuperviseArgs),
    /// The agent is hung up; the supervisor carries on with the caller.
    TakeOver(SuperviseArgs),
}

#[derive(clap::Args)]
pub struct SuperviseArgs {
    /// The call id (`carillon ctl status` lists live calls).
    #[arg(long)]
    pub call: String,
    /// The supervisor's account id (`[[supervisors]]`); its phone is rung unless it is on
    /// the call already.
    #[arg(long)]
    pub supervisor: String,
}

#[derive(clap::Subcommand)]
pub enum RecordingsCmd {
    /// Recordings matching every filter given, oldest first. Times are a date (2024-05-01,
    /// midnight UTC; as --to, the whole day), an RFC 3339 time (2024-05-01T10:30:00Z) or
    /// Unix ms.
    Search {
        /// Started at or after this time.
        #[arg(long, value_parser = parse_from)]
        from: Option<u64>,
        /// Started before this time.
        #[arg(long, value_parser = parse_to)]
        to: Option<u64>,
        /// The caller's number, exactly as the trunk sent it.
        #[arg(long)]
        number: Option<String>,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        queue: Option<String>,
        /// At least this many seconds long.
        #[arg(long, value_parser = crate::recording::parse_seconds)]
        min_duration: Option<u64>,
        /// At most this many seconds long.
        #[arg(long, value_parser = crate::recording::parse_seconds)]
        max_duration: Option<u64>,
        /// At most this many recordings.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

fn parse_from(text: &str) -> Result<u64, String> {
    crate::recording::parse_time(text, false)
}

fn parse_to(text: &str) -> Result<u64, String> {
    crate::recording::parse_time(text, true)
}

#[derive(clap::Subcommand)]
pub enum VoicemailCmd {
    /// Messages, oldest first.
    List {
        /// One mailbox (a queue's mailbox is named after the queue unless configured).
        #[arg(long)]
        queue: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Subcommand)]
pub enum CdrCmd {
    /// List CDRs, oldest first.
    List {
        #[arg(long)]
        json: bool,
        /// At most this many records.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(clap::Subcommand)]
pub enum AgentCmd {
    /// Every configured agent with state, site and skills.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One agent's state.
    Show { agent: String },
    /// Log an agent in (their phone must be registered at the node).
    Login { agent: String },
    /// Log an agent out (supervisor).
    Logout { agent: String },
    /// Make a logged-in agent ready to take calls.
    Ready { agent: String },
    /// Make an agent not ready, with a reason code.
    NotReady {
        agent: String,
        #[arg(long, default_value = "break")]
        reason: String,
    },
    /// Force an agent's state (supervisor): ready, not_ready or logged_out.
    Force {
        agent: String,
        state: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Replace an agent's skills (`name` or `name:level`, comma separated).
    Skills {
        agent: String,
        #[arg(value_delimiter = ',')]
        skills: Vec<String>,
    },
}

#[derive(clap::Subcommand)]
pub enum QueueCmd {
    /// Queues with their settings and who waits in them.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Create a queue, or change the given settings of one (live, cluster-wide).
    Set {
        name: String,
        #[arg(long)]
        skill: Option<String>,
        #[arg(long)]
        wrapup_ms: Option<u64>,
        #[arg(long)]
        ring_timeout_ms: Option<u64>,
        #[arg(long)]
        local_wait_ms: Option<u64>,
        /// longest_idle, round_robin, fewest_calls, least_talk_time, top_down, random,
        /// ring_all.
        #[arg(long)]
        strategy: Option<String>,
        #[arg(long)]
        min_level: Option<u32>,
        #[arg(long)]
        max_wait_ms: Option<u64>,
        #[arg(long)]
        queue_len_max: Option<u64>,
    },
}

#[derive(clap::Subcommand)]
pub enum VipCmd {
    /// Make a caller number a VIP: wait up to --wait-ms for --agent, then --priority.
    Set {
        caller: String,
        #[arg(long, default_value = "")]
        agent: String,
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        #[arg(long, default_value_t = 1)]
        priority: u32,
    },
    /// Take a caller number off the VIP list.
    Remove { caller: String },
}

#[derive(clap::Subcommand)]
pub enum ClusterCmd {
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

#[derive(clap::Subcommand)]
pub enum AuditCmd {
    /// Audit entries, oldest first (the newest --limit).
    List {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

/// Runs one `carillon ctl` command.
pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let t = Target {
        node: args.node,
        token: args.token,
        ca: args.ca,
        tls_name: args.tls_name,
    };
    match args.what {
        CtlCmd::Status => status(&t).await,
        CtlCmd::Supervise { mode } => supervise(&t, mode).await,
        CtlCmd::Cdr {
            action: CdrCmd::List { json, limit },
        } => cdr_list(&t, json, limit).await,
        CtlCmd::Agent { action } => match action {
            AgentCmd::List { json } => agent_list(&t, json).await,
            AgentCmd::Show { agent: a } => agent(&t, &a, AgentAction::Show).await,
            AgentCmd::Login { agent: a } => agent(&t, &a, AgentAction::Login).await,
            AgentCmd::Logout { agent: a } => agent(&t, &a, AgentAction::Logout).await,
            AgentCmd::Ready { agent: a } => agent(&t, &a, AgentAction::Ready).await,
            AgentCmd::NotReady { agent: a, reason } => {
                agent(&t, &a, AgentAction::NotReady { reason }).await
            }
            AgentCmd::Force {
                agent: a,
                state,
                reason,
            } => agent(&t, &a, AgentAction::Force { state, reason }).await,
            AgentCmd::Skills { agent: a, skills } => {
                agent(&t, &a, AgentAction::Skills { skills }).await
            }
        },
        CtlCmd::Queue { action } => match action {
            QueueCmd::List { json } => queue_list(&t, json).await,
            QueueCmd::Set {
                name,
                skill,
                wrapup_ms,
                ring_timeout_ms,
                local_wait_ms,
                strategy,
                min_level,
                max_wait_ms,
                queue_len_max,
            } => {
                let req = pb::SetQueueRequest {
                    name,
                    skill,
                    wrapup_ms,
                    ring_timeout_ms,
                    local_wait_ms,
                    strategy,
                    min_level,
                    max_wait_ms,
                    queue_len_max,
                };
                queue_set(&t, req).await
            }
        },
        CtlCmd::Flows { action } => flows(&t, action).await,
        CtlCmd::Vip { action } => {
            let req = match action {
                VipCmd::Set {
                    caller,
                    agent,
                    wait_ms,
                    priority,
                } => pb::SetVipRequest {
                    caller,
                    remove: false,
                    agent,
                    wait_ms,
                    priority,
                },
                VipCmd::Remove { caller } => pb::SetVipRequest {
                    caller,
                    remove: true,
                    ..Default::default()
                },
            };
            vip_set(&t, req).await
        }
        CtlCmd::Cluster { action } => match action {
            ClusterCmd::Status { json } => cluster_status(&t, json).await,
            ClusterCmd::AddNode {
                id,
                addr,
                site,
                sip,
                http,
            } => {
                cluster_add_node(
                    &t,
                    &id,
                    &addr,
                    site.as_deref(),
                    sip.as_deref(),
                    http.as_deref(),
                )
                .await
            }
            ClusterCmd::RemoveNode { id } => cluster_remove_node(&t, &id).await,
        },
        CtlCmd::Audit {
            action: AuditCmd::List { json, limit },
        } => audit_list(&t, json, limit).await,
        CtlCmd::Voicemail {
            action: VoicemailCmd::List { queue, json },
        } => voicemail_list(&t, queue.unwrap_or_default(), json).await,
        CtlCmd::Recordings {
            action:
                RecordingsCmd::Search {
                    from,
                    to,
                    number,
                    agent,
                    queue,
                    min_duration,
                    max_duration,
                    limit,
                    json,
                },
        } => {
            let req = pb::SearchRecordingsRequest {
                from_ms: from,
                to_ms: to,
                number: number.unwrap_or_default(),
                agent: agent.unwrap_or_default(),
                queue: queue.unwrap_or_default(),
                min_duration_ms: min_duration,
                max_duration_ms: max_duration,
                limit,
            };
            recordings_search(&t, req, json).await
        }
        CtlCmd::Call { action } => call_control(&t, action).await,
        CtlCmd::Blacklist { action } => blacklist(&t, action).await,
    }
}

/// `ctl call ...`: prints the call id and what the node did.
pub async fn call_control(t: &Target, action: CallCmd) -> anyhow::Result<()> {
    use pb::transfer_request::Target as To;
    let api = t.connect().await?;
    let mut calls = api.calls();
    let request = |call: String, agent: String| pb::CallRequest { call, agent };
    let reply = match action {
        CallCmd::Hangup { call, agent } => calls.hangup(request(call, agent)).await,
        CallCmd::Hold { call, agent } => calls.hold(request(call, agent)).await,
        CallCmd::Resume { call, agent } => calls.resume(request(call, agent)).await,
        CallCmd::Transfer {
            call,
            agent,
            queue,
            to_agent,
            number,
        } => {
            let target = match (queue, to_agent, number) {
                (Some(q), _, _) => To::Queue(q),
                (_, Some(a), _) => To::ToAgent(a),
                (_, _, Some(n)) => To::Number(n),
                _ => bail!("name the target: --queue, --to-agent or --number"),
            };
            let req = pb::TransferRequest {
                call,
                agent,
                target: Some(target),
            };
            calls.blind_transfer(req).await
        }
        CallCmd::Dial { agent, number } => {
            calls.make_call(pb::MakeCallRequest { agent, number }).await
        }
        CallCmd::Pickup { call, agent } => calls.pickup(request(call, agent)).await,
        CallCmd::Consult {
            call,
            agent,
            number,
        } => {
            let req = pb::ConsultRequest {
                call,
                agent,
                target: Some(pb::consult_request::Target::Number(number)),
            };
            calls.consult(req).await
        }
        CallCmd::Complete { call, agent } => calls.consulted_transfer(request(call, agent)).await,
        CallCmd::Conference { call, agent } => calls.conference(request(call, agent)).await,
        CallCmd::CancelConsult { call, agent } => calls.cancel_consult(request(call, agent)).await,
    }
    .map_err(explain)?
    .into_inner();
    println!(
        "{}",
        serde_json::json!({ "call": reply.call, "outcome": reply.outcome })
    );
    Ok(())
}

/// `ctl blacklist ...`: prints the blacklist in effect after the change.
pub async fn blacklist(t: &Target, action: BlacklistCmd) -> anyhow::Result<()> {
    let mut admin = t.connect().await?.admin();
    let (reply, json) = match action {
        BlacklistCmd::List { json } => (
            admin.list_blacklist(pb::ListBlacklistRequest {}).await,
            json,
        ),
        BlacklistCmd::Add { caller } => (
            admin
                .set_blacklist(pb::SetBlacklistRequest {
                    caller,
                    remove: false,
                })
                .await,
            false,
        ),
        BlacklistCmd::Remove { caller } => (
            admin
                .set_blacklist(pb::SetBlacklistRequest {
                    caller,
                    remove: true,
                })
                .await,
            false,
        ),
    };
    let callers = reply.map_err(explain)?.into_inner().callers;
    if json {
        return print_json(&callers);
    }
    for caller in callers {
        println!("{caller}");
    }
    Ok(())
}

/// The API's default port, used when `--node` names only a host.
pub const GRPC_PORT_DEFAULT: u16 = 9090;
/// Largest reply ctl accepts (a CDR listing of a busy day fits comfortably).
const REPLY_MAX_BYTES: usize = 256 * 1024 * 1024;

/// Where and how ctl reaches the API.
#[derive(Clone, Debug)]
pub struct Target {
    /// HOST or HOST:PORT.
    pub node: String,
    pub token: Option<String>,
    /// CA certificate (PEM) that signed the node's API certificate; TLS when set.
    pub ca: Option<PathBuf>,
    /// Overrides the name checked against the node's certificate.
    pub tls_name: Option<String>,
}

/// Adds the bearer token to every request.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// A connected API client: one channel, every service over it.
pub struct Api {
    channel: Channel,
    bearer: Bearer,
}

impl Target {
    /// `node` with the default port added when it has none.
    pub fn authority(&self) -> String {
        let n = self.node.trim();
        let has_port = match n.rsplit_once(':') {
            // A bare IPv6 address has colons but no port unless bracketed.
            Some((host, port)) => {
                port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
            }
            None => false,
        };
        if has_port {
            n.to_string()
        } else if n.contains(':') && !n.starts_with('[') {
            format!("[{n}]:{GRPC_PORT_DEFAULT}")
        } else {
            format!("{n}:{GRPC_PORT_DEFAULT}")
        }
    }

    pub async fn connect(&self) -> anyhow::Result<Api> {
        let authority = self.authority();
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{authority}"))
            .with_context(|| format!("--node {}: not HOST[:PORT]", self.node))?
            .connect_timeout(TIMEOUT)
            .timeout(TIMEOUT);
        if let Some(ca) = &self.ca {
            let pem =
                std::fs::read(ca).with_context(|| format!("--ca: cannot read {}", ca.display()))?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            if let Some(name) = &self.tls_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint
                .tls_config(tls)
                .context("--ca: not a usable CA certificate")?;
        }
        let channel = endpoint.connect().await.with_context(|| {
            format!("cannot reach the node's gRPC API at {authority} (is it running? see --node, and --ca for TLS)")
        })?;
        let token = self
            .token
            .clone()
            .or_else(|| std::env::var("CARILLON_TOKEN").ok())
            .filter(|t| !t.is_empty());
        let bearer = match token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .context("--token: must be printable ASCII")?,
            ),
            None => None,
        };
        Ok(Api {
            channel,
            bearer: Bearer(bearer),
        })
    }
}

macro_rules! client {
    ($name:ident, $module:ident, $client:ident) => {
        pub fn $name(&self) -> pb::$module::$client<Authed> {
            pb::$module::$client::with_interceptor(self.channel.clone(), self.bearer.clone())
                .max_decoding_message_size(REPLY_MAX_BYTES)
        }
    };
}

impl Api {
    client!(agents, agent_service_client, AgentServiceClient);
    client!(calls, call_service_client, CallServiceClient);
    client!(
        supervisor,
        supervisor_service_client,
        SupervisorServiceClient
    );
    client!(events, event_service_client, EventServiceClient);
    client!(admin, admin_service_client, AdminServiceClient);
    client!(cluster, cluster_service_client, ClusterServiceClient);
    client!(records, record_service_client, RecordServiceClient);
    client!(audit, audit_service_client, AuditServiceClient);
}

/// A refused or failed call in words an operator can act on.
fn explain(status: tonic::Status) -> anyhow::Error {
    let hint = match status.code() {
        tonic::Code::Unauthenticated => " (pass --token or set CARILLON_TOKEN)",
        tonic::Code::PermissionDenied => " (this token's role may not do that)",
        tonic::Code::Unavailable => " (is the node running? for TLS pass --ca)",
        _ => "",
    };
    anyhow::anyhow!("{:?}: {}{hint}", status.code(), status.message())
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `ctl supervise MODE --call ID --supervisor ID`: prints the outcome.
pub async fn supervise(t: &Target, mode: SuperviseCmd) -> anyhow::Result<()> {
    let mut client = t.connect().await?.supervisor();
    let (args, reply) = match mode {
        SuperviseCmd::Monitor(a) => {
            let req = pb::SuperviseRequest {
                call: a.call.clone(),
                supervisor_phone: a.supervisor.clone(),
            };
            (a, client.monitor(req).await)
        }
        SuperviseCmd::Whisper(a) => {
            let req = pb::SuperviseRequest {
                call: a.call.clone(),
                supervisor_phone: a.supervisor.clone(),
            };
            (a, client.whisper(req).await)
        }
        SuperviseCmd::Barge(a) => {
            let req = pb::SuperviseRequest {
                call: a.call.clone(),
                supervisor_phone: a.supervisor.clone(),
            };
            (a, client.barge(req).await)
        }
        SuperviseCmd::TakeOver(a) => {
            let req = pb::SuperviseRequest {
                call: a.call.clone(),
                supervisor_phone: a.supervisor.clone(),
            };
            (a, client.take_over(req).await)
        }
    };
    let reply = reply.map_err(explain)?.into_inner();
    println!(
        "call {}: supervisor {} {}",
        reply.call, args.supervisor, reply.outcome
    );
    Ok(())
}

/// `ctl status`: the node's live status as JSON (the document HTTP /api/status serves).
pub async fn status(t: &Target) -> anyhow::Result<()> {
    let reply = t
        .connect()
        .await?
        .admin()
        .status(pb::StatusRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    println!("{}", reply.json);
    Ok(())
}

pub async fn cdr_list(t: &Target, json: bool, limit: usize) -> anyhow::Result<()> {
    let reply = t
        .connect()
        .await?
        .records()
        .list_cdrs(pb::ListCdrsRequest {
            since_ms: 0,
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
        })
        .await
        .map_err(explain)?
        .into_inner();
    let cdrs: Vec<Cdr> = reply
        .cdrs
        .into_iter()
        .map(crate::grpc::cdr_from_pb)
        .collect();
    print_cdrs(&cdrs, json)
}

fn agent_json(info: Option<pb::AgentInfo>) -> serde_json::Value {
    let a = info.unwrap_or_default();
    serde_json::json!({
        "agent": a.id,
        "state": a.state,
        "detail": a.detail,
        "site": a.site,
        "skills": a.skills,
        "registered_here": a.registered_here,
    })
}

/// What `ctl agent` can do to one agent.
pub enum AgentAction {
    Show,
    Login,
    Logout,
    Ready,
    NotReady { reason: String },
    Force { state: String, reason: String },
    Skills { skills: Vec<String> },
}

pub async fn agent(t: &Target, agent: &str, action: AgentAction) -> anyhow::Result<()> {
    let api = t.connect().await?;
    let req = pb::AgentRequest {
        agent: agent.to_string(),
    };
    let reply = match action {
        AgentAction::Show => api.agents().get(req).await,
        AgentAction::Login => api.agents().login(req).await,
        AgentAction::Logout => api.supervisor().force_logout(req).await,
        AgentAction::Ready => {
            api.agents()
                .set_state(pb::SetStateRequest {
                    agent: agent.into(),
                    ready: true,
                    reason: String::new(),
                })
                .await
        }
        AgentAction::NotReady { reason } => {
            api.agents()
                .set_state(pb::SetStateRequest {
                    agent: agent.into(),
                    ready: false,
                    reason,
                })
                .await
        }
        AgentAction::Force { state, reason } => {
            api.supervisor()
                .force_state(pb::ForceStateRequest {
                    agent: agent.into(),
                    state,
                    reason,
                })
                .await
        }
        AgentAction::Skills { skills } => {
            api.admin()
                .set_agent_skills(pb::SetAgentSkillsRequest {
                    agent: agent.into(),
                    skills,
                })
                .await
        }
    }
    .map_err(explain)?
    .into_inner();
    println!("{}", agent_json(reply.agent));
    Ok(())
}

pub async fn agent_list(t: &Target, json: bool) -> anyhow::Result<()> {
    let reply = t
        .connect()
        .await?
        .admin()
        .list_agents(pb::ListAgentsRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    if json {
        let list: Vec<_> = reply
            .agents
            .into_iter()
            .map(|a| agent_json(Some(a)))
            .collect();
        return print_json(&list);
    }
    println!(
        "{:<10} {:<11} {:<20} {:<10} {:<5} SKILLS",
        "AGENT", "STATE", "DETAIL", "SITE", "HERE"
    );
    for a in &reply.agents {
        println!(
            "{:<10} {:<11} {:<20} {:<10} {:<5} {}",
            a.id,
            a.state,
            truncate(&a.detail, 20),
            a.site,
            if a.registered_here { "yes" } else { "no" },
            a.skills.join(",")
        );
    }
    Ok(())
}

fn queue_json(q: &pb::QueueInfo) -> serde_json::Value {
    let s = q.stats.clone().unwrap_or_default();
    serde_json::json!({
        "name": q.name,
        "skill": q.skill,
        "wrapup_ms": q.wrapup_ms,
        "ring_timeout_ms": q.ring_timeout_ms,
        "local_wait_ms": q.local_wait_ms,
        "strategy": q.strategy,
        "min_level": q.min_level,
        "max_wait_ms": q.max_wait_ms,
        "queue_len_max": q.queue_len_max,
        "waiting": s.waiting,
        "offering": s.offering,
        "connected": s.connected,
        "longest_wait_ms": s.longest_wait_ms,
    })
}

pub async fn queue_list(t: &Target, json: bool) -> anyhow::Result<()> {
    let reply = t
        .connect()
        .await?
        .admin()
        .list_queues(pb::ListQueuesRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    if json {
        let list: Vec<_> = reply.queues.iter().map(queue_json).collect();
        return print_json(&list);
    }
    println!(
        "{:<12} {:<10} {:<15} {:>8} {:>9} {:>7} {:>8} {:>9} {:>10}",
        "QUEUE",
        "SKILL",
        "STRATEGY",
        "RING MS",
        "WRAPUP MS",
        "WAITING",
        "RINGING",
        "CONNECTED",
        "LONGEST S"
    );
    for q in &reply.queues {
        let s = q.stats.clone().unwrap_or_default();
        println!(
            "{:<12} {:<10} {:<15} {:>8} {:>9} {:>7} {:>8} {:>9} {:>10.1}",
            q.name,
            q.skill,
            q.strategy,
            q.ring_timeout_ms,
            q.wrapup_ms,
            s.waiting,
            s.offering,
            s.connected,
            s.longest_wait_ms as f64 / 1000.0
        );
    }
    Ok(())
}

pub async fn queue_set(t: &Target, req: pb::SetQueueRequest) -> anyhow::Result<()> {
    let reply = t
        .connect()
        .await?
        .admin()
        .set_queue(req)
        .await
        .map_err(explain)?
        .into_inner();
    println!("{}", queue_json(&reply));
    Ok(())
}

pub async fn flows(t: &Target, action: FlowsCmd) -> anyhow::Result<()> {
    let mut admin = t.connect().await?.admin();
    let reply = match action {
        FlowsCmd::List => admin.list_flows(pb::ListFlowsRequest {}).await,
        FlowsCmd::Set { file } => {
            let toml = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            admin.set_flow(pb::SetFlowRequest { toml }).await
        }
        FlowsCmd::Delete { name } => admin.delete_flow(pb::DeleteFlowRequest { name }).await,
        FlowsCmd::Attach { number, flow } => {
            admin
                .attach_flow(pb::AttachFlowRequest { number, flow })
                .await
        }
        FlowsCmd::Detach { number } => {
            admin
                .attach_flow(pb::AttachFlowRequest {
                    number,
                    flow: String::new(),
                })
                .await
        }
    }
    .map_err(explain)?
    .into_inner();
    let flows: Vec<serde_json::Value> = reply
        .flows
        .iter()
        .map(|f| {
            serde_json::json!({ "name": f.name, "start": f.start, "steps": f.steps, "numbers": f.numbers })
        })
        .collect();
    println!("{}", serde_json::json!({ "flows": flows }));
    Ok(())
}

pub async fn vip_set(t: &Target, req: pb::SetVipRequest) -> anyhow::Result<()> {
    let r = t
        .connect()
        .await?
        .admin()
        .set_vip(req)
        .await
        .map_err(explain)?
        .into_inner();
    println!(
        "{}",
        serde_json::json!({ "caller": r.caller, "vip": r.vip, "agent": r.agent, "wait_ms": r.wait_ms, "priority": r.priority })
    );
    Ok(())
}

pub async fn audit_list(t: &Target, json: bool, limit: usize) -> anyhow::Result<()> {
    let reply = t
        .connect()
        .await?
        .audit()
        .list(pb::ListAuditRequest {
            since_ms: 0,
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
        })
        .await
        .map_err(explain)?
        .into_inner();
    let entries: Vec<carillon_ops::audit::AuditEntry> = reply
        .entries
        .into_iter()
        .map(|e| carillon_ops::audit::AuditEntry {
            at_ms: e.at_ms,
            principal: e.principal,
            role: e.role,
            action: e.action,
            target: e.target,
            outcome: e.outcome,
            detail: e.detail,
            peer: e.peer,
        })
        .collect();
    if json {
        return print_json(&entries);
    }
    println!(
        "{:<14} {:<12} {:<10} {:<32} {:<12} {:<8} DETAIL",
        "AT MS", "WHO", "ROLE", "ACTION", "TARGET", "OUTCOME"
    );
    for e in &entries {
        println!(
            "{:<14} {:<12} {:<10} {:<32} {:<12} {:<8} {}",
            e.at_ms,
            truncate(&e.principal, 12),
            e.role,
            e.action,
            truncate(&e.target, 12),
            e.outcome,
            truncate(&e.detail, 80)
        );
    }
    println!(
        "{} entr{}",
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" }
    );
    Ok(())
}

/// `ctl voicemail list`: messages with caller, mailbox, start, length and file.
pub async fn voicemail_list(t: &Target, mailbox: String, json: bool) -> anyhow::Result<()> {
    let reply = t
        .connect()
        .await?
        .records()
        .list_voicemail(pb::ListVoicemailRequest { mailbox })
        .await
        .map_err(explain)?
        .into_inner();
    let rows: Vec<serde_json::Value> = reply
        .messages
        .iter()
        .map(|m| {
            serde_json::json!({
                "call_id": m.call_id,
                "mailbox": m.mailbox,
                "caller": m.caller,
                "dialled": m.dialled,
                "queue": m.queue,
                "start_ms": m.start_ms,
                "duration_ms": m.duration_ms,
                "path": m.path,
            })
        })
        .collect();
    if json {
        return print_json(&rows);
    }
    println!(
        "{:<28} {:<12} {:<14} {:<14} {:>8}  FILE",
        "CALL ID", "MAILBOX", "CALLER", "START MS", "LENGTH S"
    );
    for m in &reply.messages {
        println!(
            "{:<28} {:<12} {:<14} {:<14} {:>8.1}  {}",
            m.call_id,
            truncate(&m.mailbox, 12),
            truncate(&m.caller, 14),
            m.start_ms,
            m.duration_ms as f64 / 1000.0,
            m.path
        );
    }
    println!("{} message(s)", reply.messages.len());
    Ok(())
}

/// `ctl recordings search`: matching recordings with call, agent, caller, start, length,
/// size and file.
pub async fn recordings_search(
    t: &Target,
    req: pb::SearchRecordingsRequest,
    json: bool,
) -> anyhow::Result<()> {
    let reply = t
        .connect()
        .await?
        .records()
        .search_recordings(req)
        .await
        .map_err(explain)?
        .into_inner();
    if json {
        let rows: Vec<serde_json::Value> = reply
            .recordings
            .iter()
            .map(|r| {
                serde_json::json!({
                    "call_id": r.call_id,
                    "agent": r.agent,
                    "queue": r.queue,
                    "caller": r.caller,
                    "start_ms": r.start_ms,
                    "duration_ms": r.duration_ms,
                    "path": r.path,
                    "size_bytes": r.size_bytes,
                    "node": r.node,
                    "frames_dropped": r.frames_dropped,
                    "paused": r.paused,
                })
            })
            .collect();
        return print_json(&serde_json::json!({
            "recordings": rows,
            "truncated": reply.truncated,
        }));
    }
    println!(
        "{:<28} {:<8} {:<10} {:<14} {:<24} {:>8} {:>10}  FILE",
        "CALL ID", "AGENT", "QUEUE", "CALLER", "START (UTC)", "LENGTH S", "BYTES"
    );
    for r in &reply.recordings {
        println!(
            "{:<28} {:<8} {:<10} {:<14} {:<24} {:>8.1} {:>10}  {}{}",
            r.call_id,
            truncate(&r.agent, 8),
            truncate(&r.queue, 10),
            truncate(&r.caller, 14),
            crate::recording::format_utc(r.start_ms),
            r.duration_ms as f64 / 1000.0,
            r.size_bytes,
            r.path,
            if r.paused {
                "  (cut short at the disk limit)"
            } else {
                ""
            }
        );
    }
    let more = if reply.truncated {
        " (more matched: narrow the search or raise --limit)"
    } else {
        ""
    };
    println!("{} recording(s){more}", reply.recordings.len());
    Ok(())
}

fn print_cdrs(cdrs: &[Cdr], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&cdrs);
    }
    println!(
        "{:<28} {:<14} {:<8} {:<10} {:<8} {:<11} {:>8} {:>9} {:<8}",
        "CALL ID",
        "CALLER",
        "DIALLED",
        "QUEUE",
        "AGENT",
        "DISPOSITION",
        "WAIT S",
        "TALK S",
        "HANGUP"
    );
    for c in cdrs {
        let talk = c
            .answered_at_ms
            .map(|a| c.ended_at_ms.saturating_sub(a) as f64 / 1000.0)
            .unwrap_or(0.0);
        println!(
            "{:<28} {:<14} {:<8} {:<10} {:<8} {:<11} {:>8.1} {:>9.1} {:<8}",
            c.call_id,
            truncate(&c.caller, 14),
            truncate(&c.dialled, 8),
            truncate(&c.queue, 10),
            c.agent.as_deref().unwrap_or("-"),
            c.disposition,
            c.wait_ms as f64 / 1000.0,
            talk,
            c.hangup_by
        );
    }
    println!("{} call(s)", cdrs.len());
    Ok(())
}

/// `ctl cluster status`: leader, term, and every member with how far it has applied.
pub async fn cluster_status(t: &Target, json: bool) -> anyhow::Result<()> {
    let s = t
        .connect()
        .await?
        .cluster()
        .status(pb::ClusterStatusRequest {})
        .await
        .map_err(explain)?
        .into_inner();
    // The same document the HTTP /api/cluster serves, so scripts keep working.
    let status = serde_json::json!({
        "leader": (!s.leader.is_empty()).then_some(&s.leader),
        "term": s.term,
        "node": s.node,
        "last_log_index": s.last_log_index,
        "last_applied": s.last_applied,
        "members": s.members.iter().map(|m| serde_json::json!({
            "id": m.id,
            "addr": m.addr,
            "site": m.site,
            "sip": m.sip,
            "role": m.role,
            "last_applied": m.last_applied,
            "lag": m.lag,
            "reachable": m.reachable,
            "up": m.up,
            "last_lease_at": m.last_lease_at,
        })).collect::<Vec<_>>(),
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!(
        "leader {}  term {}  (asked {}; last log index {})",
        text(&status["leader"]),
        text(&status["term"]),
        text(&status["node"]),
        text(&status["last_log_index"])
    );
    println!(
        "{:<6} {:<22} {:<10} {:<8} {:>12} {:>6} {:<9}",
        "ID", "RAFT ADDR", "SITE", "ROLE", "LAST APPLIED", "LAG", "REACHABLE"
    );
    for m in status["members"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        println!(
            "{:<6} {:<22} {:<10} {:<8} {:>12} {:>6} {:<9}",
            text(&m["id"]),
            text(&m["addr"]),
            text(&m["site"]),
            text(&m["role"]),
            text(&m["last_applied"]),
            text(&m["lag"]),
            if m["reachable"].as_bool() == Some(true) {
                "yes"
            } else {
                "NO"
            }
        );
    }
    Ok(())
}

/// `ctl cluster add-node ID ADDR`: sent to the leader, which adds a learner, waits for it
/// to catch up and promotes it.
pub async fn cluster_add_node(
    t: &Target,
    id: &str,
    addr: &str,
    site: Option<&str>,
    sip: Option<&str>,
    http: Option<&str>,
) -> anyhow::Result<()> {
    let reply = t
        .connect()
        .await?
        .cluster()
        .add_node(pb::AddNodeRequest {
            id: id.into(),
            addr: addr.into(),
            site: site.unwrap_or_default().into(),
            sip: sip.unwrap_or_default().into(),
            http: http.unwrap_or_default().into(),
        })
        .await
        .map_err(explain)?
        .into_inner();
    println!(
        "{}",
        serde_json::json!({ "added": reply.outcome.trim_start_matches("added ") })
    );
    Ok(())
}

pub async fn cluster_remove_node(t: &Target, id: &str) -> anyhow::Result<()> {
    let reply = t
        .connect()
        .await?
        .cluster()
        .remove_node(pb::RemoveNodeRequest { id: id.into() })
        .await
        .map_err(explain)?
        .into_inner();
    println!(
        "{}",
        serde_json::json!({ "removed": reply.outcome.trim_start_matches("removed ") })
    );
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_gets_the_default_port() {
        let t = |n: &str| {
            Target {
                node: n.into(),
                token: None,
                ca: None,
                tls_name: None,
            }
            .authority()
        };
        assert_eq!(t("127.0.0.1"), "127.0.0.1:9090");
        assert_eq!(t("127.0.0.1:7000"), "127.0.0.1:7000");
        assert_eq!(t("node1"), "node1:9090");
        assert_eq!(t("::1"), "[::1]:9090");
        assert_eq!(t("[::1]:7000"), "[::1]:7000");
    }

    #[test]
    fn reads_plain_and_chunked_responses() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]";
        assert_eq!(parse_response(plain).expect("plain"), "[]");
        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n[1\r\n1\r\n]\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).expect("chunked"), "[1]");
        let err = b"HTTP/1.1 500 Internal Server Error\r\n\r\nboom";
        assert!(parse_response(err)
            .expect_err("500")
            .to_string()
            .contains("boom"));
    }
}
