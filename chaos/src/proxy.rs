//! The UDP fault proxy in front of one node's Raft (QUIC) port. Peers send to the proxy;
//! per sender address it opens its own upstream socket to the node, so the node's replies
//! come back to that socket and go out to the right sender. Every datagram's fate comes
//! from [`crate::faults::decide`], knowing which node sent it: every node's QUIC endpoint
//! sends from its Raft listen address, so a sender's address names the node.
// The adapter schedules delayed datagrams on the wall clock; the decisions themselves
// (faults.rs) take no clock.
#![allow(clippy::disallowed_methods)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::faults::{decide, FaultSwitch, NodeNum};
use crate::rng::XorShift;

/// Largest datagram relayed (QUIC keeps well below this).
const DATAGRAM_BYTES_MAX: usize = 65_535;
/// Datagrams read but not yet decided on; more are dropped, as a full link would.
const INBOX_DEPTH_MAX: usize = 4096;
/// Datagrams held for a delay at once; more are dropped.
const HELD_DEPTH_MAX: usize = 8192;
/// Distinct senders one proxy relays for (the cluster's members and a few spares).
const CLIENTS_MAX: usize = 64;

/// What one proxy did, for the report.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub relayed: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub delayed: AtomicU64,
    pub overflowed: AtomicU64,
}

/// A snapshot of [`ProxyStats`].
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ProxyCounts {
    pub relayed: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub delayed: u64,
    pub overflowed: u64,
}

impl ProxyStats {
    pub fn counts(&self) -> ProxyCounts {
        ProxyCounts {
            relayed: self.relayed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            delayed: self.delayed.load(Ordering::Relaxed),
            overflowed: self.overflowed.load(Ordering::Relaxed),
        }
    }
}

/// A running proxy; its tasks stop and its sockets close on drop.
pub struct Proxy {
    pub listen: SocketAddr,
    pub stats: Arc<ProxyStats>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only pushes and drains happen under this lock; a poisoned Vec is still whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One datagram on its way: towards the node (from `client`) or back to `client`.
struct Packet {
    client: SocketAddr,
    to_node: bool,
    bytes: Vec<u8>,
}

struct Held {
    due: Instant,
    seq: u64,
    packet: Packet,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

impl Proxy {
    /// Listens on `listen` (port 0 for any) and relays to `node` (the node numbered
    /// `node_num`). `peers` maps the nodes' Raft addresses to their numbers.
    pub async fn start(
        listen: SocketAddr,
        node: SocketAddr,
        node_num: NodeNum,
        peers: HashMap<SocketAddr, NodeNum>,
        switch: FaultSwitch,
        rng: XorShift,
    ) -> std::io::Result<Proxy> {
        let front = Arc::new(UdpSocket::bind(listen).await?);
        let listen = front.local_addr()?;
        let stats = Arc::new(ProxyStats::default());
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel(INBOX_DEPTH_MAX);
        let reader = tokio::spawn(read_into(front.clone(), None, tx.clone(), stats.clone()));
        lock(&tasks).push(reader.abort_handle());
        let relay = Relay {
            front,
            node,
            node_num,
            peers,
            switch,
            rng,
            upstreams: HashMap::new(),
            held: BinaryHeap::new(),
            seq: 0,
            stats: stats.clone(),
            tasks: tasks.clone(),
            tx,
        };
        let main = tokio::spawn(relay.run(rx));
        lock(&tasks).push(main.abort_handle());
        Ok(Proxy {
            listen,
            stats,
            tasks,
        })
    }
}

/// Reads datagrams from `socket` into the relay. `client` is None for the front socket
/// (the sender is the client) or the client an upstream socket serves.
async fn read_into(
    socket: Arc<UdpSocket>,
    client: Option<SocketAddr>,
    tx: mpsc::Sender<Packet>,
    stats: Arc<ProxyStats>,
) {
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            // ICMP port-unreachable surfaces as an error on Linux: the peer is down; go on.
            Err(_) => continue,
        };
        let packet = Packet {
            client: client.unwrap_or(from),
            to_node: client.is_none(),
            bytes: buf[..n].to_vec(),
        };
        match tx.try_send(packet) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                stats.overflowed.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

struct Relay {
    front: Arc<UdpSocket>,
    node: SocketAddr,
    node_num: NodeNum,
    peers: HashMap<SocketAddr, NodeNum>,
    switch: FaultSwitch,
    rng: XorShift,
    upstreams: HashMap<SocketAddr, Arc<UdpSocket>>,
    held: BinaryHeap<Reverse<Held>>,
    seq: u64,
    stats: Arc<ProxyStats>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    tx: mpsc::Sender<Packet>,
}

impl Relay {
    async fn run(mut self, mut rx: mpsc::Receiver<Packet>) {
        loop {
            let next_due = self.held.peek().map(|Reverse(h)| h.due);
            tokio::select! {
                packet = rx.recv() => match packet {
                    Some(p) => self.accept(p).await,
                    None => return,
                },
                _ = sleep_until_opt(next_due) => self.flush_due().await,
            }
        }
    }

