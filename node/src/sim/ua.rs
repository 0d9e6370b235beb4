//! One rsipstack user agent on its own UDP port on 127.0.0.1: the only place the
//! simulator touches rsipstack's endpoint and transport types.
//!
//! The dispatcher routes in-dialog requests (ACK, BYE, re-INVITE...) to their
//! dialog, hands new INVITEs to the phone through a bounded channel (a full
//! channel answers 486 Busy Here), and answers what a phone does not handle.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Method, StatusCode};
use rsipstack::transaction::endpoint::EndpointInnerRef;
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transport::udp::UdpConnection;
use rsipstack::transport::TransportLayer;
use rsipstack::EndpointBuilder;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::SimError;

/// A running user agent. Dropping it stops its endpoint and dispatcher.
pub(crate) struct Ua {
    pub endpoint: EndpointInnerRef,
    pub dialogs: Arc<DialogLayer>,
    pub addr: SocketAddr,
    cancel: CancellationToken,
}

impl Ua {
    /// Binds an OS-chosen UDP port on 127.0.0.1 and starts serving. New INVITEs
    /// go to `invites` when given, otherwise they are refused.
    pub async fn bind(
        user_agent: &str,
        invites: Option<mpsc::Sender<Transaction>>,
        parent: &CancellationToken,
    ) -> Result<Ua, SimError> {
        let cancel = parent.child_token();
        let transport = TransportLayer::new(cancel.clone());
        let conn = UdpConnection::create_connection(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            None,
            Some(cancel.child_token()),
        )
        .await
        .map_err(SimError::sip)?;
        let addr = conn.get_addr().get_socketaddr().map_err(SimError::sip)?;
        transport.add_transport(conn.into());
        let endpoint = EndpointBuilder::new()
            .with_user_agent(user_agent)
            .with_cancel_token(cancel.clone())
            .with_transport_layer(transport)
            .build();
        let incoming = endpoint.incoming_transactions().map_err(SimError::sip)?;
        let inner = endpoint.inner.clone();
        let dialogs = Arc::new(DialogLayer::new(inner.clone()));

        let serve_cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = serve_cancel.cancelled() => {}
                _ = endpoint.serve() => {}
            }
        });
        tokio::spawn(dispatch(incoming, dialogs.clone(), invites, cancel.clone()));
        Ok(Ua {
            endpoint: inner,
            dialogs,
            addr,
            cancel,
        })
    }

    /// `sip:user@127.0.0.1:port`, our Contact.
    pub fn contact(&self, user: &str) -> Result<rsipstack::sip::Uri, SimError> {
        uri(&format!("sip:{user}@{}", self.addr))
    }
}

impl Drop for Ua {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

pub(crate) fn uri(s: &str) -> Result<rsipstack::sip::Uri, SimError> {
    rsipstack::sip::Uri::try_from(s).map_err(|e| SimError::Sip(format!("bad URI {s}: {e}")))
}

async fn dispatch(
    mut incoming: rsipstack::transaction::TransactionReceiver,
    dialogs: Arc<DialogLayer>,
    invites: Option<mpsc::Sender<Transaction>>,
    cancel: CancellationToken,
) {
    loop {
        let mut tx = tokio::select! {
            _ = cancel.cancelled() => return,
            tx = incoming.recv() => match tx {
                Some(tx) => tx,
                None => return,
            },
        };
        let in_dialog = tx
            .original
            .to_header()
            .ok()
            .and_then(|to| to.tag().ok().flatten())
            .is_some();
        if in_dialog {
            match dialogs.match_dialog(&tx) {
                Some(mut dialog) => {
                    tokio::spawn(async move {
                        if let Err(e) = dialog.handle(&mut tx).await {
                            debug!(error = %e, "in-dialog request failed");
                        }
                    });
                }
                None if tx.original.method == Method::Ack => {}
                None => {
                    tx.reply(StatusCode::CallTransactionDoesNotExist).await.ok();
                }
            }
            continue;
        }
        match (&tx.original.method, &invites) {
            (Method::Invite, Some(sender)) => {
                if let Err(
                    mpsc::error::TrySendError::Full(mut tx)
                    | mpsc::error::TrySendError::Closed(mut tx),
                ) = sender.try_send(tx)
                {
                    tx.reply(StatusCode::BusyHere).await.ok();
                }
            }
            (Method::Invite, None) => {
                tx.reply(StatusCode::TemporarilyUnavailable).await.ok();
            }
            (Method::Options, _) => {
                tx.reply(StatusCode::OK).await.ok();
            }
            (Method::Ack, _) => {}
            _ => {
                tx.reply(StatusCode::MethodNotAllowed).await.ok();
            }
        }
    }
}
