//! The accepting side: authenticate each connection by its certificate, then answer one
//! request per stream.
//!
//! Every request that speaks for a node (a vote's candidate, an append's or a snapshot's
//! leader) must come over a connection whose certificate names that node; otherwise it is
//! refused and logged, so a node holding one certificate cannot act as another.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::vote::RaftLeaderId;
use openraft::Snapshot;
use tokio::sync::Semaphore;

use super::client::SnapshotData;
use super::frame::{self, FrameError};
use super::wire::{ForwardOutcome, PeerStatus, Request, Response, SnapshotBytes};
use super::NetLimits;
use crate::tls::peer_node_id;
use crate::types::{NodeId, Raft};

/// QUIC application error code for a connection refused for its identity.
const CLOSE_NO_IDENTITY: u32 = 0x10;

/// What every connection handler shares.
pub(crate) struct ServerCtx {
    pub(crate) raft: Raft,
    pub(crate) limits: NetLimits,
    pub(crate) connections: Arc<Semaphore>,
}

/// Accept connections until the endpoint closes.
pub(crate) async fn accept_loop(endpoint: quinn::Endpoint, ctx: Arc<ServerCtx>) {
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = ctx.connections.clone().try_acquire_owned() else {
            tracing::warn!(
                remote = %incoming.remote_address(),
                connections_max = ctx.limits.connections_max,
                "refusing a Raft connection: too many open"
            );
            incoming.refuse();
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_connection(conn, ctx).await,
                // Failed handshakes include peers whose certificate the CA did not sign.
                Err(e) => tracing::warn!(%remote, error = %e, "Raft connection handshake failed"),
            }
            drop(permit);
        });
    }
}

async fn serve_connection(conn: quinn::Connection, ctx: Arc<ServerCtx>) {
    let remote = conn.remote_address();
    let Some(peer) = peer_node_id(&conn) else {
        tracing::warn!(%remote, "refusing a Raft connection: its certificate names no node");
        conn.close(CLOSE_NO_IDENTITY.into(), b"certificate names no node");
        return;
    };
    tracing::debug!(%remote, peer, "Raft connection accepted");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move { serve_stream(peer, send, recv, ctx).await });
            }
            Err(e) => {
                tracing::debug!(%remote, peer, reason = %e, "Raft connection ended");
                return;
            }
        }
    }
}

async fn serve_stream(
    peer: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: Arc<ServerCtx>,
) {
    let max = ctx.limits.message_size_max_bytes;
    let read_timeout = Duration::from_millis(ctx.limits.rpc_timeout_ms);
    let req =
        match tokio::time::timeout(read_timeout, frame::read_msg::<_, Request>(&mut recv, max))
            .await
        {
            Ok(Ok(req)) => req,
            Ok(Err(FrameError::Closed)) => return,
            Ok(Err(e)) => {
                tracing::warn!(peer, error = %e, "refusing a Raft request");
                // Stop the rest of an oversized frame from being sent at all.
                let _ = recv.stop(0u32.into());
                answer(&mut send, &Response::Refused(e.to_string()), max).await;
                return;
            }
            Err(_) => {
                tracing::debug!(peer, "Raft request not received in time");
                let _ = recv.stop(0u32.into());
                return;
            }
        };
    let resp = dispatch(peer, req, &mut recv, &ctx).await;
    answer(&mut send, &resp, max).await;
}