    async fn accept(&mut self, p: Packet) {
        let peer = self.peers.get(&p.client).copied().unwrap_or(0);
        let (from, to) = if p.to_node {
            (peer, self.node_num)
        } else {
            (self.node_num, peer)
        };
        if p.to_node
            && !self.upstreams.contains_key(&p.client)
            && !self.open_upstream(p.client).await
        {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let deliveries = decide(&self.switch.get(), from, to, &mut self.rng);
        if deliveries.is_empty() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if deliveries.len() > 1 {
            self.stats.duplicated.fetch_add(1, Ordering::Relaxed);
        }
        let now = Instant::now();
        let last = deliveries.len() - 1;
        let mut packet = Some(p);
        for (i, delay_ms) in deliveries.into_iter().enumerate() {
            // The last delivery takes the packet; earlier ones send a copy.
            let this = if i == last {
                packet.take()
            } else {
                packet.as_ref().map(|p| Packet {
                    client: p.client,
                    to_node: p.to_node,
                    bytes: p.bytes.clone(),
                })
            };
            let Some(this) = this else { continue };
            if delay_ms == 0 {
                self.send(&this).await;
            } else if self.held.len() >= HELD_DEPTH_MAX {
                self.stats.overflowed.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats.delayed.fetch_add(1, Ordering::Relaxed);
                self.seq += 1;
                self.held.push(Reverse(Held {
                    due: now + Duration::from_millis(delay_ms),
                    seq: self.seq,
                    packet: this,
                }));
            }
        }
    }

    /// Opens the upstream socket for a new client; false when there are too many.
    async fn open_upstream(&mut self, client: SocketAddr) -> bool {
        if self.upstreams.len() >= CLIENTS_MAX {
            return false;
        }
        let bind = SocketAddr::new(self.node.ip(), 0);
        let Ok(sock) = UdpSocket::bind(bind).await else {
            return false;
        };
        let sock = Arc::new(sock);
        let reader = tokio::spawn(read_into(
            sock.clone(),
            Some(client),
            self.tx.clone(),
            self.stats.clone(),
        ));
        lock(&self.tasks).push(reader.abort_handle());
        self.upstreams.insert(client, sock);
        true
    }

    async fn flush_due(&mut self) {
        let now = Instant::now();
        while self.held.peek().is_some_and(|Reverse(h)| h.due <= now) {
            if let Some(Reverse(h)) = self.held.pop() {
                self.send(&h.packet).await;
            }
        }
    }

    async fn send(&self, p: &Packet) {
        let sent = if p.to_node {
            match self.upstreams.get(&p.client) {
                Some(up) => up.send_to(&p.bytes, self.node).await.is_ok(),
                None => false,
            }
        } else {
            self.front.send_to(&p.bytes, p.client).await.is_ok()
        };
        let counter = if sent {
            &self.stats.relayed
        } else {
            &self.stats.dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

async fn sleep_until_opt(due: Option<Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Faults;

    const WAIT_MS: u64 = 2_000;

    /// An echo "node" on loopback; returns its address.
    async fn echo_node() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let sock = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("binding loopback");
        let addr = sock.local_addr().expect("bound socket has an address");
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let _ = sock.send_to(&buf[..n], from).await;
            }
        });
        (addr, task)
    }

