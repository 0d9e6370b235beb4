//! Our one adapter around rsipstack (pinned =0.7.14): transports, transactions and dialogs.
//!
//! Everything else in the node talks SIP through this module, so a change of rsipstack's
//! API touches only here. It also covers the stack's known gaps:
//! - comma-joined `Via` values are split into one header per value before the transaction
//!   layer keys the message on the top Via, and requests it cannot key get 400 instead
//!   of silence ([`via::InboundInspector`]);
//! - rsipstack's incoming channels are unbounded, so the dispatcher drains them at once and
//!   puts admission control in front of any real work: a bounded number of requests in
//!   flight, beyond which new requests are refused with 503 and Retry-After.

pub mod via;

use std::net::SocketAddr;
use std::sync::Arc;

use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::sip::prelude::{HasHeaders, HeadersExt};
use rsipstack::sip::{Header, Request, StatusCode};
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transaction::TransactionReceiver;
use rsipstack::transport::udp::UdpConnection;
use rsipstack::transport::{SipAddr, SipConnection, TcpListenerConnection, TransportLayer};
use rsipstack::EndpointBuilder;
use tokio_util::sync::CancellationToken;

pub use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver, TerminatedReason};
pub use rsipstack::dialog::invitation::InviteOption;
pub use rsipstack::dialog::invite_dialog::InviteDialog;
pub use rsipstack::dialog::DialogId;
pub use rsipstack::sip as rsip;

use crate::registrar::SipTransport;

#[derive(Debug, thiserror::Error)]
pub enum SipError {
    #[error("cannot listen for SIP on {addr} ({transport}): {reason}")]
    Listen {
        addr: SocketAddr,
        transport: &'static str,
        reason: String,
    },
    #[error("SIP stack: {0}")]
    Stack(String),
}

impl From<rsipstack::Error> for SipError {
    fn from(e: rsipstack::Error) -> Self {
        SipError::Stack(e.to_string())
    }
}

/// A running SIP endpoint: UDP and TCP on one address.
pub struct SipStack {
    pub dialogs: Arc<DialogLayer>,
    pub listen: SocketAddr,
    endpoint: Arc<rsipstack::transaction::Endpoint>,
    cancel: CancellationToken,
}

impl SipStack {
    /// Binds UDP and TCP on `listen` and starts the endpoint. Returns the stack and the
    /// stream of new server transactions (requests that start one).
    pub async fn start(listen: SocketAddr) -> Result<(Self, TransactionReceiver), SipError> {
        let cancel = CancellationToken::new();
        let transport = TransportLayer::new(cancel.clone());
        let udp = UdpConnection::create_connection(listen, None, Some(cancel.child_token()))
            .await
            .map_err(|e| SipError::Listen {
                addr: listen,
                transport: "udp",
                reason: e.to_string(),
            })?;
        transport.add_transport(udp.into());
        let tcp = TcpListenerConnection::new(listen, None)
            .await
            .map_err(|e| SipError::Listen {
                addr: listen,
                transport: "tcp",
                reason: e.to_string(),
            })?;
        transport.add_transport(tcp.into());
        let endpoint = EndpointBuilder::new()
            .with_user_agent(concat!("Carillon/", env!("CARGO_PKG_VERSION")))
            .with_transport_layer(transport)
            .with_cancel_token(cancel.clone())
            .with_transport_inspector(Box::new(via::InboundInspector))
            .build();
        let incoming = endpoint.incoming_transactions()?;
        let dialogs = Arc::new(DialogLayer::new(endpoint.inner.clone()));
        let endpoint = Arc::new(endpoint);
        let serving = endpoint.clone();
        tokio::spawn(async move { serving.serve().await });
        Ok((
            Self {
                dialogs,
                listen,
                endpoint,
                cancel,
            },
            incoming,
        ))
    }

    /// Our own SIP URI for Contact headers, with `user` if given.
    pub fn contact_uri(&self, user: Option<&str>) -> String {
        match user {
            Some(u) => format!("sip:{u}@{}", self.listen),
            None => format!("sip:{}", self.listen),
        }
    }