async fn answer(send: &mut quinn::SendStream, resp: &Response, max: usize) {
    if let Err(e) = frame::write_msg(send, resp, max).await {
        tracing::warn!(error = %e, "cannot send a Raft response");
        let refusal = Response::Refused(format!("the answer could not be sent: {e}"));
        if frame::write_msg(send, &refusal, max).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

/// Who a request claims to come from, if it speaks for a node.
fn claimed_sender(req: &Request) -> Option<NodeId> {
    let vote = match req {
        Request::Vote(r) | Request::PreVote(r) => &r.vote,
        Request::Append(r) => &r.vote,
        Request::Snapshot { vote, .. } => vote,
        Request::Forward(_) | Request::Status => return None,
    };
    Some(*vote.leader_id().node_id())
}

fn kind(req: &Request) -> &'static str {
    match req {
        Request::Vote(_) => "vote",
        Request::PreVote(_) => "pre-vote",
        Request::Append(_) => "append",
        Request::Snapshot { .. } => "snapshot",
        Request::Forward(_) => "forward",
        Request::Status => "status",
    }
}

async fn dispatch(
    peer: NodeId,
    req: Request,
    recv: &mut quinn::RecvStream,
    ctx: &ServerCtx,
) -> Response {
    if let Some(claimed) = claimed_sender(&req) {
        if claimed != peer {
            tracing::warn!(
                cert_node = peer,
                claimed_node = claimed,
                request = kind(&req),
                "refusing a Raft request that claims another node's identity"
            );
            return Response::Refused(format!(
                "the request claims to come from node {claimed} but the certificate is node {peer}'s"
            ));
        }
    }
    let fatal = |e: &dyn std::fmt::Display| Response::Refused(format!("raft stopped: {e}"));
    match req {
        Request::Vote(r) => match ctx.raft.vote(r).await {
            Ok(v) => Response::Vote(v),
            Err(e) => fatal(&e),
        },
        Request::PreVote(r) => match ctx.raft.pre_vote(r).await {
            Ok(v) => Response::Vote(v),
            Err(e) => fatal(&e),
        },
        Request::Append(r) => match ctx.raft.append_entries(r).await {
            Ok(v) => Response::Append(v),
            Err(e) => fatal(&e),
        },
        Request::Snapshot {
            vote,
            meta,
            size_bytes,
        } => {
            let bytes = match read_snapshot(recv, size_bytes, &ctx.limits).await {
                Ok(b) => b,
                Err(why) => {
                    tracing::warn!(peer, %why, "refusing a snapshot");
                    let _ = recv.stop(0u32.into());
                    return Response::Refused(why);
                }
            };
            let snapshot = Snapshot {
                meta,
                snapshot: SnapshotData::from_snapshot_bytes(bytes),
            };
            match ctx.raft.install_full_snapshot(vote, snapshot).await {
                Ok(v) => Response::Snapshot(v),
                Err(e) => fatal(&e),
            }
        }
        Request::Forward(p) => Response::Forward(forward(&ctx.raft, *p).await),
        Request::Status => {
            let metrics = ctx.raft.metrics().borrow_watched().clone();
            Response::Status(PeerStatus::from_metrics(&metrics))
        }
    }
}

async fn forward(raft: &Raft, p: crate::types::Proposal) -> ForwardOutcome {
    match raft.client_write(p).await {
        Ok(resp) => ForwardOutcome::Applied(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            ForwardOutcome::NotLeader {
                leader_id: f.leader_id,
                leader: f.leader_node,
            }
        }
        Err(e) => ForwardOutcome::Failed(e.to_string()),
    }
}

/// Read `size_bytes` of snapshot chunks, each a frame within the message limit. Memory grows
/// with what actually arrives, never with what the header announced.
async fn read_snapshot(
    recv: &mut quinn::RecvStream,
    size_bytes: u64,
    limits: &NetLimits,
) -> Result<Vec<u8>, String> {
    if size_bytes > limits.snapshot_size_max_bytes {
        return Err(format!(
            "snapshot of {size_bytes} bytes is over the {}-byte limit (snapshot_size_max_bytes)",
            limits.snapshot_size_max_bytes
        ));
    }
    let chunk_timeout = Duration::from_millis(limits.rpc_timeout_ms);
    let mut buf = Vec::new();
    while (buf.len() as u64) < size_bytes {
        let chunk = tokio::time::timeout(
            chunk_timeout,
            frame::read_raw(recv, limits.message_size_max_bytes),
        )
        .await
        .map_err(|_| "snapshot chunk not received in time".to_string())?
        .map_err(|e| format!("snapshot chunk: {e}"))?;
        if chunk.is_empty() || buf.len() as u64 + chunk.len() as u64 > size_bytes {
            return Err("snapshot chunks do not add up to the announced size".into());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}