    async fn setup(switch: FaultSwitch) -> (Proxy, UdpSocket, tokio::task::JoinHandle<()>) {
        let (node, task) = echo_node().await;
        let client = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("binding loopback");
        let client_addr = client.local_addr().expect("bound socket has an address");
        let peers = HashMap::from([(client_addr, 2)]);
        let proxy = Proxy::start(
            "127.0.0.1:0".parse().expect("literal address"),
            node,
            1,
            peers,
            switch,
            XorShift::new(11),
        )
        .await
        .expect("starting the proxy");
        (proxy, client, task)
    }

    /// Sends `n` numbered datagrams through the proxy; returns the numbers echoed back
    /// within the wait.
    async fn round_trip(proxy: &Proxy, client: &UdpSocket, n: u32) -> Vec<u32> {
        for i in 0..n {
            client
                .send_to(&i.to_be_bytes(), proxy.listen)
                .await
                .expect("loopback send");
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
        while let Ok(Ok((len, _))) =
            tokio::time::timeout_at(deadline, client.recv_from(&mut buf)).await
        {
            if len == 4 {
                got.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
            }
            if got.len() as u32 >= n * 2 {
                break;
            }
        }
        got
    }

    #[tokio::test]
    async fn relays_both_ways_when_healthy() {
        let switch = FaultSwitch::default();
        let (proxy, client, _node) = setup(switch).await;
        let got = round_trip(&proxy, &client, 50).await;
        assert_eq!(got, (0..50).collect::<Vec<_>>());
        assert_eq!(proxy.stats.counts().relayed, 100);
    }

    #[tokio::test]
    async fn partition_and_heal() {
        let switch = FaultSwitch::default();
        let (proxy, client, _node) = setup(switch.clone()).await;
        switch.update(|f| f.partition(&[1], &[2]));
        assert!(round_trip(&proxy, &client, 10).await.is_empty());
        switch.heal();
        assert_eq!(round_trip(&proxy, &client, 10).await.len(), 10);
        // One-way: the node's replies are cut, its requests still arrive.
        switch.update(|f| {
            f.cut.insert((1, 2));
        });
        assert!(round_trip(&proxy, &client, 5).await.is_empty());
        assert!(proxy.stats.counts().dropped >= 15);
    }

    #[tokio::test]
    async fn drops_delays_and_duplicates() {
        let switch = FaultSwitch::default();
        let (proxy, client, _node) = setup(switch.clone()).await;
        switch.set(Faults {
            drop_pct: 20.0,
            ..Faults::default()
        });
        // Each round trip crosses the proxy twice: about 64% come back.
        let got = round_trip(&proxy, &client, 200).await.len();
        assert!((100..160).contains(&got), "{got} of 200");
        switch.set(Faults {
            delay_ms: 100,
            ..Faults::default()
        });
        let start = Instant::now();
        assert_eq!(round_trip(&proxy, &client, 1).await, vec![0]);
        assert!(start.elapsed() >= Duration::from_millis(200));
        switch.set(Faults {
            duplicate_pct: 100.0,
            ..Faults::default()
        });
        // Duplicated on the way in and on the way back: four copies each.
        let got = round_trip(&proxy, &client, 3).await;
        assert_eq!(got.len(), 6, "stopped at twice the sent count: {got:?}");
    }

    #[tokio::test]
    async fn reorder_lets_later_datagrams_overtake() {
        let switch = FaultSwitch::default();
        let (proxy, client, _node) = setup(switch.clone()).await;
        switch.set(Faults {
            reorder_pct: 30.0,
            reorder_hold_ms: 50,
            ..Faults::default()
        });
        let got = round_trip(&proxy, &client, 100).await;
        assert_eq!(got.len(), 100);
        assert!(
            got.windows(2).any(|w| w[0] > w[1]),
            "no reordering: {got:?}"
        );
    }
}
