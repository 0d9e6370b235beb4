//! Length-prefixed frames on a QUIC stream: a `u32` big-endian length, then that many bytes.
//!
//! The length is checked against the limit before anything is allocated, so a peer that
//! announces a 4 GiB frame costs us four bytes of reading and an error. Typed frames are
//! postcard; snapshot chunks are raw bytes in the same framing.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended before a frame began (a clean end where one was allowed).
    #[error("the stream ended before a frame")]
    Closed,
    /// The frame is longer than the limit; nothing was allocated for it.
    #[error(
        "frame of {len_bytes} bytes is over the {max_bytes}-byte limit (message_size_max_bytes)"
    )]
    TooLarge {
        /// The announced or encoded length.
        len_bytes: u64,
        /// The limit in force.
        max_bytes: usize,
    },
    /// Reading or writing the stream failed.
    #[error("stream I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The frame is not a valid message.
    #[error("malformed frame: {0}")]
    Decode(postcard::Error),
    /// A message could not be encoded (a bug, or a type postcard cannot carry).
    #[error("cannot encode a frame: {0}")]
    Encode(postcard::Error),
}

/// Write one raw frame.
pub async fn write_raw<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    max_bytes: usize,
) -> Result<(), FrameError> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|&len| len as usize <= max_bytes)
        .ok_or(FrameError::TooLarge {
            len_bytes: bytes.len() as u64,
            max_bytes,
        })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(bytes).await?;
    Ok(())
}

/// Read one raw frame; refuses a length over `max_bytes` before allocating.
pub async fn read_raw<R: AsyncRead + Unpin>(
    r: &mut R,
    max_bytes: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; 4];
    let first = r.read(&mut header).await?;
    if first == 0 {
        return Err(FrameError::Closed);
    }
    r.read_exact(&mut header[first..]).await?;
    let len = u32::from_be_bytes(header);
    if len as usize > max_bytes {
        return Err(FrameError::TooLarge {
            len_bytes: u64::from(len),
            max_bytes,
        });
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Encode `value` with postcard and write it as one frame.
pub async fn write_msg<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    value: &T,
    max_bytes: usize,
) -> Result<(), FrameError> {
    let bytes = postcard::to_stdvec(value).map_err(FrameError::Encode)?;
    write_raw(w, &bytes, max_bytes).await
}

/// Read one frame and decode it with postcard.
pub async fn read_msg<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max_bytes: usize,
) -> Result<T, FrameError> {
    let bytes = read_raw(r, max_bytes).await?;
    postcard::from_bytes(&bytes).map_err(FrameError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips_a_message() {
        let mut buf = Vec::new();
        write_msg(&mut buf, &("hello", 42u32), 1024)
            .await
            .expect("write");
        let mut r = buf.as_slice();
        let back: (String, u32) = read_msg(&mut r, 1024).await.expect("read");
        assert_eq!(back, ("hello".to_string(), 42));
        assert!(matches!(
            read_raw(&mut r, 1024).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn an_oversized_header_is_refused_before_any_body_is_read() {
        // Claims 4 GiB - 1 and carries no body: a reader that allocated first would try to
        // reserve 4 GiB; ours returns at once.
        let wire = u32::MAX.to_be_bytes();
        let mut r = &wire[..];
        let err = read_raw(&mut r, 8 << 20).await.expect_err("too large");
        assert!(matches!(
            err,
            FrameError::TooLarge {
                len_bytes: 0xFFFF_FFFF,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn an_oversized_message_is_not_sent() {
        let mut buf = Vec::new();
        let err = write_raw(&mut buf, &[0u8; 100], 99)
            .await
            .expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn a_truncated_frame_is_an_io_error_and_garbage_a_decode_error() {
        let mut wire = 10u32.to_be_bytes().to_vec();
        wire.extend_from_slice(&[1, 2, 3]);
        let mut r = wire.as_slice();
        assert!(matches!(read_raw(&mut r, 64).await, Err(FrameError::Io(_))));

        let mut wire = 1u32.to_be_bytes().to_vec();
        wire.push(0xFF);
        let mut r = wire.as_slice();
        let res: Result<String, _> = read_msg(&mut r, 64).await;
        assert!(matches!(res, Err(FrameError::Decode(_))));
    }
}
