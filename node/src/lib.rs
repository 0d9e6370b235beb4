//! The Carillon node: the process that terminates SIP trunks and agent phones at a site,
//! anchors their media, and routes calls through the ACD.
//!
//! Modules: `config` (TOML), `sip` (our one adapter around rsipstack), `edge` (every new
//! SIP request: admission, registrar, trunk checks), `registrar` and `digest` (agent
//! phones), `call` (the B2BUA call task), `routing_log` (the path to the routing state
//! machine), `http` (health, readiness, status, CDRs, `/metrics`), `metrics` (Prometheus
//! series), `grpc` (the gRPC API over the node's state), `ctl` (its admin client), `node`
//! (wiring), `ivr` (IVR flows from config and their sans-IO runner; `call` plays them),
//! `recording` (which calls are recorded, and their index), `sim` and `demo`
//! (simulated phones and callers, real SIP/RTP clients over rsipstack used by `carillon
//! demo` and tests, not by the node's own SIP path), `bench` (benchmarks).
//! The ACD itself lives in `carillon-routing`, RTP in `carillon-media`, records in
//! `carillon-ops`.

pub mod announce;
pub mod bench;
pub mod call;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod demo_cluster;
pub mod digest;
pub mod edge;
pub mod grpc;
pub mod http;
pub mod ivr;
pub mod metrics;
pub mod node;
pub mod peer_leg;
pub mod record_writer;
pub mod recording;
pub mod registrar;
pub mod routing_log;
pub mod sim;
pub mod sip;
pub mod voicemail;
pub mod watchdog;
