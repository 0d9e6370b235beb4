//! Carillon's cluster control plane: openraft over QUIC with mutual TLS, a redb log store
//! and a state machine that applies the `routing` ACD.
//!
//! What lives here: the openraft type config ([`types`]), the redb Raft log
//! ([`log_store`]), the replicated ACD with its snapshots ([`state_machine`]) and its
//! at-most-once window for repeated proposals ([`dedup`]), the cluster
//! CA and node certificates ([`certs`]), the QUIC transport with peer identity checks
//! ([`tls`], [`network`]). What it leaves to others: deciding what to propose and acting on
//! the events the log produces (the node), the routing rules themselves (`routing`).

pub mod certs;
pub mod config;
pub mod dedup;
pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod tls;
pub mod types;

/// The pinned openraft, for the node's cluster module (membership changes, metrics).
pub use openraft;
