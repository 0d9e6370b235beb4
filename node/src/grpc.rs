//! The gRPC API (defined in `ops/proto`, generated in `carillon_ops::api`) served over the
//! node's shared state: agent sessions, call control, supervisor actions, event streams,
//! administration, the cluster, records and the audit log, with server reflection.
//!
//! Every call is authenticated by a bearer token from `[grpc.tokens]` and checked against
//! its role before anything is proposed; an agent token acts only on its own agent.
//! Refusals and every change are appended to `<data_dir>/audit.jsonl`. Changes go through
//! routing commands, so they are live on every node of a cluster. With no TLS
//! configured the API listens in plaintext, which config validation allows on loopback
//! only. What the node cannot do yet answers UNIMPLEMENTED, naming what is missing.

// tonic's handlers return `Status` by value; the helpers they call return it the same way.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use carillon_ops::api::v1 as pb;
use carillon_ops::audit::{AuditEntry, AuditLog};
use carillon_ops::auth::{AuthError, Principal, Role, TokenGrant, Tokens};
use carillon_ops::records::{Cdr, RecordingEntry, RecordingQuery};
use carillon_routing::{
    AgentState, Command, Event, ForcedState, Party, QueueConfig, Strategy, Vip,
};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::call::control::CallAction;
use crate::call::outbound::OutboundError;
use crate::call::registry::ControlError;
use crate::call::supervise::Mode;
use crate::clock::now_ms;
use crate::node::Shared;
use crate::routing_log::ProposeError;

/// Event-stream subscribers at once, node-wide.
pub const STREAMS_MAX: usize = 256;
/// Messages one subscriber may have queued before it is reported as lagging.
const STREAM_BUFFER_MAX: usize = 256;
/// Requests in flight on one connection.
const CONCURRENCY_PER_CONNECTION_MAX: usize = 256;
/// Default and largest page of CDRs and audit entries.
const PAGE_DEFAULT: usize = 1_000;
const PAGE_MAX: usize = 100_000;
/// Longest reason code, id or number accepted from a caller, in bytes.
const TEXT_MAX_BYTES: usize = 128;
/// Queue statistics interval bounds.
/// Largest flow accepted by `SetFlow` (a 256-step flow is far smaller).
const FLOW_TOML_BYTES_MAX: usize = 256 * 1024;
const STATS_INTERVAL_MIN_MS: u64 = 200;
const STATS_INTERVAL_MAX_MS: u64 = 60_000;
const STATS_INTERVAL_DEFAULT_MS: u64 = 1_000;
/// The not-ready reason when none is given.
const DEFAULT_REASON: &str = "break";

/// What the services share.
struct Api {
    shared: Arc<Shared>,
    tokens: Tokens,
    audit: AuditLog,
    streams: Arc<AtomicUsize>,
}

/// An authorised request: who, from where, doing what.
struct Ctx {
    principal: Principal,
    peer: String,
    action: &'static str,
}

/// Binds the API's address from `[grpc]` and serves it; `None` when the config has no
/// `[grpc]` section. Errors name the config key at fault.
pub async fn start(shared: Arc<Shared>) -> anyhow::Result<Option<(SocketAddr, JoinHandle<()>)>> {
    let Some(section) = shared.config.grpc.clone() else {
        return Ok(None);
    };
    let tokens = Tokens::new(
        section
            .tokens
            .iter()
            .filter_map(|(token, t)| {
                // Roles were validated when the config loaded.
                Some((
                    token.clone(),
                    TokenGrant {
                        role: Role::parse(&t.role)?,
                        agent: t.agent.clone(),
                        name: t.name.clone(),
                    },
                ))
            })
            .collect(),
    );
    if tokens.is_empty() {
        warn!("no [grpc.tokens] configured: every gRPC call will be refused");
    }
    let audit_path = shared.config.data_dir().join("audit.jsonl");
    let audit = AuditLog::open(&audit_path).context("grpc: cannot open the audit log")?;
    let mut builder =
        Server::builder().concurrency_limit_per_connection(CONCURRENCY_PER_CONNECTION_MAX);
    let tls = match (&section.tls_cert, &section.tls_key) {
        (Some(cert), Some(key)) => {
            let cert_path = shared.config.resolve(cert);
            let key_path = shared.config.resolve(key);
            let cert = std::fs::read(&cert_path)
                .with_context(|| format!("grpc.tls_cert: cannot read {}", cert_path.display()))?;
            let key = std::fs::read(&key_path)
                .with_context(|| format!("grpc.tls_key: cannot read {}", key_path.display()))?;
            builder = builder
                .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
                .context("grpc.tls_cert / grpc.tls_key: not a usable certificate and key")?;
            true
        }
        _ => false,
    };
    let listener = tokio::net::TcpListener::bind(section.listen)
        .await
        .with_context(|| format!("grpc.listen: cannot listen on {}", section.listen))?;
    let addr = listener.local_addr()?;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(carillon_ops::api::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("grpc: the API's descriptor set is unreadable (a build problem)")?;
    let api = Arc::new(Api {
        shared,
        tokens,
        audit,
        streams: Arc::new(AtomicUsize::new(0)),
    });
    let router = builder
        .add_service(reflection)
        .add_service(pb::agent_service_server::AgentServiceServer::from_arc(
            api.clone(),
        ))
        .add_service(pb::call_service_server::CallServiceServer::from_arc(
            api.clone(),
        ))
        .add_service(pb::supervisor_service_server::SupervisorServiceServer::from_arc(api.clone()))
        .add_service(pb::event_service_server::EventServiceServer::from_arc(
            api.clone(),
        ))
        .add_service(pb::admin_service_server::AdminServiceServer::from_arc(
            api.clone(),
        ))
        .add_service(pb::cluster_service_server::ClusterServiceServer::from_arc(
            api.clone(),
        ))
        .add_service(pb::record_service_server::RecordServiceServer::from_arc(
            api.clone(),
        ))
        .add_service(pb::audit_service_server::AuditServiceServer::from_arc(api));
    if tls {
        info!(grpc = %addr, "gRPC API listening (TLS)");
    } else {
        info!(
            grpc = %addr,
            "gRPC API listening in PLAINTEXT on loopback only; set grpc.tls_cert and grpc.tls_key to serve TLS"
        );
    }
    let task = tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
        {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    });
    Ok(Some((addr, task)))
}

impl Api {
    /// Authenticates the caller and checks its role; a refusal is audited.
    fn authorize<T>(
        &self,
        req: &Request<T>,
        action: &'static str,
        needed: Role,
        target: &str,
    ) -> Result<Ctx, Status> {
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let principal = match self.tokens.authenticate(header) {
            Ok(p) => p,
            Err(e) => {
                self.write_audit(AuditEntry {
                    at_ms: now_ms(),
                    principal: "-".into(),
                    role: "-".into(),
                    action: action.into(),
                    target: bounded(target),
                    outcome: "refused".into(),
                    detail: e.to_string(),
                    peer,
                });
                return Err(Status::unauthenticated(e.to_string()));
            }
        };
        let ctx = Ctx {
            principal,
            peer,
            action,
        };
        if let Err(e) = ctx.principal.require(needed, action) {
            return Err(self.refuse(&ctx, target, e));
        }
        Ok(ctx)
    }

    /// Authorises an action on `agent`'s session: an agent token only for its own agent.
    fn authorize_agent<T>(
        &self,
        req: &Request<T>,
        action: &'static str,
        agent: &str,
    ) -> Result<Ctx, Status> {
        let ctx = self.authorize(req, action, Role::Agent, agent)?;
        if let Err(e) = ctx.principal.may_act_for(agent) {
            return Err(self.refuse(&ctx, agent, e));
        }
        Ok(ctx)
    }

