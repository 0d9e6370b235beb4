//! The ACD (automatic call distributor) as a pure, deterministic state machine.
//!
//! Commands go in ([`Command`]), events come out ([`Event`]). The crate owns agents and
//! their states, queues and their waiting calls in order, offers, assignments and the
//! terminal record of every call. It performs no I/O, reads no clock and draws no random
//! numbers: every command carries its timestamp, and timers (ring timeout, end of wrap-up)
//! fire only when a [`Command::Tick`] says time has passed. All state lives in ordered
//! collections, so replicas that apply the same commands hold byte-identical state
//! ([`Acd::state_hash`]) and the whole [`Acd`] can be snapshotted with serde.
//!
//! Left to others: ringing phones, bridging media, storing CDRs, proposing commands
//! through Raft and deciding when to `Tick` (the node and the consensus crate).
//!
//! Call order, as the node drives it:
//! 1. `ConfigureCluster`, `ConfigureRouting`, `ConfigureQueue` for every queue; `NodeLease`
//!    from every node about once a second; `AgentLogin` as phones register.
//! 2. `Enqueue` when a caller reaches a queue; the returned events may already hold an
//!    [`Event::Offered`] (ring that agent), or a [`Event::CallExited`] (closed, full...).
//! 3. The agent leg's outcome: `Connected`, or `OfferFailed`; later `Ended` or `Abandon`.
//!    A waiting caller may leave a number (`RequestCallback`): the call keeps its place and
//!    later comes back as [`Event::CallbackOffered`].
//! 4. `Tick` at a steady interval so leases lapse and ring timeouts, wrap-ups, escalation
//!    steps, VIP waits, overflows and maximum waits fire.
//!
//! Every command that succeeds ends with a matching pass: each queue's first call in line
//! that an eligible ready agent may take (skills and levels, escalation, site, preferred
//! agent) is offered by the queue's [`Strategy`], highest priority first across queues,
//! then earliest arrival (or longest weighted wait, with fairness), until no more pairs can
//! be made. [`bench`] measures it.

mod acd;
mod agent;
pub mod bench;
mod call;
mod canon;
mod cluster;
mod command;
mod error;
mod event;
mod queue;
mod schedule;
mod skill;
mod stats;
mod strategy;

pub use acd::{Acd, AcdLimits, WaitEstimate, BLACKLIST_MAX, MOVES_MAX, SKILLS_MAX, VIPS_MAX};
pub use agent::AgentState;
pub use cluster::{NodeStatus, LEASE_MS_DEFAULT};
pub use command::{Arrival, Command, ForcedState, OfferFailure, Party, RoutingSettings, Vip};
pub use error::RoutingError;
pub use event::{CallRecord, Disposition, Event, ExitReason, RevokeReason};
pub use queue::{EscalationStep, ExitAction, QueueConfig, Strategy};
pub use schedule::{OpenHours, Schedule};
pub use skill::LEVEL_MAX;
pub use stats::{AcdStats, QueueStats, Totals};

/// Unix epoch milliseconds, carried as data in every command (the crate has no clock).
pub type Millis = u64;

/// A cluster node's id (the Raft node id).
pub type NodeId = u64;
