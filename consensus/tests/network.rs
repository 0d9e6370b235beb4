//! The Raft transport over real QUIC on loopback: certificates, mutual TLS, identity checks,
//! frame limits, and a three-node openraft cluster that elects, replicates, forwards, loses
//! its leader and carries on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use carillon_consensus::certs;
use carillon_consensus::config::raft_config;
use carillon_consensus::log_store::LogStore;
use carillon_consensus::network::{NetError, NetLimits, RaftTransport};
use carillon_consensus::state_machine::{AcdReader, StateMachineStore};
use carillon_consensus::tls::{NodeTls, ALPN};
use carillon_consensus::types::{Member, NodeId, Proposal, Raft, TypeConfig};
use carillon_routing::Command;
use openraft::error::{ClientWriteError, RPCError, RaftError};
use openraft::network::RPCOption;
use openraft::raft::VoteRequest;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{RaftNetworkFactory, RaftNetworkV2, Vote};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tempfile::TempDir;

/// Every wait in these tests gives up after this long rather than hanging the suite.
const WAIT: Duration = Duration::from_secs(15);

fn make_certs(names: &[&str]) -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    certs::generate(dir.path(), &names, false).expect("certificates");
    dir
}

fn load_tls(dir: &Path, id: NodeId) -> NodeTls {
    NodeTls::load(
        &dir.join("ca.pem"),
        &dir.join(format!("n{id}.pem")),
        &dir.join(format!("n{id}.key")),
        id,
    )
    .expect("generated certificates load")
}