    fn refuse(&self, ctx: &Ctx, target: &str, e: AuthError) -> Status {
        self.audit(ctx, target, "refused", &e.to_string());
        Status::permission_denied(e.to_string())
    }

    fn audit(&self, ctx: &Ctx, target: &str, outcome: &str, detail: &str) {
        self.write_audit(AuditEntry {
            at_ms: now_ms(),
            principal: ctx.principal.name.clone(),
            role: ctx.principal.role.name().into(),
            action: ctx.action.into(),
            target: bounded(target),
            outcome: outcome.into(),
            detail: detail.into(),
            peer: ctx.peer.clone(),
        });
    }

    fn write_audit(&self, entry: AuditEntry) {
        if let Err(e) = self.audit.append(entry) {
            warn!(error = %e, "could not write the audit log");
        }
    }

    /// Proposes a change on behalf of `ctx`, auditing the outcome.
    async fn change(&self, ctx: &Ctx, target: &str, cmd: Command) -> Result<(), Status> {
        let what = format!("{cmd:?}");
        match self.shared.routing.propose(cmd).await {
            Ok(()) => {
                self.audit(ctx, target, "allowed", &what);
                Ok(())
            }
            Err(e) => {
                self.audit(ctx, target, "failed", &e.to_string());
                Err(match e {
                    ProposeError::Refused(why) => Status::failed_precondition(why),
                    ProposeError::Unavailable(why) => Status::unavailable(format!(
                        "the routing log cannot commit right now ({why}); retry shortly"
                    )),
                })
            }
        }
    }

    fn agent_info(&self, id: &str) -> pb::AgentInfo {
        let registered_here = self.shared.registrar().binding(id).is_some();
        self.shared.routing.read(|acd| {
            let (state, detail) = match acd.agent_state(id) {
                None => ("unknown".to_string(), String::new()),
                Some(s) => (s.name().to_string(), state_detail(s)),
            };
            let skills = acd
                .agent_skills(id)
                .map(|m| m.iter().map(|(k, l)| format!("{k}:{l}")).collect())
                .unwrap_or_default();
            pb::AgentInfo {
                id: id.to_string(),
                state,
                detail,
                site: acd.agent_site(id).unwrap_or("").to_string(),
                skills,
                registered_here,
            }
        })
    }

    fn agent_reply(&self, id: &str) -> Response<pb::AgentReply> {
        Response::new(pb::AgentReply {
            agent: Some(self.agent_info(id)),
        })
    }

    /// Takes a slot for one event stream, or refuses when all are in use.
    fn stream_slot(&self) -> Result<StreamSlot, Status> {
        let prev = self.streams.fetch_add(1, Ordering::AcqRel);
        if prev >= STREAMS_MAX {
            self.streams.fetch_sub(1, Ordering::AcqRel);
            return Err(Status::resource_exhausted(format!(
                "this node already serves {STREAMS_MAX} event streams; close one or use another node"
            )));
        }
        Ok(StreamSlot(self.streams.clone()))
    }
}

/// Holds one event-stream slot until dropped.
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn state_detail(s: &AgentState) -> String {
    match s {
        AgentState::NotReady { reason } => reason.clone(),
        AgentState::Reserved { call } | AgentState::OnCall { call } => call.clone(),
        AgentState::WrapUp { until } => format!("until {until}"),
        AgentState::LoggedOut | AgentState::Ready => String::new(),
    }
}

/// Caller text cut to a sane size for logs and the audit.
fn bounded(text: &str) -> String {
    text.chars().take(TEXT_MAX_BYTES).collect()
}

/// Checks a caller-supplied id or reason: non-empty when `required`, short, printable.
fn check_text(field: &str, text: &str, required: bool) -> Result<(), Status> {
    if required && text.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field} must not be empty"
        )));
    }
    if text.len() > TEXT_MAX_BYTES || text.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "{field} must be at most {TEXT_MAX_BYTES} bytes of printable text"
        )));
    }
    Ok(())
}

fn page(limit: u32) -> usize {
    match limit {
        0 => PAGE_DEFAULT,
        n => (n as usize).min(PAGE_MAX),
    }
}

type EventStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for Api {
    async fn login(
        &self,
        req: Request<pb::AgentRequest>,
    ) -> Result<Response<pb::AgentReply>, Status> {
        let agent = req.get_ref().agent.clone();
        check_text("agent", &agent, true)?;
        let ctx = self.authorize_agent(&req, "AgentService.Login", &agent)?;
        let Some(account) = self
            .shared
            .config
            .agent_accounts()
            .into_iter()
            .find(|a| a.id == agent)
        else {
            self.audit(&ctx, &agent, "failed", "no such agent");
            return Err(Status::not_found(format!(
                "agent {agent} is not configured on this node ([[agents]])"
            )));
        };
        if self.shared.registrar().binding(&agent).is_none() {
            self.audit(&ctx, &agent, "failed", "no phone registered here");
            return Err(Status::failed_precondition(format!(
                "agent {agent} has no phone registered at this node; register the phone here first (calls ring the phone)"
            )));
        }
        let cmd = Command::AgentLogin {
            agent: agent.clone(),
            skills: account.skills,
            node: self.shared.node_number,
            site: self.shared.config.node.site.clone(),
            at: now_ms(),
        };
        self.change(&ctx, &agent, cmd).await?;
        Ok(self.agent_reply(&agent))
    }

    async fn logout(
        &self,
        req: Request<pb::AgentRequest>,
    ) -> Result<Response<pb::AgentReply>, Status> {
        let agent = req.get_ref().agent.clone();
        check_text("agent", &agent, true)?;
        let ctx = self.authorize_agent(&req, "AgentService.Logout", &agent)?;
        let cmd = Command::AgentLogout {
            agent: agent.clone(),
            at: now_ms(),
        };
        self.change(&ctx, &agent, cmd).await?;
        Ok(self.agent_reply(&agent))
    }

    async fn set_state(
        &self,
        req: Request<pb::SetStateRequest>,
    ) -> Result<Response<pb::AgentReply>, Status> {
        let r = req.get_ref().clone();
        check_text("agent", &r.agent, true)?;
        check_text("reason", &r.reason, false)?;
        let ctx = self.authorize_agent(&req, "AgentService.SetState", &r.agent)?;
        let at = now_ms();
        let cmd = if r.ready {
            Command::AgentReady {
                agent: r.agent.clone(),
                at,
            }
        } else {
            Command::AgentNotReady {
                agent: r.agent.clone(),
                reason: if r.reason.is_empty() {
                    DEFAULT_REASON.into()
                } else {
                    r.reason.clone()
                },
                at,
            }
        };
        self.change(&ctx, &r.agent, cmd).await?;
        Ok(self.agent_reply(&r.agent))
    }

    async fn get(
        &self,
        req: Request<pb::AgentRequest>,
    ) -> Result<Response<pb::AgentReply>, Status> {
        let agent = req.get_ref().agent.clone();
        check_text("agent", &agent, true)?;
        self.authorize_agent(&req, "AgentService.Get", &agent)?;
        Ok(self.agent_reply(&agent))
    }
}

/// A call-control answer from the call task as a gRPC status.
fn control_status(e: &ControlError) -> Status {
    match e {
        ControlError::NoSuchCall(_) | ControlError::NotFound(_) => Status::not_found(e.to_string()),
        ControlError::Ended(_) => Status::not_found(e.to_string()),
        ControlError::Busy(..) => Status::resource_exhausted(e.to_string()),
        ControlError::Timeout(..) => Status::deadline_exceeded(e.to_string()),
        ControlError::Refused(_) => Status::failed_precondition(e.to_string()),
        ControlError::Unanswered(_) => Status::aborted(e.to_string()),
    }
}

