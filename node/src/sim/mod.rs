//! Simulated phones over real SIP and RTP on loopback, for `carillon demo` and tests.
//!
//! Each phone is its own rsipstack endpoint on its own UDP port on 127.0.0.1, so
//! the node under test sees ordinary SIP peers. [`AgentPhone`] registers as an
//! agent and answers what the node offers; [`Caller`] dials a number the way a
//! trunk would. Both send paced G.711 RTP and count what they receive. Talk
//! times and ring delays come from a seeded [`rng::SimRng`], so a seed replays
//! the same traffic shape (wall-clock scheduling still varies run to run).
//!
//! What this leaves to others: the node itself, and any judgement of audio
//! quality; the phones only count packets.

pub mod agent_phone;
pub mod caller;
pub mod rng;
pub mod rtp;
pub mod sdp;
mod ua;

pub use agent_phone::{AgentPhone, AgentPhoneConfig, AgentPhoneStats};
pub use caller::{CallOutcome, Caller, CallerConfig, HangupBy};

/// What can go wrong setting up or running a simulated phone.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("SIP stack: {0}")]
    Sip(String),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("SDP from the peer: {0}")]
    Sdp(#[from] sdp::SdpError),
    #[error("registration of {user} refused with {status}: check the agent id and password")]
    RegisterRefused { user: String, status: u16 },
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("cancelled")]
    Cancelled,
}

impl SimError {
    pub(crate) fn sip(e: impl std::fmt::Display) -> Self {
        SimError::Sip(e.to_string())
    }
}

#[cfg(test)]
mod direct_call_test;
