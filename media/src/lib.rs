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
//! Beside the relay: G.711 transcoding between legs of different laws ([`codec`]), caller DTMF
//! from RFC 4733 events ([`rfc4733`]) and in-band tones ([`dtmf`]), call recording as a tap off
//! the relay ([`recording`]), batched socket I/O (recvmmsg/sendmmsg), a third leg for a
//! supervisor (monitor, whisper, barge, take-over) mixed on a 20 ms clock ([`mix`]), and a
//! benchmark of it all ([`bench`]).
//!
//! Left to others: SIP signalling and call state (node), SRTP, RTCP rewriting (RTCP is relayed
//! untouched), jitter buffering beyond the mixer's three frames.

pub mod bench;
mod bench_ng;
pub mod codec;
pub mod dtmf;
mod error;
pub mod latch;
pub mod mix;
pub mod pool;
pub mod prompt;
pub mod recording;
mod relay;
pub mod rewrite;
pub mod rfc4733;
pub mod rtp;
pub mod sdp;
pub mod session;
pub mod tone;
mod udp_batch;
pub mod wav;

pub use codec::Codec;
pub use error::MediaError;
pub use mix::ThirdMode;
pub use pool::{PortPool, RtpPort};
pub use prompt::Prompt;
pub use recording::{Recorder, Recording, RecordingMeta, RecordingTarget};
pub use session::{CallMedia, DtmfDigit, DtmfSource, MediaLeg, RelayCounters};
