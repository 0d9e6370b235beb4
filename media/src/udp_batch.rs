//! Batched UDP I/O for the relay hot path: `recvmmsg` to read every queued datagram of a
//! socket in one system call and `sendmmsg` to forward them in one more, through `nix`'s safe
//! wrappers.
//!
//! The buffers and the kernel message headers are allocated once per worker thread (a
//! thread-local) and reused for every call's packets: a media task borrows them only inside
//! one synchronous drain, never across an `.await`, so any number of calls share one set per
//! thread and the hot path allocates nothing.

use std::cell::RefCell;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrLike, SockaddrStorage,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::rtp::PACKET_BYTES_MAX;

/// Datagrams read or sent per system call.
pub(crate) const BATCH_PACKETS_MAX: usize = 32;
/// One receive slot: the largest packet we accept plus one byte, so that a datagram that fills
/// the slot is known to be truncated (too big to be ours).
pub(crate) const SLOT_BYTES: usize = PACKET_BYTES_MAX + 1;

/// One thread's batch: received datagrams, their lengths and sources, and which to forward.
pub(crate) struct Batch {
    pub(crate) slots: Box<[[u8; SLOT_BYTES]; BATCH_PACKETS_MAX]>,
    pub(crate) lens: [usize; BATCH_PACKETS_MAX],
    pub(crate) sources: [Option<SocketAddr>; BATCH_PACKETS_MAX],
    pub(crate) forward: [bool; BATCH_PACKETS_MAX],
    pub(crate) count: usize,
    recv_headers: MultiHeaders<SockaddrStorage>,
    send_headers: MultiHeaders<SockaddrStorage>,
}

thread_local! {
    static BATCH: RefCell<Batch> = RefCell::new(Batch::new());
}

/// Runs `f` with this thread's batch. `f` must not re-enter (it is synchronous, so it cannot
/// hold the batch across an await point).
pub(crate) fn with_batch<R>(f: impl FnOnce(&mut Batch) -> R) -> R {
    BATCH.with_borrow_mut(f)
}

impl Batch {
    fn new() -> Batch {
        Batch {
            slots: Box::new([[0; SLOT_BYTES]; BATCH_PACKETS_MAX]),
            lens: [0; BATCH_PACKETS_MAX],
            sources: [None; BATCH_PACKETS_MAX],
            forward: [false; BATCH_PACKETS_MAX],
            count: 0,
            recv_headers: MultiHeaders::preallocate(BATCH_PACKETS_MAX, None),
            send_headers: MultiHeaders::preallocate(BATCH_PACKETS_MAX, None),
        }
    }

    /// Reads up to [`BATCH_PACKETS_MAX`] queued datagrams from `socket` without waiting.
    /// Returns how many; `Err(WouldBlock)` when none was queued. When fewer than a full batch
    /// came, the socket is drained and tokio's readiness for it is cleared, so the caller may
    /// go back to waiting without one more empty read.
    pub(crate) fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.count = 0;
        self.forward = [false; BATCH_PACKETS_MAX];
        let fd = socket.as_raw_fd();
        let mut received = 0;
        let result = socket.try_io(Interest::READABLE, || {
            let mut iovs: [[IoSliceMut<'_>; 1]; BATCH_PACKETS_MAX] = {
                let mut slots = self.slots.iter_mut();
                std::array::from_fn(|_| {
                    // The iterator has exactly BATCH_PACKETS_MAX slots.
                    [IoSliceMut::new(
                        slots.next().map_or(&mut [][..], |s| &mut s[..]),
                    )]
                })
            };
            let messages = recvmmsg(
                fd,
                &mut self.recv_headers,
                iovs.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(io::Error::from)?;
            for (i, message) in messages.enumerate() {
                self.lens[i] = message.bytes;
                self.sources[i] = message.address.and_then(to_socket_addr);
                received = i + 1;
            }
            if received < BATCH_PACKETS_MAX {
                // Drained: report WouldBlock so tokio clears the readiness. A datagram that
                // arrived meanwhile raised a newer readiness event, which this does not clear.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        self.count = received;
        match result {
            Ok(()) => Ok(received),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && received > 0 => Ok(received),
            Err(e) => Err(e),
        }
    }

    /// Sends every slot marked in `forward` to `target` from `socket`, in order, in one system
    /// call. Returns how many were handed to the kernel: all of them, or none if it refused the
    /// call (the packets are lost, as a UDP send may be). A partial send (the socket buffer
    /// filled mid-batch) also counts as whole: nix reports the count only through an iterator
    /// that is meant for received messages.
    pub(crate) fn send_forwarded(&mut self, socket: &UdpSocket, target: SocketAddr) -> usize {
        let mut iovs: [[IoSlice<'_>; 1]; BATCH_PACKETS_MAX] =
            [[IoSlice::new(&[])]; BATCH_PACKETS_MAX];
        let mut n = 0;
        for i in 0..self.count {
            if self.forward[i] {
                iovs[n] = [IoSlice::new(&self.slots[i][..self.lens[i]])];
                n += 1;
            }
        }
        if n == 0 {
            return 0;
        }
        let address = SockaddrStorage::from(target);
        let addresses = [Some(address); BATCH_PACKETS_MAX];
        let cmsgs: [ControlMessage<'_>; 0] = [];
        match sendmmsg(
            socket.as_raw_fd(),
            &mut self.send_headers,
            iovs[..n].iter(),
            &addresses[..n],
            cmsgs,
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(_) => n,
            Err(_) => 0,
        }
    }
}

fn to_socket_addr(address: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(std::net::SocketAddrV6::from(*v6)))
        .filter(|_| address.len() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn receives_and_forwards_in_batches() {
        let relay = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let phone = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let far = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let relay_addr = relay.local_addr().expect("bound");
        for i in 0..40u8 {
            phone.send_to(&[i; 20], relay_addr).await.expect("send");
        }
        relay.readable().await.expect("readable");
        let far_addr = far.local_addr().expect("bound");
        let phone_addr = phone.local_addr().expect("bound");
        let mut got = Vec::new();
        for _ in 0..10 {
            let n = with_batch(|batch| match batch.recv(&relay) {
                Ok(n) => {
                    for i in 0..n {
                        assert_eq!(batch.sources[i], Some(phone_addr));
                        got.push(batch.slots[i][0]);
                        batch.forward[i] = i % 2 == 0;
                    }
                    batch.send_forwarded(&relay, far_addr)
                }
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    0
                }
            });
            assert!(n <= BATCH_PACKETS_MAX);
            if got.len() == 40 {
                break;
            }
        }
        assert_eq!(got, (0..40).collect::<Vec<u8>>());
        let mut buf = [0u8; 64];
        let (len, _) = far.recv_from(&mut buf).await.expect("forwarded");
        assert_eq!((len, buf[0]), (20, 0));
        let (_, _) = far.recv_from(&mut buf).await.expect("forwarded");
        assert_eq!(buf[0], 2);
    }
}
