//! The node's HTTP surface: health, status and call records as JSON.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::node::Shared;

/// Most CDRs one request returns.
const CDR_PAGE_MAX: usize = 100_000;

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("http.listen: cannot listen on {addr}: {e}"))
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/cluster", get(cluster_status))
        .route("/api/cluster/nodes", post(cluster_add))
        .route(
            "/api/cluster/nodes/{id}",
            axum::routing::delete(cluster_remove),
        )
        .route("/api/status", get(status))
        .route("/api/cdrs", get(cdrs))
        .route("/api/agents/{agent}/ready", post(agent_ready))
        .route("/api/agents/{agent}/not-ready", post(agent_not_ready))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}

/// Ready to take calls: standalone, or in a cluster that has a leader.
async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    match shared.routing.cluster() {
        None => "ready".into_response(),
        Some(c) => match c.leader() {
            Some(l) => format!("ready (leader n{l})").into_response(),
            None => (StatusCode::SERVICE_UNAVAILABLE, "no cluster leader").into_response(),
        },
    }
}

/// Prometheus text exposition format.
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let body = crate::metrics::render(&shared);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn no_cluster() -> Response {
    (
        StatusCode::NOT_FOUND,
        "this node runs standalone (no [cluster] section in its config)",
    )
        .into_response()
}

async fn cluster_status(State(shared): State<Arc<Shared>>) -> Response {
    match shared.routing.cluster() {
        None => no_cluster(),
        Some(c) => Json(c.status().await).into_response(),
    }
}

/// `ctl cluster add-node`: the new node's Raft address, and where its SIP and HTTP
/// listen and which site it serves (by default the Raft address's host with the
/// conventional ports 5060 and 8080, and the site `default`).
#[derive(Deserialize)]
struct AddNode {
    id: String,
    addr: String,
    site: Option<String>,
    sip: Option<String>,
    http: Option<String>,
}

async fn cluster_add(State(shared): State<Arc<Shared>>, Json(req): Json<AddNode>) -> Response {
    let Some(cluster) = shared.routing.cluster() else {
        return no_cluster();
    };
    let Some(id) = crate::config::parse_node_id(&req.id) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("`{}` is not a node id (n4, or 4)", req.id),
        )
            .into_response();
    };
    let raft: SocketAddr = match req.addr.parse() {
        Ok(a) => a,
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("`{}` is not an address (host:port)", req.addr),
            )
                .into_response()
        }
    };
    let member = carillon_consensus::types::Member {
        raft_addr: raft.to_string(),
        site: req.site.unwrap_or_else(|| "default".into()),
        sip_addr: req
            .sip
            .unwrap_or_else(|| SocketAddr::new(raft.ip(), 5060).to_string()),
        http_addr: req
            .http
            .unwrap_or_else(|| SocketAddr::new(raft.ip(), 8080).to_string()),
    };
    match cluster.add_node(id, member).await {
        Ok(()) => Json(serde_json::json!({ "added": format!("n{id}") })).into_response(),
        Err(e) => (StatusCode::CONFLICT, format!("{e:#}")).into_response(),
    }
}

async fn cluster_remove(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let Some(cluster) = shared.routing.cluster() else {
        return no_cluster();
    };
    let Some(n) = crate::config::parse_node_id(&id) else {
        return (StatusCode::BAD_REQUEST, format!("`{id}` is not a node id")).into_response();
    };
    match cluster.remove_node(n).await {
        Ok(()) => Json(serde_json::json!({ "removed": format!("n{n}") })).into_response(),
        Err(e) => (StatusCode::CONFLICT, format!("{e:#}")).into_response(),
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.status()).into_response()
}

#[derive(Deserialize)]
struct CdrQuery {
    since_ms: Option<u64>,
    limit: Option<usize>,
}

async fn cdrs(State(shared): State<Arc<Shared>>, Query(q): Query<CdrQuery>) -> Response {
    let limit = q.limit.unwrap_or(CDR_PAGE_MAX).min(CDR_PAGE_MAX);
    match shared.records.list_cdrs(q.since_ms.unwrap_or(0), limit) {
        Ok(list) => Json(list).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
struct ReasonQuery {
    reason: Option<String>,
}

async fn agent_ready(State(shared): State<Arc<Shared>>, Path(agent): Path<String>) -> Response {
    let cmd = carillon_routing::Command::AgentReady {
        agent: agent.clone(),
        at: crate::clock::now_ms(),
    };
    agent_command(&shared, &agent, cmd).await
}

async fn agent_not_ready(
    State(shared): State<Arc<Shared>>,
    Path(agent): Path<String>,
    Query(q): Query<ReasonQuery>,
) -> Response {
    let cmd = carillon_routing::Command::AgentNotReady {
        agent: agent.clone(),
        reason: q.reason.unwrap_or_else(|| "break".into()),
        at: crate::clock::now_ms(),
    };
    agent_command(&shared, &agent, cmd).await
}

async fn agent_command(shared: &Shared, agent: &str, cmd: carillon_routing::Command) -> Response {
    match shared.routing.propose(cmd).await {
        Ok(()) => {
            let state = shared.routing.agent_state(agent);
            Json(serde_json::json!({ "agent": agent, "state": state })).into_response()
        }
        Err(e) => (StatusCode::CONFLICT, e.to_string()).into_response(),
    }
}