/// A number to dial: digits, with an optional leading `+` (and `*`/`#` for services).
fn check_number(number: &str) -> Result<(), Status> {
    check_text("number", number, true)?;
    let digits = number.strip_prefix('+').unwrap_or(number);
    if digits.is_empty()
        || !digits
            .chars()
            .all(|c| c.is_ascii_digit() || c == '*' || c == '#')
    {
        return Err(Status::invalid_argument(format!(
            "number `{}` must be digits (optionally after a +)",
            bounded(number)
        )));
    }
    Ok(())
}

impl Api {
    /// Authorises an action on a live call and finds where it is. An agent token acts only
    /// as its own agent (`agent` empty means that agent) and only on a call that agent is
    /// connected to or being offered; supervisors and admins on any. A call held by
    /// another cluster node is refused with FAILED_PRECONDITION naming that node (the
    /// caller leg and its media live there; ask that node's API).
    fn authorize_call_action<T>(
        &self,
        req: &Request<T>,
        action: &'static str,
        call: &str,
        agent: &str,
    ) -> Result<Ctx, Status> {
        check_text("call", call, true)?;
        check_text("agent", agent, false)?;
        let ctx = self.authorize(req, action, Role::Agent, call)?;
        if ctx.principal.role == Role::Agent {
            let own = ctx.principal.agent.clone().unwrap_or_default();
            let acting = if agent.is_empty() {
                own.as_str()
            } else {
                agent
            };
            if let Err(e) = ctx.principal.may_act_for(acting) {
                return Err(self.refuse(&ctx, call, e));
            }
            let on_it = self
                .shared
                .routing
                .read(|acd| acd.agent_state(acting).and_then(AgentState::call) == Some(call));
            if !on_it {
                let e = AuthError::NotOwn {
                    own,
                    target: format!("call {call}, which they are not on"),
                };
                return Err(self.refuse(&ctx, call, e));
            }
        }
        self.check_owner(&ctx, call)?;
        Ok(ctx)
    }

    /// Refuses a call that another cluster node holds, naming the node.
    fn check_owner(&self, ctx: &Ctx, call: &str) -> Result<(), Status> {
        let owner = self.shared.routing.read(|acd| acd.call_owner(call));
        match owner {
            Some(owner)
                if self.shared.routing.cluster().is_some() && owner != self.shared.node_number =>
            {
                let sip = self
                    .shared
                    .routing
                    .cluster()
                    .and_then(|c| c.member(owner))
                    .map(|m| format!(" (SIP {})", m.sip_addr))
                    .unwrap_or_default();
                let why = format!(
                    "call {call} is held by node n{owner}{sip}: send call control for it to that node's API"
                );
                self.audit(ctx, call, "failed", &why);
                Err(Status::failed_precondition(why))
            }
            _ => Ok(()),
        }
    }

    /// Hands `action` to the call's task and audits the outcome.
    async fn control(
        &self,
        ctx: &Ctx,
        call: &str,
        action: CallAction,
    ) -> Result<Response<pb::CallReply>, Status> {
        let what = format!("{action:?}");
        match self.shared.calls.call(call, action).await {
            Ok(outcome) => {
                self.audit(ctx, call, "allowed", &format!("{what}: {outcome}"));
                Ok(Response::new(pb::CallReply {
                    call: call.to_string(),
                    outcome,
                }))
            }
            Err(e) => {
                self.audit(ctx, call, "failed", &format!("{what}: {e}"));
                Err(control_status(&e))
            }
        }
    }
}

#[tonic::async_trait]
impl pb::call_service_server::CallService for Api {
    async fn hangup(
        &self,
        req: Request<pb::CallRequest>,
    ) -> Result<Response<pb::CallReply>, Status> {
        let r = req.get_ref().clone();
        let ctx = self.authorize_call_action(&req, "CallService.Hangup", &r.call, &r.agent)?;
        let by = if ctx.principal.role == Role::Agent {
            Party::Agent
        } else {
            Party::System
        };
        self.control(&ctx, &r.call, CallAction::Hangup { by }).await
    }

    async fn hold(&self, req: Request<pb::CallRequest>) -> Result<Response<pb::CallReply>, Status> {
        let r = req.get_ref().clone();
        let ctx = self.authorize_call_action(&req, "CallService.Hold", &r.call, &r.agent)?;
        self.control(&ctx, &r.call, CallAction::Hold).await
    }

    async fn resume(
        &self,
        req: Request<pb::CallRequest>,
    ) -> Result<Response<pb::CallReply>, Status> {
        let r = req.get_ref().clone();
        let ctx = self.authorize_call_action(&req, "CallService.Resume", &r.call, &r.agent)?;
        self.control(&ctx, &r.call, CallAction::Resume).await
    }

    async fn blind_transfer(
        &self,
        req: Request<pb::TransferRequest>,
    ) -> Result<Response<pb::CallReply>, Status> {
        use pb::transfer_request::Target;
        let r = req.get_ref().clone();
        let action = match &r.target {
            Some(Target::Queue(q)) => {
                check_text("queue", q, true)?;
                CallAction::TransferToQueue { queue: q.clone() }
            }
            Some(Target::ToAgent(a)) => {
                check_text("to_agent", a, true)?;
                CallAction::TransferToAgent { agent: a.clone() }
            }
            Some(Target::Number(n)) => {
                check_number(n)?;
                CallAction::TransferToNumber { number: n.clone() }
            }
            None => {
                return Err(Status::invalid_argument(
                    "name the target: one of number, queue or to_agent",
                ))
            }
        };
        let ctx =
            self.authorize_call_action(&req, "CallService.BlindTransfer", &r.call, &r.agent)?;
        let missing = self.shared.routing.read(|acd| match &action {
            CallAction::TransferToQueue { queue } if acd.queue_config(queue).is_none() => {
                Some(format!("no queue named {queue}"))
            }
            CallAction::TransferToAgent { agent } if acd.agent_state(agent).is_none() => {
                Some(format!("no agent {agent} has ever logged in"))
            }
            _ => None,
        });
        if let Some(why) = missing {
            self.audit(&ctx, &r.call, "failed", &why);
            return Err(Status::not_found(why));
        }
        self.control(&ctx, &r.call, action).await
    }

    async fn consult(
        &self,
        req: Request<pb::ConsultRequest>,
    ) -> Result<Response<pb::CallReply>, Status> {
        use pb::consult_request::Target;
        let r = req.get_ref().clone();
        let number = match &r.target {
            Some(Target::Number(n)) => {
                check_number(n)?;
                n.clone()
            }
            None => return Err(Status::invalid_argument("name the target: number")),
        };
        let ctx = self.authorize_call_action(&req, "CallService.Consult", &r.call, &r.agent)?;
        self.control(&ctx, &r.call, CallAction::Consult { number })
            .await
    }

    async fn consulted_transfer(
        &self,
        req: Request<pb::CallRequest>,
    ) -> Result<Response<pb::CallReply>, Status> {
        let r = req.get_ref().clone();
        let ctx =
            self.authorize_call_action(&req, "CallService.ConsultedTransfer", &r.call, &r.agent)?;
        self.control(&ctx, &r.call, CallAction::CompleteConsult)
            .await
    }

