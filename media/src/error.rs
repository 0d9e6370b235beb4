//! The crate's one error type: every failure a caller of this crate can meet, each saying what
//! went wrong and, where there is one, what to do about it.

use std::net::IpAddr;

/// Errors from SDP handling, prompt loading, the port pool and media sessions.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// A line of an SDP body could not be understood.
    #[error("SDP line {line}: {reason}")]
    SdpSyntax { line: usize, reason: String },
    /// An SDP body larger than we accept from the network.
    #[error("SDP body of {size_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    SdpTooLarge {
        size_bytes: usize,
        limit_bytes: usize,
    },
    /// No `m=audio` line with a non-zero port over plain RTP (RTP/AVP or RTP/AVPF).
    #[error("SDP has no usable audio stream (needs m=audio with a non-zero port over RTP/AVP)")]
    NoAudio,
    /// The offer and our codec list do not intersect (the node answers 488).
    #[error("no codec in common: offered payload types [{offered}], we support [{supported}]")]
    NoCommonCodec { offered: String, supported: String },
    /// The audio stream has neither a media-level nor a session-level `c=` line.
    #[error("SDP audio stream has no connection address (no c= line at media or session level)")]
    NoConnectionAddress,
    /// A WAV file that is malformed or in a format we do not play.
    #[error("{file}: {reason}")]
    Wav { file: String, reason: String },
    /// Reading or writing a file failed.
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// A relay outside this process, driven by the media benchmark, failed or answered
    /// something we cannot use.
    #[error("{relay}: {reason}")]
    External { relay: String, reason: String },
    /// A port range that cannot hold one RTP/RTCP pair.
    #[error("invalid RTP port range {min}-{max}: {reason}")]
    PortRange {
        min: u16,
        max: u16,
        reason: &'static str,
    },
    /// Every even port of the range is in use.
    #[error(
        "RTP port pool {ip} {min}-{max} exhausted: all {pairs} port pairs are in use; \
         widen the range or lower the call limit"
    )]
    PoolExhausted {
        ip: IpAddr,
        min: u16,
        max: u16,
        pairs: usize,
    },
    /// Free ports exist in the pool but binding them kept failing (another program holds them?).
    #[error(
        "could not bind an RTP/RTCP port pair on {ip} in {min}-{max} after {attempts} attempts \
         (is another program using this range?): {source}"
    )]
    Bind {
        ip: IpAddr,
        min: u16,
        max: u16,
        attempts: usize,
        #[source]
        source: std::io::Error,
    },
    /// The call's media task has ended (stopped, or failed to start; see the log).
    #[error("the call's media session has ended")]
    SessionEnded,
    /// Too many commands are waiting for the call's media task.
    #[error("the media session's command queue is full ({depth_max} commands waiting); retry")]
    CommandQueueFull { depth_max: usize },
    /// Recording is switched off in the node's configuration.
    #[error("recording is disabled in the configuration")]
    RecordingDisabled,
    /// The recordings have reached their disk limit; calls go on unrecorded.
    #[error(
        "recording paused: recordings hold {used_bytes} bytes, at the limit of {limit_bytes}; \
         free space in the recording directory or raise the limit"
    )]
    RecordingPaused { used_bytes: u64, limit_bytes: u64 },
    /// The call is already being recorded.
    #[error("the call is already being recorded")]
    RecordingActive,
}