fn limits() -> NetLimits {
    NetLimits {
        connect_timeout_ms: 1_000,
        rpc_timeout_ms: 3_000,
        backoff_max_ms: 400,
        idle_timeout_ms: 3_000,
        // Small chunks so a snapshot crosses as many frames.
        snapshot_chunk_bytes: 256,
        ..NetLimits::default()
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn member(addr: SocketAddr) -> Member {
    Member {
        raft_addr: addr.to_string(),
        site: "hq".into(),
        ..Member::default()
    }
}

/// One routing command per write; the ACD may refuse some, which still commits an entry.
fn proposal(i: u32) -> Proposal {
    Proposal::Routing(Command::AgentLogin {
        agent: format!("agent-{i}"),
        skills: vec!["support".into()],
        node: 1,
        site: "hq".into(),
        at: u64::from(i) * 1_000,
    })
}

struct Node {
    id: NodeId,
    raft: Raft,
    transport: RaftTransport,
    addr: SocketAddr,
    reader: AcdReader,
    _data: TempDir,
}

impl Node {
    async fn start(id: NodeId, certs: &Path, snapshot_after_logs: u64) -> Node {
        let data = tempfile::tempdir().expect("temp dir");
        let transport =
            RaftTransport::bind(loopback(), load_tls(certs, id), limits()).expect("bind");
        let addr = transport.local_addr().expect("bound address");
        let log = LogStore::open(&data.path().join("log.redb")).expect("log store");
        let sm = StateMachineStore::open(&data.path().join("sm.redb"), None).expect("sm");
        let reader = sm.reader();
        let config = raft_config(200, 400, 50, snapshot_after_logs).expect("config");
        let raft = Raft::new(id, config, transport.network_factory(), log, sm)
            .await
            .expect("raft starts");
        transport.serve(raft.clone()).expect("serve");
        Node {
            id,
            raft,
            transport,
            addr,
            reader,
            _data: data,
        }
    }

    fn member(&self) -> Member {
        member(self.addr)
    }

    async fn stop(&self) {
        self.raft.shutdown().await.expect("raft shuts down");
        self.transport.shutdown().await;
    }
}

async fn wait_leader(nodes: &[&Node], not: Option<NodeId>) -> NodeId {
    let mut leader = None;
    for node in nodes {
        let m = node
            .raft
            .wait(Some(WAIT))
            .metrics(
                |m| m.current_leader.is_some() && m.current_leader != not,
                "a leader is known",
            )
            .await
            .expect("a leader within the wait");
        let l = m.current_leader.expect("checked above");
        assert!(
            leader.is_none() || leader == Some(l),
            "nodes disagree on the leader"
        );
        leader = Some(l);
    }
    leader.expect("at least one node")
}

/// Write on `node`, retrying (bounded) while a just-elected leader has no quorum lease yet
/// or leadership is still settling: what any client of a fresh leader does.
async fn write(node: &Node, p: Proposal) -> u64 {
    let mut last_err = None;
    for _ in 0..100 {
        match node.raft.client_write(p.clone()).await {
            Ok(resp) => return resp.log_id.index,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                last_err = Some(f);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("node {} could not write: {e}", node.id),
        }
    }
    panic!("node {} never took the write: {last_err:?}", node.id)
}

async fn wait_applied(nodes: &[&Node], index: u64) {
    for node in nodes {
        node.raft
            .wait(Some(WAIT))
            .applied_index_at_least(Some(index), "entry applied")
            .await
            .unwrap_or_else(|e| panic!("node {} did not apply {index}: {e}", node.id));
    }
}

/// Wait (bounded) until every node's state machine reports the same last applied index,
/// then require the same state hash.
async fn assert_replicas_agree(nodes: &[&Node]) {
    let step = Duration::from_millis(20);
    let tries = WAIT.as_millis() / step.as_millis();
    for _ in 0..tries {
        let seen: Vec<(NodeId, Option<u64>, u64)> = nodes
            .iter()
            .map(|n| (n.id, n.reader.last_applied_index(), n.reader.state_hash()))
            .collect();
        if seen.iter().all(|s| s.1 == seen[0].1) {
            assert!(
                seen.iter().all(|s| s.2 == seen[0].2),
                "replicas at the same index diverged: {seen:?}"
            );
            return;
        }
        tokio::time::sleep(step).await;
    }
    let seen: Vec<(NodeId, Option<u64>)> = nodes
        .iter()
        .map(|n| (n.id, n.reader.last_applied_index()))
        .collect();
    panic!("replicas never reached the same index: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_forward_and_survive_the_leader() {
    let certs = make_certs(&["n1", "n2", "n3"]);
    let n1 = Node::start(1, certs.path(), 1_000).await;
    let n2 = Node::start(2, certs.path(), 1_000).await;
    let n3 = Node::start(3, certs.path(), 1_000).await;
    let nodes = [&n1, &n2, &n3];
    let members: BTreeMap<NodeId, Member> = nodes.iter().map(|n| (n.id, n.member())).collect();
    n1.raft.initialize(members).await.expect("initialize");

    let leader_id = wait_leader(&nodes, None).await;
    let leader = nodes.iter().find(|n| n.id == leader_id).expect("a member");
    let follower = nodes.iter().find(|n| n.id != leader_id).expect("a member");

    // A write on the leader reaches every replica.
    let index = write(leader, proposal(1)).await;
    wait_applied(&nodes, index).await;

    // A follower forwards a proposal to the leader over QUIC and gets the applied result.
    let applied = follower
        .transport
        .forward(leader_id, &leader.addr.to_string(), proposal(2))
        .await
        .expect("forward");
    assert!(
        applied.refused.is_some() || !applied.events.is_empty(),
        "an applied entry says what happened: {applied:?}"
    );
    let last = leader
        .raft
        .metrics()
        .borrow_watched()
        .last_applied
        .map(|l| l.index);
    wait_applied(&nodes, last.expect("applied something")).await;

    // Forwarding to a follower says who leads.
    let other = nodes
        .iter()
        .find(|n| n.id != leader_id && n.id != follower.id)
        .expect("three nodes");
    match leader
        .transport
        .forward(other.id, &other.addr.to_string(), proposal(3))
        .await
    {
        Err(NetError::NotLeader { leader_id: l, .. }) => assert_eq!(l, Some(leader_id)),
        other => panic!("expected NotLeader, got {other:?}"),
    }

    // Status over the transport.
    let status = follower
        .transport
        .status(leader_id, &leader.addr.to_string())
        .await
        .expect("status");
    assert_eq!(status.id, leader_id);
    assert_eq!(status.leader, Some(leader_id));
    assert_eq!(status.state, "Leader");
    assert_eq!(status.voters.len(), 3);

    // The replicas agree once they have applied the same entries.
    assert_replicas_agree(&nodes).await;

    // Kill the leader: the other two elect a new one and writes continue.
    leader.stop().await;
    let survivors: Vec<&Node> = nodes
        .iter()
        .copied()
        .filter(|n| n.id != leader_id)
        .collect();
    let new_leader_id = wait_leader(&survivors, Some(leader_id)).await;
    assert_ne!(new_leader_id, leader_id);
    let new_leader = survivors
        .iter()
        .find(|n| n.id == new_leader_id)
        .expect("a survivor");
    let new_follower = survivors
        .iter()
        .find(|n| n.id != new_leader_id)
        .expect("a survivor");
    let index = write(new_leader, proposal(4)).await;
    wait_applied(&survivors, index).await;
    new_follower
        .transport
        .forward(new_leader_id, &new_leader.addr.to_string(), proposal(5))
        .await
        .expect("forward after failover");
    assert_replicas_agree(&survivors).await;

    for n in &survivors {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_catches_up_by_a_chunked_snapshot() {
    let certs = make_certs(&["n1", "n2"]);
    // Snapshot every 10 entries, so the early log is purged and n2 must take a snapshot.
    let n1 = Node::start(1, certs.path(), 10).await;
    n1.raft
        .initialize(BTreeMap::from([(1, n1.member())]))
        .await
        .expect("initialize");
    wait_leader(&[&n1], None).await;
    let mut last = 0;
    for i in 0..40 {
        last = write(&n1, proposal(i)).await;
    }
    n1.raft.trigger().snapshot().await.expect("snapshot");
    n1.raft
        .wait(Some(WAIT))
        .metrics(|m| m.purged.is_some(), "log purged behind the snapshot")
        .await
        .expect("purged");

    // n2 never builds a snapshot of its own, so one it holds came over the network.
    let n2 = Node::start(2, certs.path(), 1_000).await;
    n1.raft
        .add_learner(2, n2.member(), true)
        .await
        .expect("add learner");
    wait_applied(&[&n2], last).await;
    let m2 = n2.raft.metrics().borrow_watched().clone();
    assert!(m2.snapshot.is_some(), "n2 installed n1's snapshot: {m2:?}");
    assert_replicas_agree(&[&n1, &n2]).await;
    n1.stop().await;
    n2.stop().await;
}

/// A node that presents a certificate naming one node but speaks for another is refused;
/// so is a server holding another node's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_use_another_nodes_identity() {
    let certs = make_certs(&["n1", "n2", "n4"]);
    let n1 = Node::start(1, certs.path(), 1_000).await;
    let n2 = Node::start(2, certs.path(), 1_000).await;

    // n2, with its own certificate, asks n1 to vote for candidate n4: refused.
    let mut factory = n2.transport.network_factory();
    let mut client = factory.new_client(1, &n1.member()).await;
    let option = RPCOption::new(Duration::from_secs(3));
    let as_n4 = VoteRequest::<TypeConfig>::new(Vote::new(5, 4), None);
    match client.vote(as_n4, option.clone()).await {
        Err(RPCError::Network(e)) => {
            assert!(e.to_string().contains("certificate"), "{e}")
        }
        other => panic!("a vote for n4 over n2's certificate must be refused: {other:?}"),
    }
    // Control: the same request in n2's own name is answered.
    let as_n2 = VoteRequest::<TypeConfig>::new(Vote::new(5, 2), None);
    client
        .vote(as_n2, option)
        .await
        .expect("a vote in n2's own name is answered");

    // n1 dials n4 at an address where n2 listens: n2's certificate is not valid for n4,
    // so the handshake fails. Control: dialled as n2, the same listener answers.
    let n2_addr = n2.addr.to_string();
    let err = n1
        .transport
        .status(4, &n2_addr)
        .await
        .expect_err("n2's certificate cannot answer for n4");
    assert!(matches!(err, NetError::Connect { .. }), "{err}");
    let status = n1
        .transport
        .status(2, &n2_addr)
        .await
        .expect("n2 answers as n2");
    assert_eq!(status.id, 2);

    n1.stop().await;
    n2.stop().await;
}

/// A client whose certificate comes from another cluster's CA gets nothing from a node,
/// even when it trusts the node's CA itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let ours = make_certs(&["n1", "n2"]);
    let theirs = make_certs(&["n2"]);
    let n1 = Node::start(1, ours.path(), 1_000).await;

    // Control: our own n2, same raw client code, gets an answer.
    let good = quic_client(&client_crypto(ours.path(), 2, ours.path()));
    let answer = raw_status(&good, n1.addr).await;
    assert!(answer.is_ok(), "our n2 is answered: {answer:?}");

    // Their n2 (trusting our CA so that it accepts n1): refused by n1.
    let foreign = quic_client(&client_crypto(theirs.path(), 2, ours.path()));
    let answer = raw_status(&foreign, n1.addr).await;
    assert!(
        answer.is_err(),
        "a foreign certificate got an answer: {answer:?}"
    );

    // And through the transport, whose own load refuses the mix outright.
    let mixed = NodeTls::load(
        &ours.path().join("ca.pem"),
        &theirs.path().join("n2.pem"),
        &theirs.path().join("n2.key"),
        2,
    );
    assert!(mixed.is_err());

    good.close(0u32.into(), b"done");
    foreign.close(0u32.into(), b"done");
    n1.stop().await;
}

/// A frame header announcing more than `message_size_max_bytes` is refused at once (no
/// body is sent, so a server that tried to allocate and read it would hang or blow up),
/// and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_refused_without_allocation() {
    let certs = make_certs(&["n1", "n2"]);
    let n1 = Node::start(1, certs.path(), 1_000).await;
    let client = quic_client(&client_crypto(certs.path(), 2, certs.path()));
    let conn = client
        .connect(n1.addr, "n1.carillon")
        .expect("connect")
        .await
        .expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    send.write_all(&u32::MAX.to_be_bytes())
        .await
        .expect("header");
    let answer = tokio::time::timeout(WAIT, recv.read_to_end(64 * 1024))
        .await
        .expect("answered before the wait ran out")
        .expect("a readable answer");
    assert!(answer.len() > 4, "an answer frame: {answer:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.contains("over the"),
        "a refusal naming the limit: {text}"
    );

    // The connection and the node still work.
    let again = raw_status(&client, n1.addr).await;
    assert!(again.is_ok(), "{again:?}");
    client.close(0u32.into(), b"done");
    n1.stop().await;
}

/// A QUIC client endpoint on loopback with the given TLS.
fn quic_client(crypto: &Arc<rustls::ClientConfig>) -> quinn::Endpoint {
    let mut endpoint = quinn::Endpoint::client(loopback()).expect("client endpoint");
    let quic =
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto.clone()).expect("TLS 1.3 config");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    endpoint
}

/// A rustls client presenting `n<id>` from `cert_dir` and trusting the CA in `ca_dir`.
fn client_crypto(cert_dir: &Path, id: NodeId, ca_dir: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_file(ca_dir.join("ca.pem")).expect("ca");
    roots.add(ca).expect("root");
    let cert = CertificateDer::from_pem_file(cert_dir.join(format!("n{id}.pem"))).expect("cert");
    let key = PrivateKeyDer::from_pem_file(cert_dir.join(format!("n{id}.key"))).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)
        .expect("client cert");
    config.alpn_protocols = vec![ALPN.to_vec()];
    Arc::new(config)
}

/// Ask n1 for its status by hand: the request is the postcard of `Request::Status`
/// (variant 5, no body) in a 4-byte length frame; the answer must be `Response::Status`
/// (variant 4). Any failure on the way comes back as Err.
async fn raw_status(client: &quinn::Endpoint, addr: SocketAddr) -> Result<Vec<u8>, String> {
    let attempt = async {
        let conn = client
            .connect(addr, "n1.carillon")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&[0, 0, 0, 1, 5])
            .await
            .map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let answer = recv
            .read_to_end(64 * 1024)
            .await
            .map_err(|e| e.to_string())?;
        match answer.get(4) {
            Some(4) => Ok(answer),
            _ => Err(format!("not a status answer: {answer:?}")),
        }
    };
    tokio::time::timeout(WAIT, attempt)
        .await
        .map_err(|_| "no answer in time".to_string())?
}