    async fn conference(
        &self,
        req: Request<pb::CallRequest>,
    ) -> Result<Response<pb::CallReply>, Status> {
        let r = req.get_ref().clone();
        let ctx = self.authorize_call_action(&req, "CallService.Conference", &r.call, &r.agent)?;
        self.control(&ctx, &r.call, CallAction::Conference).await
    }

    async fn cancel_consult(
        &self,
        req: Request<pb::CallRequest>,
    ) -> Result<Response<pb::CallReply>, Status> {
        let r = req.get_ref().clone();
        let ctx =
            self.authorize_call_action(&req, "CallService.CancelConsult", &r.call, &r.agent)?;
        self.control(&ctx, &r.call, CallAction::CancelConsult).await
    }

    async fn make_call(
        &self,
        req: Request<pb::MakeCallRequest>,
    ) -> Result<Response<pb::CallReply>, Status> {
        let r = req.get_ref().clone();
        check_text("agent", &r.agent, true)?;
        check_number(&r.number)?;
        let ctx = self.authorize_agent(&req, "CallService.MakeCall", &r.agent)?;
        match crate::call::outbound::start(&self.shared, &r.agent, &r.number).await {
            Ok(call) => {
                self.audit(
                    &ctx,
                    &r.agent,
                    "allowed",
                    &format!("MakeCall {} -> {call}", r.number),
                );
                Ok(Response::new(pb::CallReply {
                    call,
                    outcome: format!("ringing agent {} first, then {}", r.agent, r.number),
                }))
            }
            Err(e) => {
                self.audit(&ctx, &r.agent, "failed", &e.to_string());
                Err(match e {
                    OutboundError::AtCapacity => Status::resource_exhausted(e.to_string()),
                    OutboundError::Routing(ProposeError::Unavailable(_)) => {
                        Status::unavailable(e.to_string())
                    }
                    _ => Status::failed_precondition(e.to_string()),
                })
            }
        }
    }

    async fn pickup(
        &self,
        req: Request<pb::CallRequest>,
    ) -> Result<Response<pb::CallReply>, Status> {
        let r = req.get_ref().clone();
        check_text("call", &r.call, true)?;
        check_text("agent", &r.agent, true)?;
        // Picking up a call that rings someone else is the point: an agent token acts as
        // itself only, on any call that is not answered yet.
        let ctx = self.authorize_agent(&req, "CallService.Pickup", &r.agent)?;
        let cmd = Command::Pickup {
            call: r.call.clone(),
            agent: r.agent.clone(),
            at: now_ms(),
        };
        self.change(&ctx, &r.call, cmd).await?;
        Ok(Response::new(pb::CallReply {
            call: r.call.clone(),
            outcome: format!("ringing agent {}", r.agent),
        }))
    }
}

impl Api {
    /// Monitor, whisper, barge or take over: supervisor or admin tokens. Rings the
    /// supervisor's registered phone and joins it, or switches the mode of the supervisor
    /// already on the call. Every outcome is audited.
    async fn supervise(
        &self,
        req: Request<pb::SuperviseRequest>,
        action: &'static str,
        mode: Mode,
    ) -> Result<Response<pb::CallReply>, Status> {
        let r = req.get_ref().clone();
        check_text("call", &r.call, true)?;
        check_text("supervisor_phone", &r.supervisor_phone, true)?;
        let ctx = self.authorize(&req, action, Role::Supervisor, &r.call)?;
        let result = crate::call::supervise::request(
            self.shared.clone(),
            &r.call,
            &r.supervisor_phone,
            mode,
        )
        .await;
        match result {
            Ok(outcome) => {
                let detail = format!("supervisor {}: {outcome}", r.supervisor_phone);
                self.audit(&ctx, &r.call, "ok", &detail);
                Ok(Response::new(pb::CallReply {
                    call: r.call,
                    outcome,
                }))
            }
            Err(e) => {
                self.audit(&ctx, &r.call, "failed", &e.to_string());
                Err(match e {
                    ControlError::NoSuchCall(_) | ControlError::NotFound(_) => {
                        Status::not_found(e.to_string())
                    }
                    ControlError::Busy(..) => Status::resource_exhausted(e.to_string()),
                    ControlError::Timeout(..) => Status::deadline_exceeded(e.to_string()),
                    ControlError::Ended(_) | ControlError::Refused(_) => {
                        Status::failed_precondition(e.to_string())
                    }
                    ControlError::Unanswered(_) => Status::aborted(e.to_string()),
                })
            }
        }
    }
}

#[tonic::async_trait]
impl pb::supervisor_service_server::SupervisorService for Api {
    async fn force_state(
        &self,
        req: Request<pb::ForceStateRequest>,
    ) -> Result<Response<pb::AgentReply>, Status> {
        let r = req.get_ref().clone();
        check_text("agent", &r.agent, true)?;
        check_text("reason", &r.reason, false)?;
        let ctx = self.authorize(
            &req,
            "SupervisorService.ForceState",
            Role::Supervisor,
            &r.agent,
        )?;
        let state = match r.state.as_str() {
            "ready" => ForcedState::Ready,
            "not_ready" | "not-ready" => ForcedState::NotReady {
                reason: if r.reason.is_empty() {
                    "supervisor".into()
                } else {
                    r.reason.clone()
                },
            },
            "logged_out" | "logged-out" => ForcedState::LoggedOut,
            other => {
                return Err(Status::invalid_argument(format!(
                    "state `{}` is not one of ready, not_ready, logged_out",
                    bounded(other)
                )))
            }
        };
        let cmd = Command::ForceAgentState {
            agent: r.agent.clone(),
            state,
            at: now_ms(),
        };
        self.change(&ctx, &r.agent, cmd).await?;
        Ok(self.agent_reply(&r.agent))
    }

    async fn force_logout(
        &self,
        req: Request<pb::AgentRequest>,
    ) -> Result<Response<pb::AgentReply>, Status> {
        let agent = req.get_ref().agent.clone();
        check_text("agent", &agent, true)?;
        let ctx = self.authorize(
            &req,
            "SupervisorService.ForceLogout",
            Role::Supervisor,
            &agent,
        )?;
        let cmd = Command::ForceAgentState {
            agent: agent.clone(),
            state: ForcedState::LoggedOut,
            at: now_ms(),
        };
        self.change(&ctx, &agent, cmd).await?;
        Ok(self.agent_reply(&agent))
    }

    async fn monitor(
        &self,
        req: Request<pb::SuperviseRequest>,
    ) -> Result<Response<pb::CallReply>, Status> {
        self.supervise(req, "SupervisorService.Monitor", Mode::Monitor)
            .await
    }

    async fn whisper(
        &self,
        req: Request<pb::SuperviseRequest>,
    ) -> Result<Response<pb::CallReply>, Status> {
        self.supervise(req, "SupervisorService.Whisper", Mode::Whisper)
            .await
    }

    async fn barge(
        &self,
        req: Request<pb::SuperviseRequest>,
    ) -> Result<Response<pb::CallReply>, Status> {
        self.supervise(req, "SupervisorService.Barge", Mode::Barge)
            .await
    }

    async fn take_over(
        &self,
        req: Request<pb::SuperviseRequest>,
    ) -> Result<Response<pb::CallReply>, Status> {
        self.supervise(req, "SupervisorService.TakeOver", Mode::TakeOver)
            .await
    }
}

