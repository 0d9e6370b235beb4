//! The IVR flow's adapter for one call: plays the prompts the runner ([`crate::ivr`]) asks
//! for, passes the caller's keys (RFC 4733 and in-band, as the media task detects them),
//! turns the runner's deadline into a tokio timer, does the HTTP look-ups, and carries out
//! how the flow ends.
//!
//! A flow that ends in a queue hands the call back to the call task, which enqueues it
//! with the flow's priority and skills. Every other end (voicemail, transfer, hang-up, the
//! caller leaving) happens here and stores the call's record at once: such a call never
//! entered routing. Its disposition is `ivr` (cause `hangup`, `transfer`, `transfer-failed`,
//! `failed`), `voicemail`, or `abandoned` when the caller hung up (both cause `ivr`).
//!
//! Transfer dials `sip:<number>@<gateway>` as a blind transfer to a number does
//! ([`super::control`]): the caller hears the hold music while it rings, then is bridged to
//! it, and the node follows both legs until either hangs up. The record (disposition `ivr`,
//! cause `transfer`) says `transfer: ivr:<number>`, when the number answered, and the RTP
//! relayed each way; a number that does not answer gets the caller hung up on (cause
//! `transfer-failed`).
//!
//! Look-ups are plain HTTP/1.1 POSTs with a JSON body and `Connection: close`; the reply
//! must be 2xx with a JSON body of at most [`LOOKUP_REPLY_BYTES_MAX`] bytes, sent with a
//! Content-Length or closed at its end (chunked replies are refused).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use carillon_media::{MediaLeg, Prompt};
use carillon_ops::records::Cdr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::control::{DialPurpose, GatewayDial, TransferEnd, TRANSFER_RING_MS};
use super::{recv_dtmf, Call};
use crate::clock::now_ms;
use crate::ivr::{Action, CallInfo, Event, Flow, FlowRun, Outcome};
use crate::sip::DialogState;

/// Largest look-up reply read (headers and body).
pub const LOOKUP_REPLY_BYTES_MAX: u64 = 64 * 1024;
/// Prompts kept loaded across calls.
const PROMPT_CACHE_MAX: usize = 256;

/// Where a flow that ends in a queue sends the call.
pub(super) struct Queued {
    pub queue: String,
    pub priority: u32,
    pub skills: Vec<String>,
}

impl Call {
    /// The flow of the number this call dialled, if it has one.
    pub(super) fn number_flow(&self) -> Option<Flow> {
        self.shared.flows.for_number(&self.dialled)
    }

