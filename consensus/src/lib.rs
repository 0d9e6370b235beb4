//! Carillon's cluster control plane: openraft over QUIC with mutual TLS, a redb log store
//! and a state machine that applies the `routing` ACD.
//!
//! Not built yet (issue 3). A node runs single-site today: the `carillon` binary applies
//! routing commands through a local, in-process log (`carillon::routing_log`) that this
//! crate will replace with a replicated one.