/// Forwards applied routing events through `map` to one subscriber until it goes away.
/// `map` returns `None` for events this subscriber does not see.
fn forward_events<T: Send + 'static>(
    slot: StreamSlot,
    mut rx: broadcast::Receiver<Event>,
    map: impl Fn(Event) -> Option<T> + Send + 'static,
    lagged: impl Fn(u64) -> T + Send + 'static,
) -> EventStream<T> {
    let (tx, out) = mpsc::channel(STREAM_BUFFER_MAX);
    tokio::spawn(async move {
        let _slot = slot;
        loop {
            let item = tokio::select! {
                () = tx.closed() => break,
                ev = rx.recv() => match ev {
                    Ok(ev) => match map(ev) {
                        Some(item) => item,
                        None => continue,
                    },
                    Err(broadcast::error::RecvError::Lagged(n)) => lagged(n),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            };
            if tx.send(Ok(item)).await.is_err() {
                break;
            }
        }
    });
    Box::pin(ReceiverStream::new(out))
}

fn call_event(ev: Event) -> Option<pb::CallEvent> {
    let e = |call: String, kind: &str, agent: String, queue: String, detail: String| {
        Some(pb::CallEvent {
            call,
            kind: kind.into(),
            agent,
            queue,
            detail,
            lagged: 0,
        })
    };
    match ev {
        Event::Offered { call, agent, .. } => {
            e(call, "offered", agent, String::new(), String::new())
        }
        Event::OfferRevoked {
            call,
            agent,
            reason,
        } => e(
            call,
            "offer_revoked",
            agent,
            String::new(),
            format!("{reason:?}"),
        ),
        Event::Connected { call, agent } => {
            e(call, "connected", agent, String::new(), String::new())
        }
        Event::CallFinished(r) => e(
            r.call,
            "finished",
            r.agent.unwrap_or_default(),
            r.queue,
            r.disposition.name().into(),
        ),
        Event::CallExited { call, reason, .. } => e(
            call,
            "exited",
            String::new(),
            String::new(),
            reason.name().into(),
        ),
        Event::CallMoved {
            call,
            from: _,
            to,
            reason,
        } => e(call, "moved", String::new(), to, reason.name().into()),
        Event::CallbackOffered { call, agent, .. } => e(
            call,
            "callback_offered",
            agent,
            String::new(),
            String::new(),
        ),
        _ => None,
    }
}

#[tonic::async_trait]
impl pb::event_service_server::EventService for Api {
    type AgentEventsStream = EventStream<pb::AgentEvent>;
    type CallEventsStream = EventStream<pb::CallEvent>;
    type QueueStatsStream = EventStream<pb::QueueStatsSnapshot>;

    async fn agent_events(
        &self,
        req: Request<pb::AgentEventsRequest>,
    ) -> Result<Response<Self::AgentEventsStream>, Status> {
        let wanted = req.get_ref().agent.clone();
        check_text("agent", &wanted, false)?;
        let ctx = self.authorize(&req, "EventService.AgentEvents", Role::Agent, &wanted)?;
        // An agent sees only their own events, whatever they asked for.
        let filter = match (&ctx.principal.role, &ctx.principal.agent) {
            (Role::Agent, own) => own.clone().or(Some(String::new())),
            _ if wanted.is_empty() => None,
            _ => Some(wanted),
        };
        let slot = self.stream_slot()?;
        let stream = forward_events(
            slot,
            self.shared.routing.watch(),
            move |ev| match ev {
                Event::AgentStateChanged { agent, state }
                    if filter.as_ref().is_none_or(|f| *f == agent) =>
                {
                    Some(pb::AgentEvent {
                        agent,
                        state: state.name().into(),
                        detail: state_detail(&state),
                        lagged: 0,
                    })
                }
                _ => None,
            },
            |n| pb::AgentEvent {
                lagged: n,
                ..Default::default()
            },
        );
        Ok(Response::new(stream))
    }

    async fn call_events(
        &self,
        req: Request<pb::CallEventsRequest>,
    ) -> Result<Response<Self::CallEventsStream>, Status> {
        let ctx = self.authorize(&req, "EventService.CallEvents", Role::Agent, "")?;
        let own = (ctx.principal.role == Role::Agent)
            .then(|| ctx.principal.agent.clone().unwrap_or_default());
        let slot = self.stream_slot()?;
        let stream = forward_events(
            slot,
            self.shared.routing.watch(),
            move |ev| {
                let e = call_event(ev)?;
                match &own {
                    Some(me) if *me != e.agent => None,
                    _ => Some(e),
                }
            },
            |n| pb::CallEvent {
                lagged: n,
                ..Default::default()
            },
        );
        Ok(Response::new(stream))
    }

    async fn queue_stats(
        &self,
        req: Request<pb::QueueStatsRequest>,
    ) -> Result<Response<Self::QueueStatsStream>, Status> {
        self.authorize(&req, "EventService.QueueStats", Role::Supervisor, "")?;
        let interval_ms = match u64::from(req.get_ref().interval_ms) {
            0 => STATS_INTERVAL_DEFAULT_MS,
            n => n.clamp(STATS_INTERVAL_MIN_MS, STATS_INTERVAL_MAX_MS),
        };
        let slot = self.stream_slot()?;
        let shared = self.shared.clone();
        let (tx, out) = mpsc::channel(STREAM_BUFFER_MAX);
        tokio::spawn(async move {
            let _slot = slot;
            let mut every = tokio::time::interval(Duration::from_millis(interval_ms));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = tx.closed() => break,
                    _ = every.tick() => {}
                }
                let snapshot = stats_snapshot(&shared.routing.stats());
                if tx.send(Ok(snapshot)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

fn queue_stat(name: &str, q: &carillon_routing::QueueStats) -> pb::QueueStat {
    pb::QueueStat {
        queue: name.to_string(),
        waiting: q.waiting as u64,
        offering: q.offering as u64,
        connected: q.connected as u64,
        longest_wait_ms: q.longest_wait_ms,
    }
}

fn stats_snapshot(s: &carillon_routing::AcdStats) -> pb::QueueStatsSnapshot {
    pb::QueueStatsSnapshot {
        at_ms: s.now,
        queues: s.queues.iter().map(|(n, q)| queue_stat(n, q)).collect(),
        agents: s.agents.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        totals: Some(pb::Totals {
            entered: s.totals.entered,
            answered: s.totals.answered,
            abandoned: s.totals.abandoned,
            lost: s.totals.lost,
            exited: s.totals.exited,
        }),
    }
}

/// Strategy names on the API (snake_case of [`Strategy`]).
const STRATEGIES: [(&str, Strategy); 7] = [
    ("longest_idle", Strategy::LongestIdle),
    ("round_robin", Strategy::RoundRobin),
    ("fewest_calls", Strategy::FewestCalls),
    ("least_talk_time", Strategy::LeastTalkTime),
    ("top_down", Strategy::TopDown),
    ("random", Strategy::Random),
    ("ring_all", Strategy::RingAll),
];

fn strategy_name(s: Strategy) -> &'static str {
    STRATEGIES
        .iter()
        .find(|(_, v)| *v == s)
        .map_or("longest_idle", |(n, _)| n)
}

fn queue_info(q: &QueueConfig, stats: Option<&carillon_routing::QueueStats>) -> pb::QueueInfo {
    pb::QueueInfo {
        name: q.name.clone(),
        skill: q.skill.clone(),
        wrapup_ms: q.wrapup_ms,
        ring_timeout_ms: q.ring_timeout_ms,
        local_wait_ms: q.local_wait_ms,
        strategy: strategy_name(q.strategy).into(),
        min_level: u32::from(q.min_level),
        max_wait_ms: q.max_wait_ms,
        queue_len_max: q.queue_len_max as u64,
        stats: stats.map(|s| queue_stat(&q.name, s)),
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for Api {
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        self.authorize(&req, "AdminService.Status", Role::Supervisor, "")?;
        let status = self.shared.status();
        let json = serde_json::to_string(&status)
            .map_err(|e| Status::internal(format!("status is not serialisable: {e}")))?;
        Ok(Response::new(pb::StatusReply {
            json,
            node: status.node.clone(),
            site: status.site.clone(),
            active_calls: status.calls.active as u64,
            agents_registered: status.agents_registered as u64,
        }))
    }

    async fn list_queues(
        &self,
        req: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesReply>, Status> {
        self.authorize(&req, "AdminService.ListQueues", Role::Supervisor, "")?;
        let queues = self.shared.routing.read(|acd| {
            let stats = acd.stats();
            stats
                .queues
                .keys()
                .filter_map(|name| {
                    acd.queue_config(name)
                        .map(|q| queue_info(q, stats.queues.get(name)))
                })
                .collect()
        });
        Ok(Response::new(pb::ListQueuesReply { queues }))
    }

    async fn set_queue(
        &self,
        req: Request<pb::SetQueueRequest>,
    ) -> Result<Response<pb::QueueInfo>, Status> {
        let r = req.get_ref().clone();
        check_text("name", &r.name, true)?;
        let ctx = self.authorize(&req, "AdminService.SetQueue", Role::Admin, &r.name)?;
        let mut q = self
            .shared
            .routing
            .read(|acd| acd.queue_config(&r.name).cloned())
            .unwrap_or_else(|| QueueConfig {
                name: r.name.clone(),
                ..QueueConfig::default()
            });
        if let Some(v) = r.skill {
            check_text("skill", &v, true)?;
            q.skill = v;
        }
        if let Some(v) = r.wrapup_ms {
            q.wrapup_ms = v;
        }
        if let Some(v) = r.ring_timeout_ms {
            q.ring_timeout_ms = v;
        }
        if let Some(v) = r.local_wait_ms {
            q.local_wait_ms = v;
        }
        if let Some(v) = r.strategy {
            q.strategy = STRATEGIES
                .iter()
                .find(|(n, _)| *n == v)
                .map(|(_, s)| *s)
                .ok_or_else(|| {
                    let names: Vec<&str> = STRATEGIES.iter().map(|(n, _)| *n).collect();
                    Status::invalid_argument(format!(
                        "strategy `{}` is not one of {}",
                        bounded(&v),
                        names.join(", ")
                    ))
                })?;
        }
        if let Some(v) = r.min_level {
            q.min_level =
                u8::try_from(v).map_err(|_| Status::invalid_argument("min_level must be 0-10"))?;
        }
        if let Some(v) = r.max_wait_ms {
            q.max_wait_ms = v;
        }
        if let Some(v) = r.queue_len_max {
            q.queue_len_max = usize::try_from(v)
                .map_err(|_| Status::invalid_argument("queue_len_max is too large"))?;
        }
        let name = q.name.clone();
        let cmd = Command::ConfigureQueue {
            queue: q,
            at: now_ms(),
        };
        self.change(&ctx, &name, cmd).await?;
        let info = self.shared.routing.read(|acd| {
            let stats = acd.stats();
            acd.queue_config(&name)
                .map(|q| queue_info(q, stats.queues.get(&name)))
        });
        info.map(Response::new)
            .ok_or_else(|| Status::internal("the queue vanished right after it was set"))
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsReply>, Status> {
        self.authorize(&req, "AdminService.ListAgents", Role::Supervisor, "")?;
        let agents = self
            .shared
            .config
            .agent_accounts()
            .iter()
            .map(|a| self.agent_info(&a.id))
            .collect();
        Ok(Response::new(pb::ListAgentsReply { agents }))
    }

    async fn set_agent_skills(
        &self,
        req: Request<pb::SetAgentSkillsRequest>,
    ) -> Result<Response<pb::AgentReply>, Status> {
        let r = req.get_ref().clone();
        check_text("agent", &r.agent, true)?;
        for s in &r.skills {
            check_text("skills", s, true)?;
        }
        let ctx = self.authorize(
            &req,
            "AdminService.SetAgentSkills",
            Role::Supervisor,
            &r.agent,
        )?;
        let cmd = Command::SetAgentSkills {
            agent: r.agent.clone(),
            skills: r.skills.clone(),
            at: now_ms(),
        };
        self.change(&ctx, &r.agent, cmd).await?;
        Ok(self.agent_reply(&r.agent))
    }

    async fn set_vip(
        &self,
        req: Request<pb::SetVipRequest>,
    ) -> Result<Response<pb::SetVipReply>, Status> {
        let r = req.get_ref().clone();
        check_text("caller", &r.caller, true)?;
        check_text("agent", &r.agent, false)?;
        let ctx = self.authorize(&req, "AdminService.SetVip", Role::Admin, &r.caller)?;
        let vip = (!r.remove).then(|| Vip {
            agent: r.agent.clone(),
            wait_ms: r.wait_ms,
            priority: r.priority,
        });
        let cmd = Command::SetVip {
            caller: r.caller.clone(),
            vip,
            at: now_ms(),
        };
        self.change(&ctx, &r.caller, cmd).await?;
        Ok(Response::new(self.vip_reply(&r.caller)))
    }

    async fn get_vip(
        &self,
        req: Request<pb::GetVipRequest>,
    ) -> Result<Response<pb::SetVipReply>, Status> {
        let caller = req.get_ref().caller.clone();
        check_text("caller", &caller, true)?;
        self.authorize(&req, "AdminService.GetVip", Role::Supervisor, &caller)?;
        Ok(Response::new(self.vip_reply(&caller)))
    }

    async fn list_blacklist(
        &self,
        req: Request<pb::ListBlacklistRequest>,
    ) -> Result<Response<pb::ListBlacklistReply>, Status> {
        self.authorize(&req, "AdminService.ListBlacklist", Role::Supervisor, "")?;
        Ok(Response::new(self.blacklist_reply()))
    }

    async fn set_blacklist(
        &self,
        req: Request<pb::SetBlacklistRequest>,
    ) -> Result<Response<pb::ListBlacklistReply>, Status> {
        let r = req.get_ref().clone();
        check_text("caller", &r.caller, true)?;
        let ctx = self.authorize(&req, "AdminService.SetBlacklist", Role::Admin, &r.caller)?;
        let cmd = Command::SetBlacklist {
            caller: r.caller.clone(),
            blocked: !r.remove,
            at: now_ms(),
        };
        self.change(&ctx, &r.caller, cmd).await?;
        Ok(Response::new(self.blacklist_reply()))
    }

    async fn list_flows(
        &self,
        req: Request<pb::ListFlowsRequest>,
    ) -> Result<Response<pb::ListFlowsReply>, Status> {
        self.authorize(&req, "AdminService.ListFlows", Role::Supervisor, "")?;
        Ok(Response::new(self.flows_reply()))
    }

    async fn set_flow(
        &self,
        req: Request<pb::SetFlowRequest>,
    ) -> Result<Response<pb::ListFlowsReply>, Status> {
        let text = req.get_ref().toml.clone();
        if text.len() > FLOW_TOML_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "toml: at most {FLOW_TOML_BYTES_MAX} bytes"
            )));
        }
        let ctx = self.authorize(&req, "AdminService.SetFlow", Role::Admin, "")?;
        match self.shared.flows.set(&self.shared.config, &text) {
            Ok(name) => {
                self.audit(&ctx, &name, "allowed", "flow set");
                info!(flow = %name, by = %ctx.principal.name, "IVR flow set");
                Ok(Response::new(self.flows_reply()))
            }
            Err(why) => {
                self.audit(&ctx, "", "failed", &why);
                Err(Status::invalid_argument(why))
            }
        }
    }

    async fn delete_flow(
        &self,
        req: Request<pb::DeleteFlowRequest>,
    ) -> Result<Response<pb::ListFlowsReply>, Status> {
        let name = req.get_ref().name.clone();
        check_text("name", &name, true)?;
        let ctx = self.authorize(&req, "AdminService.DeleteFlow", Role::Admin, &name)?;
        match self.shared.flows.delete(&name) {
            Ok(()) => {
                self.audit(&ctx, &name, "allowed", "flow deleted");
                Ok(Response::new(self.flows_reply()))
            }
            Err(why) => {
                self.audit(&ctx, &name, "failed", &why);
                Err(Status::failed_precondition(why))
            }
        }
    }

    async fn attach_flow(
        &self,
        req: Request<pb::AttachFlowRequest>,
    ) -> Result<Response<pb::ListFlowsReply>, Status> {
        let r = req.get_ref().clone();
        check_text("number", &r.number, true)?;
        check_text("flow", &r.flow, false)?;
        let ctx = self.authorize(&req, "AdminService.AttachFlow", Role::Admin, &r.number)?;
        let flow = (!r.flow.is_empty()).then_some(r.flow.as_str());
        match self
            .shared
            .flows
            .attach(&self.shared.config, &r.number, flow)
        {
            Ok(()) => {
                let detail = format!("flow {}", flow.unwrap_or("(none)"));
                self.audit(&ctx, &r.number, "allowed", &detail);
                Ok(Response::new(self.flows_reply()))
            }
            Err(why) => {
                self.audit(&ctx, &r.number, "failed", &why);
                Err(Status::failed_precondition(why))
            }
        }
    }

    async fn list_numbers(
        &self,
        req: Request<pb::ListNumbersRequest>,
    ) -> Result<Response<pb::ListNumbersReply>, Status> {
        self.authorize(&req, "AdminService.ListNumbers", Role::Supervisor, "")?;
        let numbers: BTreeMap<String, String> = self
            .shared
            .config
            .numbers
            .iter()
            .map(|n| (n.number.clone(), n.queue.clone()))
            .collect();
        Ok(Response::new(pb::ListNumbersReply {
            numbers: numbers.into_iter().collect(),
        }))
    }
}

impl Api {
    fn flows_reply(&self) -> pb::ListFlowsReply {
        pb::ListFlowsReply {
            flows: self
                .shared
                .flows
                .list()
                .into_iter()
                .map(|f| pb::FlowInfo {
                    name: f.name,
                    start: f.start,
                    steps: u32::try_from(f.steps).unwrap_or(u32::MAX),
                    numbers: f.numbers,
                })
                .collect(),
        }
    }

    /// The blacklist as calls meet it: the configured list with the live changes applied.
    fn blacklist_reply(&self) -> pb::ListBlacklistReply {
        let callers = self
            .shared
            .routing
            .read(|acd| crate::edge::blacklist(&self.shared.config, acd));
        pb::ListBlacklistReply {
            callers: callers.into_iter().collect(),
        }
    }

    fn vip_reply(&self, caller: &str) -> pb::SetVipReply {
        self.shared.routing.read(|acd| match acd.vip(caller) {
            Some(v) => pb::SetVipReply {
                caller: caller.to_string(),
                vip: true,
                agent: v.agent.clone(),
                wait_ms: v.wait_ms,
                priority: v.priority,
            },
            None => pb::SetVipReply {
                caller: caller.to_string(),
                ..Default::default()
            },
        })
    }

    fn cluster(&self) -> Result<&crate::cluster::Cluster, Status> {
        self.shared.routing.cluster().ok_or_else(|| {
            Status::failed_precondition(
                "this node runs standalone (no [cluster] section in its config)",
            )
        })
    }
}

#[tonic::async_trait]
impl pb::cluster_service_server::ClusterService for Api {
    async fn status(
        &self,
        req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.authorize(&req, "ClusterService.Status", Role::Supervisor, "")?;
        let s = self.cluster()?.status().await;
        Ok(Response::new(pb::ClusterStatus {
            leader: s.leader.unwrap_or_default(),
            term: s.term,
            node: s.node,
            last_log_index: s.last_log_index,
            last_applied: s.last_applied,
            members: s
                .members
                .into_iter()
                .map(|m| pb::MemberStatus {
                    id: m.id,
                    addr: m.addr,
                    site: m.site,
                    sip: m.sip,
                    role: m.role.into(),
                    last_applied: m.last_applied,
                    lag: m.lag,
                    reachable: m.reachable,
                    up: m.up,
                    last_lease_at: m.last_lease_at,
                })
                .collect(),
        }))
    }

    async fn add_node(
        &self,
        req: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let r = req.get_ref().clone();
        check_text("id", &r.id, true)?;
        let ctx = self.authorize(&req, "ClusterService.AddNode", Role::Admin, &r.id)?;
        let cluster = self.cluster()?;
        let Some(id) = crate::config::parse_node_id(&r.id) else {
            return Err(Status::invalid_argument(format!(
                "`{}` is not a node id (n4, or 4)",
                bounded(&r.id)
            )));
        };
        let raft: SocketAddr = r.addr.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "`{}` is not an address (host:port)",
                bounded(&r.addr)
            ))
        })?;
        let or = |v: &str, default: String| {
            if v.is_empty() {
                default
            } else {
                v.to_string()
            }
        };
        let member = carillon_consensus::types::Member {
            raft_addr: raft.to_string(),
            site: or(&r.site, "default".into()),
            sip_addr: or(&r.sip, SocketAddr::new(raft.ip(), 5060).to_string()),
            http_addr: or(&r.http, SocketAddr::new(raft.ip(), 8080).to_string()),
        };
        match cluster.add_node(id, member).await {
            Ok(()) => {
                self.audit(&ctx, &r.id, "allowed", &format!("added n{id} at {raft}"));
                Ok(Response::new(pb::MembershipReply {
                    outcome: format!("added n{id}"),
                }))
            }
            Err(e) => {
                self.audit(&ctx, &r.id, "failed", &format!("{e:#}"));
                Err(Status::failed_precondition(format!("{e:#}")))
            }
        }
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let r = req.get_ref().clone();
        check_text("id", &r.id, true)?;
        let ctx = self.authorize(&req, "ClusterService.RemoveNode", Role::Admin, &r.id)?;
        let cluster = self.cluster()?;
        let Some(id) = crate::config::parse_node_id(&r.id) else {
            return Err(Status::invalid_argument(format!(
                "`{}` is not a node id",
                bounded(&r.id)
            )));
        };
        match cluster.remove_node(id).await {
            Ok(()) => {
                self.audit(&ctx, &r.id, "allowed", &format!("removed n{id}"));
                Ok(Response::new(pb::MembershipReply {
                    outcome: format!("removed n{id}"),
                }))
            }
            Err(e) => {
                self.audit(&ctx, &r.id, "failed", &format!("{e:#}"));
                Err(Status::failed_precondition(format!("{e:#}")))
            }
        }
    }
}

