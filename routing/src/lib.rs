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
//! 1. `ConfigureQueue` for every queue, `AgentLogin` as phones register.
//! 2. `Enqueue` when a caller reaches a queue; the returned events may already hold an
//!    [`Event::Offered`]: ring that agent.
//! 3. The agent leg's outcome: `Connected`, or `OfferFailed`; later `Ended` or `Abandon`.
//! 4. `Tick` at a steady interval so ring timeouts and wrap-ups fire.
//!
//! Every command that succeeds ends with a matching pass: each queue's head-of-line call
//! is offered to the longest-idle ready agent with the queue's skill, oldest call first
//! across queues, until no more pairs can be made.

mod acd;
mod agent;
mod call;
mod canon;
mod command;
mod error;
mod event;
mod queue;
mod stats;
mod strategy;

pub use acd::{Acd, AcdLimits};
pub use agent::AgentState;
pub use command::{Command, OfferFailure, Party};
pub use error::RoutingError;
pub use event::{CallRecord, Disposition, Event, RevokeReason};
pub use queue::QueueConfig;
pub use stats::{AcdStats, QueueStats, Totals};

/// Unix epoch milliseconds, carried as data in every command (the crate has no clock).
pub type Millis = u64;