    /// Runs `flow` for the caller. `Some` when the call goes on to a queue; `None` when the
    /// flow ended the call (its record is stored).
    pub(super) async fn run_ivr(&mut self, flow: Flow) -> Option<Queued> {
        let arrived_ms = now_ms();
        let name = flow.name.clone();
        let info_ = CallInfo {
            call: self.id.clone(),
            caller: self.caller.clone(),
            dialled: self.dialled.clone(),
        };
        info!(flow = %name, "running the IVR flow");
        let mut dtmf = self.media.take_dtmf();
        let (mut run, mut action) =
            FlowRun::start(Arc::new(flow), info_, BTreeMap::new(), arrived_ms);
        let mut prompt_end: Option<tokio::time::Instant> = None;
        let mut lookup: Option<oneshot::Receiver<Result<serde_json::Value, String>>> = None;
        let outcome = loop {
            match action {
                Action::Play(path) => {
                    let length = match load_prompt(&path).await {
                        Some(p) => {
                            let length = Duration::from_millis(p.duration_ms());
                            self.media.play_loop(p);
                            length
                        }
                        None => {
                            self.media.stop_playback();
                            Duration::ZERO
                        }
                    };
                    prompt_end = Some(tokio_now() + length);
                }
                Action::Silence => {
                    self.media.stop_playback();
                    prompt_end = None;
                }
                Action::Wait => {}
                Action::Lookup {
                    url,
                    timeout_ms,
                    body,
                } => {
                    let (tx, rx) = oneshot::channel();
                    lookup = Some(rx);
                    tokio::spawn(async move {
                        let limit = Duration::from_millis(timeout_ms);
                        let reply = match tokio::time::timeout(limit, post_json(&url, &body)).await
                        {
                            Ok(r) => r,
                            Err(_) => Err(format!("no reply within {timeout_ms} ms")),
                        };
                        tx.send(reply).ok();
                    });
                }
                Action::Finish(outcome) => break outcome,
            }
            let deadline = run
                .deadline_ms()
                .map(|at| tokio_now() + Duration::from_millis(at.saturating_sub(now_ms())));
            let event = tokio::select! {
                d = recv_dtmf(&mut dtmf) => match d {
                    Some(d) => Some(Event::DigitReceived(d.digit)),
                    None => {
                        dtmf = None;
                        None
                    }
                },
                _ = super::callback::sleep_until_opt(prompt_end) => {
                    prompt_end = None;
                    self.media.stop_playback();
                    Some(Event::PromptDone)
                }
                _ = super::callback::sleep_until_opt(deadline) => Some(Event::Timeout),
                r = recv_lookup(&mut lookup) => {
                    lookup = None;
                    Some(Event::LookupDone(r))
                }
                st = self.caller_states.recv() => match st {
                    Some(DialogState::Terminated(..)) | None => {
                        info!(flow = %name, step = run.step_id(), "caller hung up in the IVR");
                        self.media.stop_playback();
                        self.store_ivr_record(arrived_ms, "abandoned", "caller", "ivr").await;
                        return None;
                    }
                    Some(st @ DialogState::Updated(..)) => {
                        self.on_caller_state(st).await;
                        None
                    }
                    Some(_) => None,
                },
            };
            action = match event {
                Some(e) => run.on_event(e, now_ms()),
                None => Action::Wait,
            };
        };
        self.media.stop_playback();
        info!(flow = %name, step = run.step_id(), outcome = ?outcome, "IVR flow ended");
        match outcome {
            Outcome::Queue {
                queue,
                priority,
                skills,
            } => {
                if self.shared.config.callback.is_some() {
                    self.dtmf = dtmf;
                }
                let (number_priority, number_skills) =
                    self.shared.config.call_routing(&self.dialled, &queue);
                Some(Queued {
                    priority: priority.unwrap_or(number_priority),
                    skills: skills.unwrap_or(number_skills),
                    queue,
                })
            }
            Outcome::Voicemail { mailbox } => {
                self.take_voicemail(&mailbox).await;
                self.store_ivr_record(arrived_ms, "voicemail", "caller", "ivr")
                    .await;
                None
            }
            Outcome::Transfer { number, gateway } => {
                self.transfer_from_ivr(arrived_ms, &number, gateway).await;
                None
            }
            Outcome::HangUp { prompt } => {
                if let Some(p) = prompt {
                    if let Some(p) = load_prompt(&p).await {
                        if !self.play_once(p).await {
                            self.store_ivr_record(arrived_ms, "abandoned", "caller", "ivr")
                                .await;
                            return None;
                        }
                    }
                }
                self.caller_dialog.bye().await.ok();
                self.store_ivr_record(arrived_ms, "ivr", "system", "hangup")
                    .await;
                None
            }
            Outcome::Failed(why) => {
                warn!(flow = %name, %why, "IVR flow failed; hanging up");
                self.caller_dialog.bye().await.ok();
                self.store_ivr_record(arrived_ms, "ivr", "system", "failed")
                    .await;
                None
            }
        }
    }

