//! The Raft log and vote on disk, in one redb file.
//!
//! Two tables: `raft_log` maps a log index to its postcard-encoded entry; `raft_meta` holds
//! the vote, the committed log id and the last purged log id.
//!
//! Writes go through one writer thread that commits in groups. `append` puts its entries
//! in an in-memory overlay (so they are readable when it returns, as openraft asks) and
//! queues them; the writer takes everything queued, applies it in order in one redb write
//! transaction, fsyncs once, and only then fires the appends' IO callbacks. So Raft's core
//! never waits on the disk to go on to its next step, and appends that arrive during one
//! fsync share the next. A vote, a truncation and a purge wait for their own commit (they
//! are rare); the committed log id is a hint and is not waited for.
//!
//! What it leaves to others: the state machine and its snapshots ([`crate::state_machine`]).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::alias::{LogIdOf, VoteOf};
use openraft::{LogState, OptionalSend, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::types::TypeConfig;

/// Log entries by index.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Small records kept beside the log.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

/// One Raft entry as openraft hands it to the store.
type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
type LogId = LogIdOf<TypeConfig>;
type Vote = VoteOf<TypeConfig>;

/// What can go wrong in the consensus crate's storage (log store and state machine).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source} (check the directory's permissions and that no other carillon process uses it)")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("storage error: {0}")]
    Db(#[from] redb::Error),
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("stored {what} is corrupt (cannot decode: {source}); restore the data directory from a peer or a backup")]
    Decode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("log entry at index {index} says it is at index {found}: the log file is corrupt")]
    IndexMismatch { index: u64, found: u64 },
    #[error("stored snapshot has format {found}, this build reads format {expected}: install a snapshot from an up-to-date peer")]
    SnapshotFormat { found: u32, expected: u32 },
    #[error("snapshot data does not match its metadata (last log id or membership differ)")]
    SnapshotMetaMismatch,
    #[error("a snapshot builder was used twice")]
    SnapshotBuilderReused,
    #[error("the storage worker thread failed: {0}")]
    Worker(String),
}

impl From<StoreError> for io::Error {
    fn from(e: StoreError) -> io::Error {
        let kind = match &e {
            StoreError::Decode { .. }
            | StoreError::IndexMismatch { .. }
            | StoreError::SnapshotFormat { .. }
            | StoreError::SnapshotMetaMismatch => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// Maps any redb error type into [`StoreError::Db`].
pub(crate) fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into())
}

pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|source| StoreError::Encode { what, source })
}

pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Decode { what, source })
}

/// The histogram of each group commit's write and fsync, in seconds (the node's `/metrics`).
pub const APPEND_SECONDS_METRIC: &str = "carillon_raft_log_append_seconds";

/// A monotonic instant for the writer thread's own pacing and the append metric: it never
/// reaches Raft's state, and the simulator (which writes inline) never reads it.
#[allow(clippy::disallowed_methods)] // times the writer's I/O, outside Raft's state
fn io_clock() -> std::time::Instant {
    std::time::Instant::now()
}

/// Where a store runs its blocking redb work (commits that fsync).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoreIo {
    /// Off the async worker threads: the log's writes on its own writer thread, the state
    /// machine's on tokio's blocking pool. What a node does.
    #[default]
    Blocking,
    /// On the calling task. For a simulator whose storage backend lives in memory: another
    /// thread would finish at a moment no seed decides.
    Inline,
}

/// Runs blocking redb work where `io` says.
pub(crate) async fn blocking<T, F>(io: StoreIo, f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    match io {
        StoreIo::Blocking => tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?,
        StoreIo::Inline => f(),
    }
}

/// How many queued writes one group commit takes at most.
const GROUP_OPS_MAX: usize = 4096;
/// How many writes may wait for the writer before `append` waits for room.
const QUEUE_OPS_MAX: usize = 1024;
/// How often at most the committed-index hint is written, and how long it waits for a group
/// to ride with before it is written alone (see [`write_loop`]). A crash loses about this
/// much of the hint, which openraft treats as one that may lag anyway.
const HINT_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// The redb-backed Raft log store. Cheap to clone: clones share one database and writer.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    path: PathBuf,
    /// The last committed log id handed to `save_committed`, which is not waited for.
    committed: Mutex<Option<Option<LogId>>>,
    /// `None` when writes run inline ([`StoreIo::Inline`]).
    writer: Option<Writer>,
}

