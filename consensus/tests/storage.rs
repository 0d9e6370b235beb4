//! The redb log store and the ACD state machine: openraft's storage suite, replica
//! determinism, snapshots, and reopening from disk.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::time::Duration;

use carillon_consensus::config::raft_config;

use carillon_consensus::log_store::{LogStore, StoreError};
use carillon_consensus::state_machine::{AcdReader, AppliedEntry, SnapshotData, StateMachineStore};
use carillon_consensus::types::{Member, Proposal, Raft, TypeConfig};
use carillon_routing::{Arrival, Command, OfferFailure, Party, QueueConfig};
use openraft::entry::RaftEntry;
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::testing::{blank_ent, log_id, membership_ent};
use openraft::type_config::alias::EntryOf;
use openraft::type_config::TypeConfigExt;
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader, RaftSnapshotBuilder, StorageError, Vote};
use openraft::{RaftNetworkFactory, RaftNetworkV2};
use tempfile::TempDir;
use tokio::sync::mpsc;

type Entry = EntryOf<TypeConfig>;

struct TempBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let to_storage =
            |e: io::Error| StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, e);
        let dir = tempfile::tempdir().map_err(to_storage)?;
        let log = LogStore::open(&dir.path().join("log.redb")).map_err(|e| to_storage(e.into()))?;
        let sm = StateMachineStore::open(&dir.path().join("sm.redb"), None)
            .map_err(|e| to_storage(e.into()))?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() {
    Suite::test_all(TempBuilder)
        .await
        .expect("openraft storage suite");
}

/// A few dozen routing commands touching most of the ACD: queues, logins, calls offered,
/// connected, ended, abandoned, failed offers, ring timeouts, wrap-up, refusals. Kept in
/// one place so it can follow changes to `Command`.
fn routing_commands() -> Vec<Command> {
    let queue = |name: &str, skill: &str| Command::ConfigureQueue {
        queue: QueueConfig {
            name: name.to_string(),
            skill: skill.to_string(),
            wrapup_ms: 2_000,
            ring_timeout_ms: 5_000,
            ..QueueConfig::default()
        },
        at: 1_000,
    };
    let login = |agent: &str, skills: &[&str], at| Command::AgentLogin {
        agent: agent.to_string(),
        skills: skills.iter().map(|s| s.to_string()).collect(),
        node: 1,
        site: "hq".to_string(),
        at,
    };
    let enqueue = |call: &str, queue: &str, at| {
        Command::Enqueue(Arrival {
            call: call.to_string(),
            queue: queue.to_string(),
            caller: format!("+4420{call}"),
            dialled: "+448000".to_string(),
            owner: 1,
            site: "hq".to_string(),
            at,
            ..Arrival::default()
        })
    };
    let connected = |call: &str, agent: &str, at| Command::Connected {
        call: call.to_string(),
        agent: agent.to_string(),
        at,
    };
    let ended = |call: &str, at| Command::Ended {
        call: call.to_string(),
        by: Party::Caller,
        at,
    };
    vec![
        queue("support", "support"),
        queue("sales", "sales"),
        login("a1", &["support"], 1_100),
        login("a2", &["support"], 1_200),
        login("a3", &["sales"], 1_300),
        login("a4", &["support", "sales"], 1_400),
        enqueue("c1", "support", 2_000),
        enqueue("c2", "support", 2_100),
        enqueue("c3", "sales", 2_200),
        enqueue("c4", "support", 2_300),
        enqueue("c5", "support", 2_400),
        enqueue("c6", "sales", 2_500),
        enqueue("c6", "sales", 2_550), // duplicate: refused on every replica
        enqueue("c7", "nowhere", 2_600), // unknown queue: refused
        connected("c1", "a1", 3_000),
        connected("c2", "a2", 3_100),
        connected("c3", "a3", 3_200),
        Command::OfferFailed {
            call: "c4".to_string(),
            agent: "a4".to_string(),
            failure: OfferFailure::Rejected,
            at: 3_300,
        },
        Command::Abandon {
            call: "c5".to_string(),
            at: 3_400,
        },
        ended("c1", 4_000),
        Command::Tick { at: 6_500 },
        ended("c2", 6_600),
        Command::AgentReady {
            agent: "a4".to_string(),
            at: 6_700,
        },
        Command::Tick { at: 9_000 },
        Command::AgentNotReady {
            agent: "a2".to_string(),
            reason: "lunch".to_string(),
            at: 9_100,
        },
        enqueue("c8", "support", 9_200),
        enqueue("c9", "sales", 9_300),
        Command::Tick { at: 15_000 },
        Command::Lost {
            call: "c3".to_string(),
            cause: "media-failure".to_string(),
            at: 15_100,
        },
        Command::AgentLogout {
            agent: "a3".to_string(),
            at: 15_200,
        },
        Command::AgentReady {
            agent: "a2".to_string(),
            at: 15_300,
        },
        enqueue("c10", "support", 15_400),
        Command::Tick { at: 21_000 },
        connected("c4", "a1", 21_100),
        ended("c4", 22_000),
        Command::Tick { at: 30_000 },
    ]
}

