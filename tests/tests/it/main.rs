//! End-to-end tests: real `carillon` processes driven by SIPp callers and agent phones
//! over loopback. One module per behaviour. Build the node first
//! (`cargo build -p carillon`) and install SIPp (`scripts/install-deps.sh`).

mod harness;

mod abandon;
mod agent_hangup;
mod announce;
mod api;
mod call_control;
mod calls_bulk;
mod chaos;
mod chaos_sim;
mod cluster;
mod cluster_membership;
mod cluster_owner_loss;
mod consult;
mod demo_cluster;
mod example_single_node;
mod hold;
mod ivr;
mod malformed;
mod overload;
mod recording;
mod refusals;
mod register_auth;
mod register_tcp;
mod ring_timeout;
mod routing_rules;
mod supervisor;
mod tone_ua;
