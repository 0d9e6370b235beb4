//! The node's HTTP surface: health, status and call records as JSON.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
