//! Inbound checks that must run before rsipstack's transaction layer sees a message.
//!
//! 1. Requests whose headers the transaction layer cannot key (a CSeq that is not a number,
//!    a From it cannot read...) are dropped by rsipstack without an answer; here they get
//!    400 Bad Request, built from the raw header values, sent back where they came from.
//! 2. Splits comma-joined Via values (`Via: SIP/2.0/UDP a;branch=1, SIP/2.0/UDP b;branch=2`)
//!    into one header each, before rsipstack keys a transaction on the top Via. RFC 3261
//!    section 7.3.1 makes the two forms equivalent; rsipstack reads only the first form, so
//!    a joined value would put the second hop's text into the top Via's branch.

use async_trait::async_trait;
use rsipstack::sip::{Header, Method, SipMessage, StatusCode};
use rsipstack::transaction::endpoint::TransportEventInspector;
use rsipstack::transaction::key::{TransactionKey, TransactionRole};
use rsipstack::transport::TransportEvent;

pub struct InboundInspector;

#[async_trait]
impl TransportEventInspector for InboundInspector {
    async fn handle(&self, event: TransportEvent) -> Option<TransportEvent> {
        match event {
            TransportEvent::Incoming(msg, conn, from) => {
                let msg = split_joined_vias(msg);
                if let SipMessage::Request(req) = &msg {
                    if let Err(e) = TransactionKey::from_request(req, TransactionRole::Server) {
                        tracing::info!(src = %from, error = %e, "malformed request");
                        if req.method != Method::Ack {
                            if let Some(resp) = bad_request(req) {
                                conn.send(resp.into(), Some(&from)).await.ok();
                            }
                        }
                        return None;
                    }
                }
                Some(TransportEvent::Incoming(msg, conn, from))
            }
            other => Some(other),
        }
    }
}

/// A 400 echoing the request's Via, From, To, Call-ID and CSeq as they came (RFC 3261
/// section 8.2.6.2), or `None` when there is no Via to answer along.
fn bad_request(req: &rsipstack::sip::Request) -> Option<rsipstack::sip::Response> {
    let headers: Vec<Header> = req
        .headers
        .iter()
        .filter(|h| {
            matches!(
                h,
                Header::Via(_)
                    | Header::From(_)
                    | Header::To(_)
                    | Header::CallId(_)
                    | Header::CSeq(_)
            )
        })
        .cloned()
        .collect();
    if !headers.iter().any(|h| matches!(h, Header::Via(_))) {
        return None;
    }
    let mut headers = headers;
    headers.push(Header::ContentLength(0.into()));
    Some(rsipstack::sip::Response {
        status_code: StatusCode::BadRequest,
        wire_reason: None,
        version: rsipstack::sip::Version::V2,
        headers: headers.into(),
        body: vec![],
    })
}

/// Rewrites the message's Via headers so that each carries one value.
pub fn split_joined_vias(mut msg: SipMessage) -> SipMessage {
    let headers = match &mut msg {
        SipMessage::Request(r) => &mut r.headers,
        SipMessage::Response(r) => &mut r.headers,
    };
    let joined = headers
        .iter()
        .any(|h| matches!(h, Header::Via(v) if split_values(v.value()).len() > 1));
    if !joined {
        return msg;
    }
    let old: Vec<Header> = std::mem::take(headers).into();
    let mut out = Vec::with_capacity(old.len() + 2);
    for header in old {
        match header {
            Header::Via(v) => {
                for part in split_values(v.value()) {
                    out.push(Header::Via(rsipstack::sip::headers::Via::new(part)));
                }
            }
            other => out.push(other),
        }
    }
    *headers = out.into();
    msg
}

/// Splits at commas that are outside quoted strings and brackets.
fn split_values(value: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut depth = 0u32;
    for c in value.chars() {
        match c {
            '"' => quoted = !quoted,
            '[' if !quoted => depth += 1,
            ']' if !quoted => depth = depth.saturating_sub(1),
            ',' if !quoted && depth == 0 => {
                let part = current.trim();
                if !part.is_empty() {
                    parts.push(part.to_string());
                }
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    let part = current.trim();
    if !part.is_empty() {
        parts.push(part.to_string());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_vias_become_separate_headers() {
        let raw = "OPTIONS sip:100@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1, SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK2\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        let msg = SipMessage::try_from(raw).expect("parses");
        let SipMessage::Request(req) = split_joined_vias(msg) else {
            panic!("request expected");
        };
        let vias: Vec<String> = req
            .headers
            .iter()
            .filter_map(|h| match h {
                Header::Via(v) => Some(v.value().to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(
            vias,
            [
                "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1",
                "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK2"
            ]
        );
    }

    #[test]
    fn single_via_untouched_and_quotes_respected() {
        assert_eq!(split_values("SIP/2.0/UDP a;x=\"p,q\"").len(), 1);
        assert_eq!(split_values(" , ").len(), 0);
    }
}
