//! The Raft log and vote on disk, in one redb file.
//!
//! Two tables: `raft_log` maps a log index to its postcard-encoded entry; `raft_meta` holds
//! the vote, the committed log id and the last purged log id. Every `append` call is one
//! write transaction committed with immediate durability (an fsync), so a batch of entries
//! costs one disk flush: that is where the cluster's commit throughput comes from. The
//! entries are readable as soon as `append` returns and durable when the IO callback fires;
//! both happen at the commit here.
//!
//! What it leaves to others: the state machine and its snapshots ([`crate::state_machine`]).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::alias::{LogIdOf, VoteOf};
use openraft::{LogState, OptionalSend, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

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

/// The histogram of each append's write and fsync, in seconds (the node's `/metrics`).
pub const APPEND_SECONDS_METRIC: &str = "carillon_raft_log_append_seconds";

/// A monotonic instant for the append metric only: it never reaches Raft's state, so a
/// simulator's replay is unaffected.
#[allow(clippy::disallowed_methods)] // measures an I/O duration for a metric
fn metric_clock() -> std::time::Instant {
    std::time::Instant::now()
}

/// Where a store runs its blocking redb work (commits that fsync).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoreIo {
    /// On tokio's blocking pool, off the async worker threads: what a node does.
    #[default]
    Blocking,
    /// On the calling task. For a simulator whose storage backend lives in memory: a
    /// blocking-pool thread would finish at a moment no seed decides.
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

/// The redb-backed Raft log store. Cheap to clone: clones share one database.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    io: StoreIo,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.inner.path)
            .finish()
    }
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
        Ok(LogStore {
            inner: Arc::new(Inner {
                db,
                path: path.to_path_buf(),
                io,
            }),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &'static str) -> Result<Option<T>, StoreError> {
        let txn = self.inner.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(META).map_err(db_err)?;
        match table.get(key).map_err(db_err)? {
            Some(bytes) => Ok(Some(decode(key, bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Writes one meta record in its own transaction.
    async fn write_meta(
        &self,
        key: &'static str,
        bytes: Vec<u8>,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        blocking(inner.io, move || {
            let mut txn = inner.db.begin_write().map_err(db_err)?;
            txn.set_durability(durability).map_err(db_err)?;
            {
                let mut table = txn.open_table(META).map_err(db_err)?;
                table.insert(key, bytes.as_slice()).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    fn read_entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>, StoreError> {
        let txn = self.inner.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(LOG).map_err(db_err)?;
        let mut entries = Vec::new();
        for item in table.range(range).map_err(db_err)? {
            let (index, bytes) = item.map_err(db_err)?;
            let entry: Entry = decode("log entry", bytes.value())?;
            if entry.log_id.index != index.value() {
                return Err(StoreError::IndexMismatch {
                    index: index.value(),
                    found: entry.log_id.index,
                });
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StoreError> {
        let txn = self.inner.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(LOG).map_err(db_err)?;
        let last = table.last().map_err(db_err)?;
        let log_id = match last {
            Some((_, bytes)) => Some(decode::<Entry>("log entry", bytes.value())?.log_id),
            None => None,
        };
        Ok(log_id)
    }
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
        Ok(self
            .write_meta(KEY_VOTE, bytes, Durability::Immediate)
            .await?)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // No fsync of its own: openraft treats `committed` as a hint that may lag after a
        // crash, and the next durable commit (an append or a vote) flushes it anyway.
        let bytes = encode("committed", &committed)?;
        Ok(self
            .write_meta(KEY_COMMITTED, bytes, Durability::None)
            .await?)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
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
        let mut encoded = Vec::new();
        for entry in entries {
            encoded.push((entry.log_id.index, encode("log entry", &entry)?));
        }
        if encoded.is_empty() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        let inner = Arc::clone(&self.inner);
        let started = metric_clock();
        // One transaction for the whole batch: one fsync however many entries it holds.
        let result = blocking(inner.io, move || {
            let txn = inner.db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(LOG).map_err(db_err)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice()).map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
        .await;
        // Raft waits on this write (with its fsync) before it acknowledges or commits: the
        // metric shows when the disk, not the network, is what holds commits back.
        metrics::histogram!(APPEND_SECONDS_METRIC).record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.io_completed(Err(io::Error::other(msg)));
                Err(e.into())
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        let inner = Arc::clone(&self.inner);
        blocking(inner.io, move || {
            let txn = inner.db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(LOG).map_err(db_err)?;
                table.retain_in(from.., |_, _| false).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let purged = encode("last purged log id", &log_id)?;
        let upto = log_id.index;
        let inner = Arc::clone(&self.inner);
        // The purge mark and the deletion commit together, so the log never shows a hole
        // or entries at or below the mark.
        blocking(inner.io, move || {
            let txn = inner.db.begin_write().map_err(db_err)?;
            {
                let mut meta = txn.open_table(META).map_err(db_err)?;
                meta.insert(KEY_LAST_PURGED, purged.as_slice())
                    .map_err(db_err)?;
                let mut table = txn.open_table(LOG).map_err(db_err)?;
                table.retain_in(..=upto, |_, _| false).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await?;
        Ok(())
    }
}