    /// Dials `number` through `gateway` while the caller hears the hold music; on an
    /// answer bridges the caller to it and follows both legs until either hangs up (as a
    /// blind transfer to a number does), then stores the record: disposition `ivr`, cause
    /// `transfer`, `transfer: ivr:<number>`, answered when the number answered. A number
    /// that does not answer within [`TRANSFER_RING_MS`] or refuses gets the caller hung up
    /// on, cause `transfer-failed`.
    async fn transfer_from_ivr(&mut self, arrived_ms: u64, number: &str, gateway: SocketAddr) {
        self.control.transfer = Some(format!("ivr:{number}"));
        let dial = match self.dial_via(gateway, number, DialPurpose::Transfer, TRANSFER_RING_MS) {
            Ok(d) => d,
            Err(e) => {
                warn!(%number, error = %e, "IVR transfer cannot dial; hanging up");
                return self.ivr_transfer_failed(arrived_ms).await;
            }
        };
        info!(%number, %gateway, "IVR transfer: dialling the number; the caller hears hold music");
        self.media.play_loop(self.shared.hold_music.clone());
        let GatewayDial {
            dialog,
            states,
            sdp,
        } = dial;
        let outcome = loop {
            tokio::select! {
                Some(d) = self.control.dials_rx.recv() => break d,
                st = self.caller_states.recv() => match st {
                    Some(DialogState::Terminated(..)) | None => {
                        info!(%number, "caller hung up while the IVR transfer rang");
                        self.media.stop_playback();
                        dialog.cancel().await.ok();
                        // The dial reports soon after the CANCEL; an answer that crossed
                        // it is hung up.
                        let wait = Duration::from_millis(super::RECORD_WAIT_MS);
                        if let Ok(Some(d)) = tokio::time::timeout(wait, self.control.dials_rx.recv()).await {
                            if d.answered() {
                                self.remove_dialog(&d.dialog);
                                d.dialog.bye().await.ok();
                            }
                        }
                        self.remove_dialog(&dialog);
                        self.store_ivr_record(arrived_ms, "abandoned", "caller", "ivr").await;
                        return;
                    }
                    Some(st @ DialogState::Updated(..)) => self.on_caller_state(st).await,
                    Some(_) => {}
                },
            }
        };
        let (remote, codec) = match outcome.remote_audio() {
            Ok(x) => x,
            Err(why) => {
                info!(%number, %why, "IVR transfer: the number did not take the call; hanging up");
                if outcome.answered() {
                    self.remove_dialog(&outcome.dialog);
                    outcome.dialog.bye().await.ok();
                }
                self.remove_dialog(&dialog);
                self.media.stop_playback();
                metrics::counter!("carillon_transfers_failed_total", "to" => "ivr").increment(1);
                return self.ivr_transfer_failed(arrived_ms).await;
            }
        };
        self.media
            .bridge(MediaLeg::new(outcome.port, codec, Some(remote)));
        let answered_ms = now_ms();
        info!(%number, "IVR transfer: the number answered; caller bridged to it");
        metrics::counter!("carillon_transfers_total", "to" => "ivr").increment(1);
        self.control.external = Some(outcome.dialog);
        self.control.states = Some(states);
        self.control.sdp = Some(sdp);
        let by = match self.follow_transfer().await {
            Some(TransferEnd::Caller) => "caller",
            _ => "system",
        };
        let mut cdr = self.ivr_cdr(arrived_ms, "ivr", by, "transfer");
        cdr.answered_at_ms = Some(answered_ms);
        let counters = self.media.counters();
        cdr.rtp_caller_to_agent = counters.caller_to_agent_packets;
        cdr.rtp_agent_to_caller = counters.agent_to_caller_packets;
        cdr.ended_by = self.control.ended_by.clone();
        self.store_ivr_cdr(cdr).await;
    }

    /// The caller is hung up on after a transfer that could not be made.
    async fn ivr_transfer_failed(&mut self, arrived_ms: u64) {
        self.caller_dialog.bye().await.ok();
        self.store_ivr_record(arrived_ms, "ivr", "system", "transfer-failed")
            .await;
    }

    /// The record of a call that ended in its flow.
    async fn store_ivr_record(&self, arrived_ms: u64, disposition: &str, by: &str, cause: &str) {
        self.store_ivr_cdr(self.ivr_cdr(arrived_ms, disposition, by, cause))
            .await;
    }

    /// The record of a call that ended in its flow, to be completed by a transfer.
    fn ivr_cdr(&self, arrived_ms: u64, disposition: &str, by: &str, cause: &str) -> Cdr {
        Cdr {
            call_id: self.id.clone(),
            sip_call_id: self.sip_call_id.clone(),
            caller: self.caller.clone(),
            dialled: self.dialled.clone(),
            queue: self.queue.clone(),
            agent: None,
            arrived_at_ms: arrived_ms,
            offered_at_ms: None,
            answered_at_ms: None,
            ended_at_ms: now_ms(),
            wait_ms: 0,
            disposition: disposition.to_string(),
            hangup_by: by.to_string(),
            cause: Some(cause.to_string()),
            offers: 0,
            post_dial_us: None,
            rtp_caller_to_agent: 0,
            rtp_agent_to_caller: 0,
            node: self.shared.node_id.clone(),
            hold_ms: 0,
            ended_by: None,
            direction: "inbound".into(),
            transfer: self.control.transfer.clone(),
        }
    }