/// A stored CDR on the wire.
pub fn cdr_to_pb(c: Cdr) -> pb::Cdr {
    pb::Cdr {
        call_id: c.call_id,
        sip_call_id: c.sip_call_id,
        caller: c.caller,
        dialled: c.dialled,
        queue: c.queue,
        agent: c.agent,
        arrived_at_ms: c.arrived_at_ms,
        offered_at_ms: c.offered_at_ms,
        answered_at_ms: c.answered_at_ms,
        ended_at_ms: c.ended_at_ms,
        wait_ms: c.wait_ms,
        disposition: c.disposition,
        hangup_by: c.hangup_by,
        cause: c.cause,
        offers: c.offers,
        post_dial_us: c.post_dial_us,
        rtp_caller_to_agent: c.rtp_caller_to_agent,
        rtp_agent_to_caller: c.rtp_agent_to_caller,
        node: c.node,
        hold_ms: c.hold_ms,
        ended_by: c.ended_by,
        direction: c.direction,
        transfer: c.transfer,
    }
}

/// A CDR from the wire, as the record store keeps it.
pub fn cdr_from_pb(c: pb::Cdr) -> Cdr {
    Cdr {
        call_id: c.call_id,
        sip_call_id: c.sip_call_id,
        caller: c.caller,
        dialled: c.dialled,
        queue: c.queue,
        agent: c.agent,
        arrived_at_ms: c.arrived_at_ms,
        offered_at_ms: c.offered_at_ms,
        answered_at_ms: c.answered_at_ms,
        ended_at_ms: c.ended_at_ms,
        wait_ms: c.wait_ms,
        disposition: c.disposition,
        hangup_by: c.hangup_by,
        cause: c.cause,
        offers: c.offers,
        post_dial_us: c.post_dial_us,
        rtp_caller_to_agent: c.rtp_caller_to_agent,
        rtp_agent_to_caller: c.rtp_agent_to_caller,
        node: c.node,
        hold_ms: c.hold_ms,
        ended_by: c.ended_by,
        direction: c.direction,
        transfer: c.transfer,
    }
}