/// What the writer thread and the readers share.
struct Shared {
    db: Database,
    /// Entries appended and not yet committed, by index, each with the sequence number of
    /// its append: readers see them over what the database holds.
    overlay: Mutex<Overlay>,
    /// Group commits that fsynced, for tests that check appends share them.
    durable_commits: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Overlay {
    entries: BTreeMap<u64, (u64, Entry)>,
    next_seq: u64,
}

/// The writer thread and its queue.
struct Writer {
    tx: Option<mpsc::Sender<Op>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(writer) = &mut self.writer {
            // Closing the queue lets the writer commit what is queued, then stop; joining
            // it releases the file before a reopen.
            writer.tx = None;
            if let Some(thread) = writer.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// One write, in the order Raft asked for it.
enum Op {
    Append {
        /// Index, overlay sequence number, entry.
        entries: Vec<(u64, u64, Entry)>,
        callback: IOFlushed<TypeConfig>,
    },
    TruncateFrom {
        from: u64,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    Purge {
        upto: u64,
        mark: Vec<u8>,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    Meta {
        key: &'static str,
        bytes: Vec<u8>,
        /// Whether the group must be fsynced for this write.
        durable: bool,
        done: Option<oneshot::Sender<Result<(), StoreError>>>,
    },
}

impl Op {
    /// A write nobody waits for and that needs no fsync: the committed-index hint.
    fn is_hint(&self) -> bool {
        matches!(
            self,
            Op::Meta {
                durable: false,
                done: None,
                ..
            }
        )
    }

    fn durable(&self) -> bool {
        match self {
            Op::Meta { durable, .. } => *durable,
            _ => true,
        }
    }
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded maps hold no invariant a panic elsewhere could break halfway.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LogStore {
    /// Opens the log file at `path`, creating it (and its tables) if it does not exist.
    pub fn open(path: &Path) -> Result<LogStore, StoreError> {
        let db = Database::create(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        LogStore::from_db(db, path, StoreIo::Blocking)
    }

    /// Opens the log on another redb backend (a simulator's in-memory disk), named `label`
    /// in errors, running its disk work as `io` says.
    pub fn open_backend(
        backend: impl redb::StorageBackend,
        label: &Path,
        io: StoreIo,
    ) -> Result<LogStore, StoreError> {
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|source| StoreError::Open {
                path: label.to_path_buf(),
                source,
            })?;
        LogStore::from_db(db, label, io)
    }

    fn from_db(db: Database, path: &Path, io: StoreIo) -> Result<LogStore, StoreError> {
        // Create both tables up front so readers never meet a missing table.
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(LOG).map_err(db_err)?;
            txn.open_table(META).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        let shared = Arc::new(Shared {
            db,
            overlay: Mutex::new(Overlay::default()),
            durable_commits: Default::default(),
        });
        let writer = match io {
            StoreIo::Inline => None,
            StoreIo::Blocking => {
                let (tx, rx) = mpsc::channel(QUEUE_OPS_MAX);
                let thread = std::thread::Builder::new()
                    .name("raft-log-writer".into())
                    .spawn({
                        let shared = Arc::clone(&shared);
                        move || write_loop(&shared, rx)
                    })
                    .map_err(|e| StoreError::Worker(format!("cannot start the writer: {e}")))?;
                Some(Writer {
                    tx: Some(tx),
                    thread: Some(thread),
                })
            }
        };
        Ok(LogStore {
            inner: Arc::new(Inner {
                shared,
                path: path.to_path_buf(),
                committed: Mutex::new(None),
                writer,
            }),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Hands `op` to the writer, or commits it here when writes run inline.
    async fn submit(&self, op: Op) -> Result<(), StoreError> {
        match &self.inner.writer {
            None => {
                commit_group(&self.inner.shared, vec![op]);
                Ok(())
            }
            Some(Writer { tx: Some(tx), .. }) => tx.send(op).await.map_err(|_| writer_gone()),
            Some(Writer { tx: None, .. }) => Err(writer_gone()),
        }
    }

    /// Submits an op built around a reply channel and waits for its commit.
    async fn submit_and_wait(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<(), StoreError>>) -> Op,
    ) -> Result<(), StoreError> {
        let (done, reply) = oneshot::channel();
        self.submit(op(done)).await?;
        reply.await.map_err(|_| writer_gone())?
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &'static str) -> Result<Option<T>, StoreError> {
        let txn = self.inner.shared.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(META).map_err(db_err)?;
        match table.get(key).map_err(db_err)? {
            Some(bytes) => Ok(Some(decode(key, bytes.value())?)),
            None => Ok(None),
        }
    }

    fn read_entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>, StoreError> {
        // The overlay first: an entry the writer commits meanwhile leaves the overlay only
        // after it is in the database, so the read below still finds it.
        let overlay: Vec<(u64, Entry)> = lock(&self.inner.shared.overlay)
            .entries
            .range(range)
            .map(|(index, (_, entry))| (*index, entry.clone()))
            .collect();
        let txn = self.inner.shared.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(LOG).map_err(db_err)?;
        let mut entries = BTreeMap::new();
        for item in table.range(range).map_err(db_err)? {
            let (index, bytes) = item.map_err(db_err)?;
            let entry: Entry = decode("log entry", bytes.value())?;
            if entry.log_id.index != index.value() {
                return Err(StoreError::IndexMismatch {
                    index: index.value(),
                    found: entry.log_id.index,
                });
            }
            entries.insert(index.value(), entry);
        }
        entries.extend(overlay);
        Ok(entries.into_values().collect())
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StoreError> {
        let pending = lock(&self.inner.shared.overlay)
            .entries
            .last_key_value()
            .map(|(_, (_, entry))| entry.log_id);
        let txn = self.inner.shared.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(LOG).map_err(db_err)?;
        let last = table.last().map_err(db_err)?;
        let stored = match last {
            Some((_, bytes)) => Some(decode::<Entry>("log entry", bytes.value())?.log_id),
            None => None,
        };
        Ok(match (pending, stored) {
            (Some(p), Some(s)) => Some(if p.index >= s.index { p } else { s }),
            (p, s) => p.or(s),
        })
    }
}

fn writer_gone() -> StoreError {
    StoreError::Worker("the Raft log writer has stopped".into())
}

/// The writer thread: each turn takes every queued write (up to [`GROUP_OPS_MAX`]) and
/// commits them as one group.
///
/// A committed-index hint (the one write nobody waits for) does not get a transaction of its
/// own, and is not written with every group either: it rides with a group at most every
/// [`HINT_EVERY`], and is written alone only when no group has come for [`HINT_EVERY`] since
/// it arrived. A later hint replaces an earlier one still waiting. So a busy log writes its
/// meta table a few times a second instead of after every append.
fn write_loop(shared: &Shared, mut rx: mpsc::Receiver<Op>) {
    // A runtime of its own, only to wait on the queue with a timeout.
    let clock = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build();
    let mut hint: Option<Op> = None;
    let mut hint_since = io_clock();
    let mut hint_written = io_clock();
    loop {
        let first = if hint.is_none() {
            match rx.blocking_recv() {
                Some(op) => op,
                None => break,
            }
        } else {
            let wait = HINT_EVERY.saturating_sub(hint_since.elapsed());
            let received = match &clock {
                // The timer is made inside `block_on`: it needs the runtime's clock.
                Ok(clock) if !wait.is_zero() => {
                    clock.block_on(async { tokio::time::timeout(wait, rx.recv()).await.ok() })
                }
                // Without a runtime for the timeout, a hint is written at once.
                _ => None,
            };
            match received {
                Some(Some(op)) => op,
                Some(None) => break,
                None => {
                    commit_group(shared, hint.take().into_iter().collect());
                    hint_written = io_clock();
                    continue;
                }
            }
        };
        let mut ops = Vec::new();
        let mut next = Some(first);
        while let Some(op) = next {
            if op.is_hint() {
                if hint.is_none() {
                    hint_since = io_clock();
                }
                hint = Some(op);
            } else {
                ops.push(op);
            }
            next = if ops.len() < GROUP_OPS_MAX {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if !ops.is_empty() {
            if hint.is_some() && hint_written.elapsed() >= HINT_EVERY {
                // After the group's appends: the hint is written with (or after) the
                // entries it names.
                ops.extend(hint.take());
                hint_written = io_clock();
            }
            commit_group(shared, ops);
        }
    }
    if let Some(op) = hint {
        commit_group(shared, vec![op]);
    }
}

/// Applies `ops` in order in one write transaction, fsyncs it if any of them needs that,
/// then releases the appended entries from the overlay and tells every op's waiter.
fn commit_group(shared: &Shared, ops: Vec<Op>) {
    let started = io_clock();
    let durable = ops.iter().any(Op::durable);
    let result = write_group(&shared.db, &ops, durable);
    if durable {
        shared
            .durable_commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Raft waits on this write (with its fsync) before it acknowledges or commits: the
        // metric shows when the disk, not the network, is what holds commits back.
        metrics::histogram!(APPEND_SECONDS_METRIC).record(started.elapsed().as_secs_f64());
    }
    let failure = result.err().map(|e| e.to_string());
    if failure.is_none() {
        let mut overlay = lock(&shared.overlay);
        for op in &ops {
            if let Op::Append { entries, .. } = op {
                for (index, seq, _) in entries {
                    // A later append at the same index (after a truncation) stays.
                    if overlay.entries.get(index).is_some_and(|(s, _)| s == seq) {
                        overlay.entries.remove(index);
                    }
                }
            }
        }
    }
    let reply = || match &failure {
        None => Ok(()),
        Some(msg) => Err(StoreError::Worker(format!(
            "cannot commit the Raft log: {msg}"
        ))),
    };
    for op in ops {
        match op {
            Op::Append { callback, .. } => {
                callback.io_completed(reply().map_err(io::Error::other));
            }
            Op::TruncateFrom { done, .. } | Op::Purge { done, .. } => {
                let _ = done.send(reply());
            }
            Op::Meta { done, .. } => {
                if let Some(done) = done {
                    let _ = done.send(reply());
                }
            }
        }
    }
}

fn write_group(db: &Database, ops: &[Op], durable: bool) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(db_err)?;
    if !durable {
        txn.set_durability(Durability::None).map_err(db_err)?;
    }
    {
        let mut log = txn.open_table(LOG).map_err(db_err)?;
        let mut meta = txn.open_table(META).map_err(db_err)?;
        for op in ops {
            match op {
                Op::Append { entries, .. } => {
                    for (index, _, entry) in entries {
                        let bytes = encode("log entry", entry)?;
                        log.insert(*index, bytes.as_slice()).map_err(db_err)?;
                    }
                }
                Op::TruncateFrom { from, .. } => {
                    log.retain_in(*from.., |_, _| false).map_err(db_err)?;
                }
                Op::Purge { upto, mark, .. } => {
                    // The mark and the deletion commit together, so the log never shows a
                    // hole or entries at or below the mark.
                    meta.insert(KEY_LAST_PURGED, mark.as_slice())
                        .map_err(db_err)?;
                    log.retain_in(..=*upto, |_, _| false).map_err(db_err)?;
                }
                Op::Meta { key, bytes, .. } => {
                    meta.insert(*key, bytes.as_slice()).map_err(db_err)?;
                }
            }
        }
    }
    txn.commit().map_err(db_err)
}

fn owned_bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.read_entries(owned_bounds(&range))?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.read_meta(KEY_VOTE)?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.read_meta(KEY_LAST_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes = encode("vote", vote)?;
        // A vote must be on disk before Raft acts on it.
        Ok(self
            .submit_and_wait(|done| Op::Meta {
                key: KEY_VOTE,
                bytes,
                durable: true,
                done: Some(done),
            })
            .await?)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Neither waited for nor fsynced: openraft treats `committed` as a hint that may lag
        // after a crash, and the next durable group commit flushes it anyway.
        let bytes = encode("committed", &committed)?;
        *lock(&self.inner.committed) = Some(committed);
        Ok(self
            .submit(Op::Meta {
                key: KEY_COMMITTED,
                bytes,
                durable: false,
                done: None,
            })
            .await?)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        if let Some(committed) = *lock(&self.inner.committed) {
            return Ok(committed);
        }
        let committed: Option<Option<LogId>> = self.read_meta(KEY_COMMITTED)?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut queued = Vec::new();
        {
            let mut overlay = lock(&self.inner.shared.overlay);
            for entry in entries {
                let seq = overlay.next_seq;
                overlay.next_seq += 1;
                let index = entry.log_id.index;
                overlay.entries.insert(index, (seq, entry.clone()));
                queued.push((index, seq, entry));
            }
        }
        if queued.is_empty() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        // Readable now (the overlay); durable when the writer's group commit fires the
        // callback.
        Ok(self
            .submit(Op::Append {
                entries: queued,
                callback,
            })
            .await?)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        lock(&self.inner.shared.overlay)
            .entries
            .retain(|index, _| *index < from);
        Ok(self
            .submit_and_wait(|done| Op::TruncateFrom { from, done })
            .await?)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mark = encode("last purged log id", &log_id)?;
        let upto = log_id.index;
        lock(&self.inner.shared.overlay)
            .entries
            .retain(|index, _| *index > upto);
        Ok(self
            .submit_and_wait(|done| Op::Purge { upto, mark, done })
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::blank_ent;
    use openraft::type_config::TypeConfigExt;

    /// Appends made while the writer is held up are readable at once, not yet durable,
    /// and then share one fsync.
    #[tokio::test]
    async fn appends_are_readable_at_once_and_share_a_group_commit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("log.redb");
        let mut log = LogStore::open(&path).expect("open");
        // Holding redb's one write transaction stops the writer at its next commit.
        let blocker = log.inner.shared.db.begin_write().expect("write txn");
        let mut flushed = Vec::new();
        for index in 1..=50 {
            let (tx, rx) = <TypeConfig as TypeConfigExt>::oneshot();
            log.append(
                [blank_ent::<TypeConfig>(1, 1, index)],
                IOFlushed::signal(tx),
            )
            .await
            .expect("append");
            let read = log.try_get_log_entries(1..=index).await.expect("read");
            assert_eq!(read.len() as u64, index, "entry {index} readable at once");
            flushed.push(rx);
        }
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|id| id.index), Some(50));
        for rx in &mut flushed {
            assert!(
                rx.try_recv().is_err(),
                "no append is durable while the writer waits"
            );
        }
        drop(blocker);
        for rx in flushed {
            rx.await.expect("callback fired").expect("flushed");
        }
        let commits = durable_commits(&log);
        assert!(commits <= 2, "50 appends took {commits} fsyncs");
        drop(log);
        let mut log = LogStore::open(&path).expect("reopen");
        assert_eq!(
            log.try_get_log_entries(1..=50).await.expect("read").len(),
            50
        );
    }

    /// How many group commits with an fsync the writer has made.
    fn durable_commits(log: &LogStore) -> u64 {
        log.inner
            .shared
            .durable_commits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The committed index as stored in the file, not the in-memory copy.
    fn stored_committed(log: &LogStore) -> Option<u64> {
        let stored: Option<Option<LogId>> = log.read_meta(KEY_COMMITTED).expect("read meta");
        stored.flatten().map(|id| id.index)
    }

    /// A committed-index hint is not a transaction of its own: it rides with a group at most
    /// every `HINT_EVERY`, is written alone when no group comes, and is not lost when the
    /// store closes.
    #[tokio::test]
    async fn a_committed_hint_rides_with_a_group_at_most_so_often_or_is_written_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("log.redb");
        let mut log = LogStore::open(&path).expect("open");
        let id = |index| Some(blank_ent::<TypeConfig>(1, 1, index).log_id);
        async fn append(log: &mut LogStore, index: u64) {
            let (tx, rx) = <TypeConfig as TypeConfigExt>::oneshot();
            log.append(
                [blank_ent::<TypeConfig>(1, 1, index)],
                IOFlushed::signal(tx),
            )
            .await
            .expect("append");
            rx.await.expect("callback fired").expect("flushed");
        }
        append(&mut log, 1).await;
        tokio::time::sleep(HINT_EVERY).await;
        let before = durable_commits(&log);

        // No hint written for a while: it rides with the next append's commit.
        log.save_committed(id(1)).await.expect("save committed");
        assert_eq!(log.read_committed().await.expect("read"), id(1));
        append(&mut log, 2).await;
        assert_eq!(
            stored_committed(&log),
            Some(1),
            "the hint rode with the append"
        );
        assert_eq!(
            durable_commits(&log),
            before + 1,
            "in the append's own commit"
        );

        // One was just written: the next waits, then is written alone, without an fsync.
        log.save_committed(id(2)).await.expect("save committed");
        let started = io_clock();
        append(&mut log, 3).await;
        // (Unless the disk took so long that the wait for a group ran out meanwhile.)
        if started.elapsed() < HINT_EVERY / 2 {
            assert_eq!(stored_committed(&log), Some(1), "not with a group so soon");
        }
        tokio::time::sleep(HINT_EVERY * 2).await;
        assert_eq!(
            stored_committed(&log),
            Some(2),
            "written alone after the wait"
        );
        assert_eq!(
            durable_commits(&log),
            before + 2,
            "only the appends were fsynced"
        );

        // Closing the store writes a hint still waiting.
        log.save_committed(id(3)).await.expect("save committed");
        drop(log);
        let mut log = LogStore::open(&path).expect("reopen");
        assert_eq!(log.read_committed().await.expect("read"), id(3));
    }
}