    async fn store_ivr_cdr(&self, cdr: Cdr) {
        let (disposition, cause) = (
            cdr.disposition.clone(),
            cdr.cause.clone().unwrap_or_default(),
        );
        metrics::counter!("carillon_ivr_ends_total", "disposition" => disposition.clone(), "cause" => cause.clone())
            .increment(1);
        info!(%disposition, %cause, "call ended in the IVR; record stored");
        self.shared.record_writer.store(cdr).await;
    }
}

fn tokio_now() -> tokio::time::Instant {
    tokio::time::Instant::from_std(crate::clock::instant())
}

async fn recv_lookup(
    rx: &mut Option<oneshot::Receiver<Result<serde_json::Value, String>>>,
) -> Result<serde_json::Value, String> {
    match rx {
        Some(rx) => rx
            .await
            .unwrap_or_else(|_| Err("the look-up task ended without a reply".into())),
        None => std::future::pending().await,
    }
}

/// A prompt by path, loaded once and kept (up to [`PROMPT_CACHE_MAX`]); None, with a
/// warning, when the file is not a usable WAV (the step then goes on as if it had played).
async fn load_prompt(path: &Path) -> Option<Arc<Prompt>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<Prompt>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    // A poisoned lock only means a panic elsewhere mid-insert; the map is still usable.
    if let Some(p) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(path) {
        return Some(p.clone());
    }
    let owned = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || Prompt::load_wav(&owned)).await;
    match loaded {
        Ok(Ok(p)) => {
            let p = Arc::new(p);
            let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() < PROMPT_CACHE_MAX {
                map.insert(path.to_path_buf(), p.clone());
            }
            Some(p)
        }
        Ok(Err(e)) => {
            warn!(path = %path.display(), error = %e, "IVR prompt unusable; skipping it");
            None
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "IVR prompt load failed");
            None
        }
    }
}

/// POSTs `body` to `url` (`http://host:port/path`) and parses the 2xx reply as JSON.
async fn post_json(url: &str, body: &serde_json::Value) -> Result<serde_json::Value, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http:// URL: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let target = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut stream = tokio::net::TcpStream::connect(&target)
        .await
        .map_err(|e| format!("cannot connect to {target}: {e}"))?;
    let payload = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send the look-up: {e}"))?;
    let mut reply = Vec::new();
    stream
        .take(LOOKUP_REPLY_BYTES_MAX + 1)
        .read_to_end(&mut reply)
        .await
        .map_err(|e| format!("cannot read the reply: {e}"))?;
    if reply.len() as u64 > LOOKUP_REPLY_BYTES_MAX {
        return Err(format!("reply larger than {LOOKUP_REPLY_BYTES_MAX} bytes"));
    }
    parse_reply(&reply)
}

/// An HTTP/1.x response's JSON body, if the status is 2xx.
fn parse_reply(reply: &[u8]) -> Result<serde_json::Value, String> {
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the reply has no end of headers")?;
    let head = std::str::from_utf8(&reply[..split]).map_err(|_| "reply headers are not text")?;
    let mut body = &reply[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|_| status.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP reply: {status}"))?;
    if !(200..300).contains(&code) {
        return Err(format!("the look-up answered {code}"));
    }
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") && !value.eq_ignore_ascii_case("identity")
        {
            return Err("chunked replies are not supported; send a Content-Length".into());
        }
        if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value.parse().map_err(|_| "bad Content-Length")?;
            if len > body.len() {
                return Err("the reply ended before its Content-Length".into());
            }
            body = &body[..len];
        }
    }
    serde_json::from_slice(body).map_err(|e| format!("the reply is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::parse_reply;

    #[test]
    fn replies_parse_or_say_why_not() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"vars\":{}}  trailing";
        assert_eq!(
            parse_reply(ok).expect("json")["vars"],
            serde_json::json!({})
        );
        let closed = b"HTTP/1.0 200 OK\r\n\r\n{\"a\":1}";
        assert_eq!(parse_reply(closed).expect("json")["a"], 1);
        let e = parse_reply(b"HTTP/1.1 500 Oops\r\n\r\n{}").expect_err("500");
        assert!(e.contains("500"), "{e}");
        let e = parse_reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}")
            .expect_err("chunked");
        assert!(e.contains("chunked"), "{e}");
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\n\r\nnot json").is_err());
        assert!(parse_reply(b"garbage").is_err());
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{}").is_err());
    }
}
