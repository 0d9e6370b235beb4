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
        .route("/api/status", get(status))
        .route("/api/cdrs", get(cdrs))
        .route("/api/agents/{agent}/ready", post(agent_ready))
        .route("/api/agents/{agent}/not-ready", post(agent_not_ready))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "HTTP server stopped");
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