/// The commands as Raft entries after a membership entry at index 1.
fn routing_entries(first_index: u64) -> Vec<Entry> {
    routing_commands()
        .into_iter()
        .zip(first_index..)
        .map(|(cmd, index)| {
            Entry::new_normal(log_id::<TypeConfig>(1, 1, index), Proposal::Routing(cmd))
        })
        .collect()
}

async fn apply(sm: &mut StateMachineStore, entries: Vec<Entry>) {
    let stream = futures_util::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(stream)
        .await
        .expect("apply never fails on routing input");
}

fn membership_entry(index: u64) -> Entry {
    membership_ent::<TypeConfig>(1, 1, index, vec![BTreeSet::from([1, 2, 3])])
}

#[tokio::test]
async fn replicas_applying_the_same_entries_reach_the_same_state_hash() {
    let dir_a = tempfile::tempdir().expect("temp dir");
    let dir_b = tempfile::tempdir().expect("temp dir");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<AppliedEntry>(8);
    let mut a = StateMachineStore::open(&dir_a.path().join("sm.redb"), Some(tx)).expect("open");
    let mut b = StateMachineStore::open(&dir_b.path().join("sm.redb"), None).expect("open");

    let entries = routing_entries(3);
    let count = entries.len();
    // The channel is smaller than the batch: applying waits for the reader (backpressure).
    let collector = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(entry) = rx.recv().await {
            seen.push(entry);
        }
        seen
    });

    let head = vec![blank_ent::<TypeConfig>(1, 1, 1), membership_entry(2)];
    apply(&mut a, head.clone()).await;
    apply(&mut a, entries.clone()).await;
    // B gets the same log in other batch sizes: batching must not change the outcome.
    apply(&mut b, head).await;
    for chunk in entries.chunks(5) {
        apply(&mut b, chunk.to_vec()).await;
    }

    let (ra, rb) = (a.reader(), b.reader());
    assert_eq!(ra.state_hash(), rb.state_hash());
    assert_eq!(ra.last_applied_index(), Some(2 + count as u64));
    assert_eq!(rb.last_applied_index(), ra.last_applied_index());
    assert_ne!(
        ra.state_hash(),
        StateMachineStore::open(&dir_b.path().join("fresh.redb"), None)
            .expect("open")
            .reader()
            .state_hash(),
        "the commands changed the state"
    );
    ra.with_acd(|acd| acd.check_invariants())
        .expect("ACD invariants hold");
    assert_eq!(ra.last_membership().log_id().map(|id| id.index), Some(2));

    // The readers share the store: the events channel closes when all are gone.
    drop((a, ra));
    let seen = collector.await.expect("collector task");
    assert_eq!(seen.len(), count, "one applied entry per routing command");
    assert_eq!(seen[0].index, 3);
    let refused = seen.iter().filter(|e| e.applied.refused.is_some()).count();
    let with_events = seen.iter().filter(|e| !e.applied.events.is_empty()).count();
    assert!(
        refused >= 2,
        "the duplicate and the unknown-queue enqueues are refused"
    );
    assert!(
        with_events > count / 2,
        "most commands produce events ({with_events}/{count})"
    );
}