/// A search request as the record store takes it (empty text: no filter).
fn recording_query(r: &pb::SearchRecordingsRequest) -> RecordingQuery {
    let text = |t: &str| (!t.is_empty()).then(|| t.to_string());
    RecordingQuery {
        from_ms: r.from_ms,
        to_ms: r.to_ms,
        number: text(&r.number),
        agent: text(&r.agent),
        queue: text(&r.queue),
        min_duration_ms: r.min_duration_ms,
        max_duration_ms: r.max_duration_ms,
        limit: page(r.limit),
    }
}

/// A search's filters for the audit log, e.g. `agent=1001 from_ms=1714521600000`.
fn describe_query(q: &RecordingQuery) -> String {
    let mut parts = Vec::new();
    let mut text = |name: &str, v: &Option<String>| {
        if let Some(v) = v {
            parts.push(format!("{name}={v}"));
        }
    };
    text("number", &q.number);
    text("agent", &q.agent);
    text("queue", &q.queue);
    for (name, v) in [
        ("from_ms", q.from_ms),
        ("to_ms", q.to_ms),
        ("min_duration_ms", q.min_duration_ms),
        ("max_duration_ms", q.max_duration_ms),
    ] {
        if let Some(v) = v {
            parts.push(format!("{name}={v}"));
        }
    }
    if parts.is_empty() {
        "all recordings".into()
    } else {
        parts.join(" ")
    }
}

