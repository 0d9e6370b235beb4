//! `carillon ctl`: administration of a running node over its HTTP API.
//!
//! Until the gRPC API lands (issue 7), `--node` names the node's HTTP address.

use std::time::Duration;

use anyhow::{bail, Context as _};
use carillon_ops::records::Cdr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

pub async fn cdr_list(node: &str, json: bool, limit: usize) -> anyhow::Result<()> {
    let body = http_get(node, &format!("/api/cdrs?limit={limit}")).await?;
    let cdrs: Vec<Cdr> = serde_json::from_str(&body).context("node sent CDRs ctl cannot read")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&cdrs)?);
        return Ok(());
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
    for c in &cdrs {
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
pub async fn cluster_status(node: &str, json: bool) -> anyhow::Result<()> {
    let body = http_get(node, "/api/cluster").await?;
    let status: serde_json::Value =
        serde_json::from_str(&body).context("node sent a cluster status ctl cannot read")?;
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
    for m in status["members"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
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
    node: &str,
    id: &str,
    addr: &str,
    site: Option<&str>,
    sip: Option<&str>,
    http: Option<&str>,
) -> anyhow::Result<()> {
    let req = serde_json::json!({ "id": id, "addr": addr, "site": site, "sip": sip, "http": http });
    let body = http_send(node, "POST", "/api/cluster/nodes", Some(&req.to_string())).await?;
    println!("{}", body.trim());
    Ok(())
}

pub async fn cluster_remove_node(node: &str, id: &str) -> anyhow::Result<()> {
    let body = http_send(node, "DELETE", &format!("/api/cluster/nodes/{id}"), None).await?;
    println!("{}", body.trim());
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