#[tokio::test]
async fn snapshot_round_trip_and_reopen_restore_the_state() {
    let dir_a = tempfile::tempdir().expect("temp dir");
    let dir_b = tempfile::tempdir().expect("temp dir");
    let path_a = dir_a.path().join("sm.redb");
    let mut a = StateMachineStore::open(&path_a, None).expect("open");
    apply(&mut a, vec![membership_entry(1)]).await;
    let entries = routing_entries(2);
    let (first, rest) = entries.split_at(20);
    apply(&mut a, first.to_vec()).await;

    let snap = a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build snapshot");
    let hash_at_snapshot = a.reader().state_hash();
    assert_eq!(snap.meta.last_log_id.map(|id| id.index), Some(21));

    // Install on a fresh replica: same state.
    let mut b = StateMachineStore::open(&dir_b.path().join("sm.redb"), None).expect("open");
    b.install_snapshot(&snap.meta, snap.snapshot)
        .await
        .expect("install");
    assert_eq!(b.reader().state_hash(), hash_at_snapshot);
    assert_eq!(
        b.applied_state().await.expect("applied").0,
        snap.meta.last_log_id
    );
    let current = b
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("a snapshot");
    assert_eq!(current.meta, snap.meta);

    // Both continue with the same tail and stay equal.
    apply(&mut a, rest.to_vec()).await;
    apply(&mut b, rest.to_vec()).await;
    let final_hash = a.reader().state_hash();
    assert_eq!(b.reader().state_hash(), final_hash);
    assert_ne!(final_hash, hash_at_snapshot);

    // Reopening A restores the stored snapshot (openraft replays the log after it).
    drop(a);
    let mut reopened = StateMachineStore::open(&path_a, None).expect("reopen");
    assert_eq!(reopened.reader().state_hash(), hash_at_snapshot);
    assert_eq!(reopened.reader().last_applied_index(), Some(21));
    let (applied, membership) = reopened.applied_state().await.expect("applied");
    assert_eq!(applied, snap.meta.last_log_id);
    assert_eq!(membership.log_id().map(|id| id.index), Some(1));
    apply(&mut reopened, rest.to_vec()).await;
    assert_eq!(reopened.reader().state_hash(), final_hash);

    // B's installed snapshot is on disk too.
    drop(b);
    let b = StateMachineStore::open(&dir_b.path().join("sm.redb"), None).expect("reopen");
    assert_eq!(b.reader().state_hash(), hash_at_snapshot);
}

#[tokio::test]
async fn snapshot_bytes_that_do_not_decode_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sm = StateMachineStore::open(&dir.path().join("sm.redb"), None).expect("open");
    apply(&mut sm, vec![membership_entry(1)]).await;
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let mut bytes = snap.snapshot.into_inner();
    bytes.truncate(bytes.len() / 2);
    let err = sm
        .install_snapshot(&snap.meta, std::io::Cursor::new(bytes))
        .await
        .expect_err("a truncated snapshot is refused");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let mut other = vec![7u8];
    other.extend_from_slice(b"garbage");
    let err = sm
        .install_snapshot(&snap.meta, std::io::Cursor::new(other))
        .await
        .expect_err("an unknown snapshot format is refused");
    assert!(err.to_string().contains("format 7"), "{err}");
}