/// An indexed recording on the wire.
fn recording_to_pb(r: RecordingEntry) -> pb::Recording {
    pb::Recording {
        call_id: r.call_id,
        agent: r.agent,
        queue: r.queue,
        caller: r.caller,
        start_ms: r.start_ms,
        duration_ms: r.duration_ms,
        path: r.path,
        size_bytes: r.size_bytes,
        node: r.node,
        frames_dropped: r.frames_dropped,
        paused: r.paused,
    }
}

#[tonic::async_trait]
impl pb::record_service_server::RecordService for Api {
    async fn list_cdrs(
        &self,
        req: Request<pb::ListCdrsRequest>,
    ) -> Result<Response<pb::ListCdrsReply>, Status> {
        let ctx = self.authorize(&req, "RecordService.ListCdrs", Role::Agent, "")?;
        let r = req.get_ref();
        let mut cdrs = self
            .shared
            .records
            .list_cdrs(r.since_ms, page(r.limit))
            .map_err(|e| Status::internal(e.to_string()))?;
        // An agent sees only the calls they took.
        if ctx.principal.role == Role::Agent {
            let own = ctx.principal.agent.clone();
            cdrs.retain(|c| c.agent.is_some() && c.agent == own);
        }
        Ok(Response::new(pb::ListCdrsReply {
            cdrs: cdrs.into_iter().map(cdr_to_pb).collect(),
        }))
    }

    async fn search_recordings(
        &self,
        req: Request<pb::SearchRecordingsRequest>,
    ) -> Result<Response<pb::SearchRecordingsReply>, Status> {
        let r = req.get_ref().clone();
        for (field, text) in [
            ("number", &r.number),
            ("agent", &r.agent),
            ("queue", &r.queue),
        ] {
            check_text(field, text, false)?;
        }
        let query = recording_query(&r);
        let target = describe_query(&query);
        let ctx = self.authorize(
            &req,
            "RecordService.SearchRecordings",
            Role::Supervisor,
            &target,
        )?;
        let records = Arc::clone(&self.shared.records);
        let found = tokio::task::spawn_blocking(move || records.search_recordings(&query))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        // Listening to calls is sensitive: who searched for what stays in the audit log.
        self.audit(
            &ctx,
            &target,
            "allowed",
            &format!("{} recording(s)", found.recordings.len()),
        );
        Ok(Response::new(pb::SearchRecordingsReply {
            recordings: found.recordings.into_iter().map(recording_to_pb).collect(),
            truncated: found.truncated,
        }))
    }

    async fn list_voicemail(
        &self,
        req: Request<pb::ListVoicemailRequest>,
    ) -> Result<Response<pb::ListVoicemailReply>, Status> {
        let mailbox = req.get_ref().mailbox.clone();
        check_text("mailbox", &mailbox, false)?;
        self.authorize(
            &req,
            "RecordService.ListVoicemail",
            Role::Supervisor,
            &mailbox,
        )?;
        let boxes = crate::voicemail::Mailboxes::new(&self.shared.config.data_dir());
        let wanted = (!mailbox.is_empty()).then_some(mailbox);
        let listed = tokio::task::spawn_blocking(move || {
            boxes.list(wanted.as_deref()).map(|list| (boxes, list))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let (boxes, list) = listed.map_err(|e| match e {
            crate::voicemail::VoicemailError::BadMailbox(_) => {
                Status::invalid_argument(e.to_string())
            }
            other => Status::internal(other.to_string()),
        })?;
        let root = boxes.root().to_path_buf();
        Ok(Response::new(pb::ListVoicemailReply {
            messages: list
                .into_iter()
                .map(|m| pb::Voicemail {
                    path: root.join(&m.mailbox).join(&m.file).display().to_string(),
                    call_id: m.call_id,
                    mailbox: m.mailbox,
                    caller: m.caller,
                    dialled: m.dialled,
                    queue: m.queue,
                    start_ms: m.start_ms,
                    duration_ms: m.duration_ms,
                })
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for Api {
    async fn list(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditReply>, Status> {
        self.authorize(&req, "AuditService.List", Role::Admin, "")?;
        let r = req.get_ref();
        let entries = self
            .audit
            .list(r.since_ms, page(r.limit))
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ListAuditReply {
            entries: entries
                .into_iter()
                .map(|e| pb::AuditEntry {
                    at_ms: e.at_ms,
                    principal: e.principal,
                    role: e.role,
                    action: e.action,
                    target: e.target,
                    outcome: e.outcome,
                    detail: e.detail,
                    peer: e.peer,
                })
                .collect(),
        }))
    }
}