    /// The server dialog for a new INVITE, with our Contact, and the channel its state
    /// changes arrive on (CANCEL, BYE, re-INVITE).
    pub fn server_dialog(
        &self,
        tx: &Transaction,
    ) -> Result<(InviteDialog, DialogStateReceiver), String> {
        let contact = rsip::Uri::try_from(self.contact_uri(None).as_str())
            .map_err(|e| format!("our own contact URI: {e}"))?;
        let (state_tx, state_rx) = self.dialogs.new_dialog_state_channel();
        let dialog = self
            .dialogs
            .get_or_create_server_invite(tx, state_tx, None, Some(contact))
            .map_err(|e| e.to_string())?;
        Ok((dialog, state_rx))
    }

    pub fn shutdown(&self) {
        self.cancel.cancel();
        self.endpoint.shutdown();
    }
}

/// Where a request really came from, and over which transport.
pub fn request_source(tx: &Transaction) -> Option<(SocketAddr, SipTransport)> {
    let conn = tx.connection.as_ref()?;
    let transport = match conn {
        SipConnection::Udp(_) => SipTransport::Udp,
        _ => SipTransport::Tcp,
    };
    let addr = conn.get_remote_addr()?.get_socketaddr().ok()?;
    Some((addr, transport))
}

/// The SIP address to send a new request to a phone at `addr` over `transport`.
pub fn sip_addr(addr: SocketAddr, transport: SipTransport) -> SipAddr {
    let kind = match transport {
        SipTransport::Udp => rsip::Transport::Udp,
        SipTransport::Tcp => rsip::Transport::Tcp,
    };
    SipAddr::new(kind, addr.into())
}

/// The user part of the Request-URI (the dialled number for a trunk call).
pub fn request_user(req: &Request) -> Option<String> {
    req.uri.user().map(str::to_string)
}

/// The user part of the From URI (the caller's number), or the display-less URI text.
pub fn from_user(req: &Request) -> Result<String, String> {
    let from = req
        .from_header()
        .map_err(|e| format!("bad From header: {e}"))?;
    let uri = from.uri().map_err(|e| format!("bad From header: {e}"))?;
    Ok(uri.user().unwrap_or_default().to_string())
}

/// The user part of the To URI (the agent being registered).
pub fn to_user(req: &Request) -> Result<String, String> {
    let to = req.to_header().map_err(|e| format!("bad To header: {e}"))?;
    let uri = to.uri().map_err(|e| format!("bad To header: {e}"))?;
    uri.user()
        .map(str::to_string)
        .ok_or_else(|| "To URI has no user part".to_string())
}

/// Whether the request carries a To tag (an in-dialog request).
pub fn has_to_tag(req: &Request) -> Result<bool, String> {
    let to = req.to_header().map_err(|e| format!("bad To header: {e}"))?;
    Ok(to
        .tag()
        .map_err(|e| format!("bad To header: {e}"))?
        .is_some())
}

/// Checks the headers every request must carry in a form we can read; the message is 400
/// if not (RFC 3261 section 8.1.1 and 8.2). Returns the problem.
pub fn check_request(req: &Request) -> Result<(), String> {
    req.call_id_header()
        .map_err(|_| "missing Call-ID".to_string())?;
    let cseq = req.cseq_header().map_err(|_| "missing CSeq".to_string())?;
    cseq.seq().map_err(|e| format!("bad CSeq: {e}"))?;
    let method = cseq.method().map_err(|e| format!("bad CSeq: {e}"))?;
    if method != req.method {
        return Err("CSeq method does not match the request method".into());
    }
    from_user(req)?;
    let to = req.to_header().map_err(|e| format!("bad To header: {e}"))?;
    to.uri().map_err(|e| format!("bad To header: {e}"))?;
    if let Some(len) = req.headers().iter().find_map(|h| match h {
        Header::ContentLength(l) => Some(l.value().trim().to_string()),
        _ => None,
    }) {
        let declared: usize = len
            .parse()
            .map_err(|_| format!("bad Content-Length `{len}`"))?;
        if declared != req.body.len() {
            return Err(format!(
                "Content-Length {declared} does not match the body ({} bytes)",
                req.body.len()
            ));
        }
    }
    Ok(())
}

/// Replies to a server transaction; failures (the peer vanished) are logged, not raised,
/// because there is nobody left to tell.
pub async fn reply(tx: &mut Transaction, status: StatusCode, headers: Vec<Header>) {
    crate::metrics::sip_transaction(&tx.original.method.to_string(), u16::from(status.clone()));
    if let Err(e) = tx.reply_with(status.clone(), headers, None).await {
        tracing::debug!(error = %e, status = %status, "could not send reply");
    }
}
