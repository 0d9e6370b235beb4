//! carillon-media: the RTP side of the B2BUA.
//!
//! For each call the node allocates local RTP ports from a [`PortPool`], answers and offers SDP
//! with [`sdp`], and starts one [`CallMedia`] task that anchors the caller's media: it plays
//! looping prompts (hold music) to the caller and, once an agent answers, relays RTP and RTCP
//! between the two legs with symmetric latching and one continuous outgoing stream per
//! direction.
//!
//! The decisions that matter live in sans-IO cores that take packets and `now` as arguments:
//! [`rewrite::StreamRewriter`] (SSRC, sequence and timestamp continuity) and [`latch::Latch`]
//! (where to send). The tokio adapter in `relay` only moves bytes between sockets and them.
//!
//! Left to others: SIP signalling and call state (node), transcoding between legs with different
//! codecs, SRTP, RTCP rewriting (RTCP is relayed untouched), jitter buffering, recording and
//! mixing (later issues).

pub mod codec;
mod error;
pub mod latch;
pub mod pool;
pub mod prompt;
mod relay;
pub mod rewrite;
pub mod rtp;
pub mod sdp;
pub mod session;
pub mod tone;
pub mod wav;

pub use codec::Codec;
pub use error::MediaError;
pub use pool::{PortPool, RtpPort};
pub use prompt::Prompt;
pub use session::{CallMedia, MediaLeg, RelayCounters};