async fn append(log: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = <TypeConfig as TypeConfigExt>::oneshot();
    log.append(entries, IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await.expect("callback fired").expect("flushed");
}

#[tokio::test]
async fn log_store_keeps_entries_vote_and_committed_across_reopen_and_purges() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("log.redb");
    {
        let mut log = LogStore::open(&path).expect("open");
        let mut entries = vec![blank_ent::<TypeConfig>(1, 1, 1), membership_entry(2)];
        entries.extend(routing_entries(3));
        append(&mut log, entries).await;
        log.save_vote(&Vote::new_committed(1, 1))
            .await
            .expect("vote");
        log.save_committed(Some(log_id::<TypeConfig>(1, 1, 30)))
            .await
            .expect("committed");
    }
    let count = 2 + routing_commands().len() as u64;

    let mut log = LogStore::open(&path).expect("reopen");
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_log_id.map(|id| id.index), Some(count));
    assert_eq!(state.last_purged_log_id, None);
    assert_eq!(
        log.read_vote().await.expect("vote"),
        Some(Vote::new_committed(1, 1))
    );
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(log_id::<TypeConfig>(1, 1, 30))
    );
    let all = log.try_get_log_entries(1..=count).await.expect("read");
    assert_eq!(all.len() as u64, count);
    assert_eq!(all[2].payload, routing_entries(3)[0].payload);

    log.purge(log_id::<TypeConfig>(1, 1, 10))
        .await
        .expect("purge");
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id.map(|id| id.index), Some(10));
    let left = log.try_get_log_entries(0..=count).await.expect("read");
    assert_eq!(left.first().map(|e| e.index()), Some(11));

    log.truncate_after(Some(log_id::<TypeConfig>(1, 1, 20)))
        .await
        .expect("truncate");
    drop(log);
    let mut log = LogStore::open(&path).expect("reopen");
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id.map(|id| id.index), Some(10));
    assert_eq!(state.last_log_id.map(|id| id.index), Some(20));
    assert_eq!(
        log.try_get_log_entries(11..21).await.expect("read").len(),
        10
    );

    // Purging everything leaves the purge mark as the last log id.
    log.purge(log_id::<TypeConfig>(1, 1, 20))
        .await
        .expect("purge all");
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_log_id.map(|id| id.index), Some(20));
    assert!(log
        .try_get_log_entries(0..100)
        .await
        .expect("read")
        .is_empty());
}

#[tokio::test]
async fn a_store_already_open_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("log.redb");
    let _log = LogStore::open(&path).expect("open");
    let err = LogStore::open(&path).expect_err("second open of the same file");
    assert!(err.to_string().contains("log.redb"), "{err}");
}

/// A network for a one-node cluster: there is never a peer to reach.
struct NoPeers;

#[derive(Debug, thiserror::Error)]
#[error("a one-node test cluster has no peers")]
struct NoPeer;

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeers;

    async fn new_client(&mut self, _target: u64, _node: &Member) -> NoPeers {
        NoPeers
    }
}

impl RaftNetworkV2<TypeConfig> for NoPeers {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(Unreachable::new(&NoPeer)))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(Unreachable::new(&NoPeer)))
    }

    async fn full_snapshot(
        &mut self,
        _vote: openraft::type_config::alias::VoteOf<TypeConfig>,
        _snapshot: openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(Unreachable::new(&NoPeer)))
    }
}

/// Opens a store, waiting for a previous instance to let go of the file: a disk write
/// that a shutdown cancelled still finishes on its blocking thread, holding the file a
/// moment longer.
async fn open_released<T>(mut open: impl FnMut() -> Result<T, StoreError>) -> T {
    for _ in 0..100 {
        match open() {
            Err(StoreError::Open { .. }) => tokio::time::sleep(Duration::from_millis(50)).await,
            other => return other.expect("the store opens"),
        }
    }
    open().expect("the previous instance released the file within 5 s")
}

