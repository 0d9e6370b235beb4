//! Relay throughput on loopback: N bridged calls, each fake caller sending a bounded burst of
//! RTP through the node to its fake agent. Prints packets per second relayed and the loss.
//!
//! `cargo run --release -p carillon-media --example relay_bench [CALLS] [PACKETS_PER_CALL]`
//! Defaults: 50 calls, 2000 packets each. Bounded in count and in time (10 s at most).
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carillon_media::rtp::RtpHeader;
use carillon_media::{CallMedia, Codec, MediaLeg, PortPool};
use tokio::net::UdpSocket;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const BURST_PACKETS: usize = 16;
const RUN_TIME_MAX: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let calls: usize = args.next().map_or(Ok(50), |s| s.parse())?;
    let per_call: usize = args.next().map_or(Ok(2000), |s| s.parse())?;
    let pool = PortPool::new(LOOPBACK, 46_000, 46_000 + 4 * calls as u16 + 200)?;

    let mut medias = Vec::new();
    let mut senders = Vec::new();
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for _ in 0..calls {
        let caller = Arc::new(UdpSocket::bind((LOOPBACK, 0)).await?);
        let agent = UdpSocket::bind((LOOPBACK, 0)).await?;
        let caller_port = pool.allocate()?;
        let node_caller = caller_port.local_addr();
        let media = CallMedia::start(MediaLeg::new(
            caller_port,
            Codec::Pcmu,
            Some(caller.local_addr()?),
        ));
        media.try_bridge(MediaLeg::new(
            pool.allocate()?,
            Codec::Pcmu,
            Some(agent.local_addr()?),
        ))?;
        medias.push(media);
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(500), agent.recv_from(&mut buf)).await
            {
                received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        senders.push((caller, node_caller));
    }
    // Let every bridge command land before the load starts.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for (caller, node) in senders {
        tasks.push(tokio::spawn(async move {
            let mut packet = [0u8; 172];
            for seq in 0..per_call {
                if started.elapsed() > RUN_TIME_MAX {
                    break;
                }
                RtpHeader {
                    marker: false,
                    payload_type: 0,
                    sequence: seq as u16,
                    timestamp: seq as u32 * 160,
                    ssrc: 7,
                }
                .write(&mut packet);
                let _ = caller.send_to(&packet, node).await;
                if seq % BURST_PACKETS == BURST_PACKETS - 1 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let sent_in = started.elapsed();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let relayed: u64 = medias
        .iter()
        .map(|m| m.counters().caller_to_agent_packets)
        .sum();
    let got = received.load(std::sync::atomic::Ordering::Relaxed);
    let offered = (calls * per_call) as u64;
    println!(
        "calls {calls}, offered {offered} packets in {:.2} s: relayed {relayed} ({:.0} pps), \
         received by agents {got}, loss {:.2}%",
        sent_in.as_secs_f64(),
        relayed as f64 / sent_in.as_secs_f64(),
        100.0 * (offered.saturating_sub(got)) as f64 / offered as f64
    );
    Ok(())
}