/// Starts a one-node Raft on `dir`'s files with the state machine's events paused around
/// `Raft::new`, as the node starts; also returns how many entries the start-up replay
/// applied without events.
async fn start_node(
    dir: &TempDir,
    events: Option<mpsc::Sender<AppliedEntry>>,
) -> (Raft, AcdReader, u64) {
    let log = open_released(|| LogStore::open(&dir.path().join("log.redb"))).await;
    let sm = open_released(|| StateMachineStore::open(&dir.path().join("sm.redb"), events.clone()))
        .await;
    let reader = sm.reader();
    let replay = sm.clone();
    replay.pause_events();
    let config = raft_config(150, 300, 50, 1_000).expect("valid test timings");
    let raft = Raft::new(1, config, NoPeers, log, sm)
        .await
        .expect("raft starts");
    let skipped = replay.resume_events();
    (raft, reader, skipped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_node_raft_applies_and_recovers_its_state_after_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let wait = Some(Duration::from_secs(10));
    let (tx, mut rx) = mpsc::channel::<AppliedEntry>(64);
    let (raft, reader, _) = start_node(&dir, Some(tx)).await;
    raft.initialize(BTreeMap::from([(1, Member::default())]))
        .await
        .expect("initialize");
    raft.wait(wait)
        .current_leader(1, "leader")
        .await
        .expect("elected");

    let commands = routing_commands();
    let (first, rest) = commands.split_at(20);
    let mut refused = 0;
    let mut applied = None;
    for cmd in first {
        let resp = raft
            .client_write(Proposal::Routing(cmd.clone()))
            .await
            .expect("write");
        refused += usize::from(resp.data.refused.is_some());
        applied = Some(resp.log_id);
    }
    let applied = applied.expect("entries were written");
    raft.trigger().snapshot().await.expect("trigger snapshot");
    raft.wait(wait)
        .snapshot(applied, "snapshot built")
        .await
        .expect("snapshot");
    let mut last = applied;
    for cmd in rest {
        let resp = raft
            .client_write(Proposal::Routing(cmd.clone()))
            .await
            .expect("write");
        refused += usize::from(resp.data.refused.is_some());
        last = resp.log_id;
    }
    let hash = reader.state_hash();
    assert_eq!(reader.last_applied_index(), Some(last.index));
    // The proposer is answered before the entry goes on the channel: the last one may
    // still be on its way.
    for heard in 0..commands.len() {
        let entry = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {heard} routing entries reached the channel"))
            .expect("the store holds the sender");
        assert!(entry.index <= last.index);
    }
    assert!(
        refused >= 1,
        "refusals come back in the response, not as errors"
    );
    raft.shutdown().await.expect("shutdown");
    drop((raft, reader));
    // Restart from the same files: the snapshot is restored and the committed log after it
    // replayed, so the state is where it was. The events channel holds one entry and
    // nobody reads it until Raft::new returns: with events paused, the replay must not
    // wait on it.
    let (tx, mut rx) = mpsc::channel::<AppliedEntry>(1);
    let (raft, reader, skipped) =
        tokio::time::timeout(Duration::from_secs(10), start_node(&dir, Some(tx)))
            .await
            .expect("Raft::new returns although nobody drains the events channel");
    raft.wait(wait)
        .applied_index_at_least(Some(last.index), "replayed")
        .await
        .expect("replay after restart");
    assert_eq!(reader.state_hash(), hash);
    assert!(
        skipped >= rest.len() as u64 - 1,
        "the replay after the snapshot was applied without events ({skipped} skipped)"
    );
    // After start-up, entries are heard again.
    let resp = raft
        .client_write(Proposal::Routing(Command::Tick { at: 1 }))
        .await
        .expect("write after restart");
    let heard = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a new entry reaches the channel")
        .expect("sender held by the store");
    assert_eq!(heard.index, resp.log_id.index);
    raft.shutdown().await.expect("shutdown");
}
