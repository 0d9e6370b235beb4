//! The replicated ACD: openraft's state machine around [`carillon_routing::Acd`], with its
//! snapshots kept in a redb file.
//!
//! Applying runs in memory: each committed routing command goes to `Acd::apply`; a refused
//! command is an ordinary, deterministic outcome (every replica refuses it the same way),
//! never an apply error. Durability comes from two places: the log store keeps the entries
//! and the committed index, and this store keeps the latest snapshot (the whole `Acd`, the
//! last applied log id and the membership). On open the stored snapshot is restored, and
//! openraft replays the committed log after it.
//!
//! Call order, as openraft drives it: `applied_state` at start-up, then `apply` for each
//! committed batch; `get_snapshot_builder` + `build_snapshot` by policy; `install_snapshot`
//! when a leader sends one; `get_current_snapshot` to send ours.
//!
//! The node reads the state through an [`AcdReader`] and hears every applied routing entry
//! on the optional events channel ([`AppliedEntry`]). What the node must know about it:
//! - the proposer's `client_write` is answered before the entry goes on the channel, so the
//!   channel's consumer must not itself wait on `client_write` (the bounded channel would
//!   stall applying);
//! - after a restart, the committed entries after the stored snapshot are applied (and sent)
//!   again: the same indices arrive a second time, unless the node paused events around
//!   `Raft::new` ([`StateMachineStore::pause_events`]), as it must when the replay can be
//!   longer than its channel;
//! - after a snapshot install the channel skips the entries the snapshot covers: the node
//!   resynchronises from the reader;
//! - readers and clones share the store: the file is closed (and the channel's sender
//!   dropped) only when the last of them is.

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use carillon_routing::Acd;
use futures_util::StreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StoredMembership};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Mutex};

use crate::dedup::Dedup;
use crate::log_store::{blocking, db_err, decode, encode, StoreError, StoreIo};
use crate::types::{Applied, Proposal, TypeConfig};

/// What openraft streams between nodes for a snapshot: the postcard-encoded state, whole
/// in memory. The network sends it in bounded chunks and rebuilds the same bytes.
pub type SnapshotData = Cursor<Vec<u8>>;

type LogId = LogIdOf<TypeConfig>;
type Membership = StoredMembershipOf<TypeConfig>;
type SnapshotMeta = SnapshotMetaOf<TypeConfig>;
type Snapshot = SnapshotOf<TypeConfig, SnapshotData>;

/// The stored snapshot: one record, replaced whole.
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_snapshot");
const KEY_CURRENT: &str = "current";

/// The snapshot encoding this build writes and reads; bump it when [`SnapshotBody`]
/// changes shape (3: agents carry `located_at`; 4: the live blacklist, calls taken over
/// by a supervisor).
const SNAPSHOT_FORMAT: u32 = 4;

/// One applied routing entry, as the node hears it on the events channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedEntry {
    /// The Raft log index of the entry.
    pub index: u64,
    pub proposal: Proposal,
    pub applied: Applied,
}

/// The state the log builds: the ACD plus what openraft needs to resume from it.
struct SmState {
    acd: Acd,
    last_applied: Option<LogId>,
    last_membership: Membership,
    dedup: Dedup,
}

impl SmState {
    fn empty() -> Self {
        SmState {
            acd: Acd::new(),
            last_applied: None,
            last_membership: StoredMembership::default(),
            dedup: Dedup::default(),
        }
    }
}

/// A snapshot's bytes: written by reference, read owned.
#[derive(Serialize)]
struct SnapshotBodyRef<'a> {
    format: u32,
    last_applied: &'a Option<LogId>,
    last_membership: &'a Membership,
    acd: &'a Acd,
    dedup: &'a Dedup,
}

#[derive(Deserialize)]
struct SnapshotBody {
    /// Checked before the full decode, in [`SnapshotBody::decode`].
    _format: u32,
    last_applied: Option<LogId>,
    last_membership: Membership,
    acd: Acd,
    dedup: Dedup,
}

impl SnapshotBody {
    fn decode(bytes: &[u8]) -> Result<SnapshotBody, StoreError> {
        // The format number leads the encoding, so a body of another format is named as
        // such instead of failing somewhere in the middle.
        let (format, _) =
            postcard::take_from_bytes::<u32>(bytes).map_err(|source| StoreError::Decode {
                what: "snapshot",
                source,
            })?;
        if format != SNAPSHOT_FORMAT {
            return Err(StoreError::SnapshotFormat {
                found: format,
                expected: SNAPSHOT_FORMAT,
            });
        }
        decode("snapshot", bytes)
    }

    fn meta(&self) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
        }
    }
}

/// The latest snapshot, kept in memory beside its stored copy.
#[derive(Clone)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    bytes: Arc<Vec<u8>>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    io: StoreIo,
    state: RwLock<SmState>,
    /// Serialises snapshot writes (build and install) so the stored and cached copies
    /// never disagree; held across the disk write, hence tokio's mutex.
    snapshot: Mutex<Option<CurrentSnapshot>>,
    events: Option<mpsc::Sender<AppliedEntry>>,
    /// While set, applied entries are not sent on `events` (see [`StateMachineStore::pause_events`]).
    events_paused: AtomicBool,
    /// Entries applied while events were paused.
    events_skipped: AtomicU64,
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, SmState> {
        // A poisoned lock means an apply panicked; readers still get the last state so the
        // node can report it, while apply itself refuses to go on (see `apply_one`).
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `bytes` as the one stored snapshot.
    async fn store_snapshot(self: &Arc<Self>, bytes: Arc<Vec<u8>>) -> Result<(), StoreError> {
        let inner = Arc::clone(self);
        blocking(inner.io, move || {
            let txn = inner.db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(SNAPSHOT).map_err(db_err)?;
                table
                    .insert(KEY_CURRENT, bytes.as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }
}

/// The redb-backed ACD state machine. Cheap to clone: clones share one state.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("path", &self.inner.path)
            .field("last_applied", &self.inner.read().last_applied)
            .finish()
    }
}

impl StateMachineStore {
    /// Opens (or creates) the snapshot file at `path` and restores the latest stored
    /// snapshot, if any. Each applied routing entry is sent on `events` (the send awaits, so
    /// a slow reader slows applying rather than losing entries).
    pub fn open(
        path: &Path,
        events: Option<mpsc::Sender<AppliedEntry>>,
    ) -> Result<StateMachineStore, StoreError> {
        let db = Database::create(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        StateMachineStore::from_db(db, path, events, StoreIo::Blocking)
    }

    /// Opens the state machine on another redb backend (a simulator's in-memory disk),
    /// named `label` in errors, running its disk work as `io` says.
    pub fn open_backend(
        backend: impl redb::StorageBackend,
        label: &Path,
        events: Option<mpsc::Sender<AppliedEntry>>,
        io: StoreIo,
    ) -> Result<StateMachineStore, StoreError> {
        let db = Database::builder()
            .create_with_backend(backend)
            .map_err(|source| StoreError::Open {
                path: label.to_path_buf(),
                source,
            })?;
        StateMachineStore::from_db(db, label, events, io)
    }

    fn from_db(
        db: Database,
        path: &Path,
        events: Option<mpsc::Sender<AppliedEntry>>,
        io: StoreIo,
    ) -> Result<StateMachineStore, StoreError> {
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(SNAPSHOT).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;

        let stored = {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(SNAPSHOT).map_err(db_err)?;
            let bytes = table.get(KEY_CURRENT).map_err(db_err)?;
            bytes.map(|b| b.value().to_vec())
        };
        let (state, current) = match stored {
            Some(bytes) => {
                let body = SnapshotBody::decode(&bytes)?;
                let meta = body.meta();
                let state = SmState {
                    acd: body.acd,
                    last_applied: body.last_applied,
                    last_membership: body.last_membership,
                    dedup: body.dedup,
                };
                let current = CurrentSnapshot {
                    meta,
                    bytes: Arc::new(bytes),
                };
                (state, Some(current))
            }
            None => (SmState::empty(), None),
        };
        Ok(StateMachineStore {
            inner: Arc::new(Inner {
                db,
                path: path.to_path_buf(),
                io,
                state: RwLock::new(state),
                snapshot: Mutex::new(current),
                events,
                events_paused: AtomicBool::new(false),
                events_skipped: AtomicU64::new(0),
            }),
        })
    }

    /// Stops sending applied entries on the events channel until [`Self::resume_events`].
    ///
    /// For a restart: `Raft::new` replays the committed log after the stored snapshot before
    /// it returns, up to `snapshot_after_logs` entries, and nobody can drain the channel
    /// before then, so a replay longer than the channel would wait forever. Those entries
    /// are the previous run's; the node starts from the reader's state instead.
    pub fn pause_events(&self) {
        self.inner.events_paused.store(true, Ordering::Release);
    }

    /// Sends applied entries again; returns how many were applied while paused.
    pub fn resume_events(&self) -> u64 {
        self.inner.events_paused.store(false, Ordering::Release);
        self.inner.events_skipped.swap(0, Ordering::Relaxed)
    }

    /// The file this store keeps its snapshot in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A read-only view of the live state for the node.
    pub fn reader(&self) -> AcdReader {
        AcdReader {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Applies one entry; returns what to answer the proposer and, for a routing entry,
    /// what to tell the node.
    fn apply_one(
        &self,
        entry: <TypeConfig as openraft::RaftTypeConfig>::Entry,
    ) -> Result<(Applied, Option<AppliedEntry>), io::Error> {
        let mut state = self.inner.state.write().map_err(|_| {
            io::Error::other("the state machine lock is poisoned: an earlier apply panicked")
        })?;
        let log_id = entry.log_id;
        state.last_applied = Some(log_id);
        match entry.payload {
            EntryPayload::Blank => Ok((Applied::default(), None)),
            EntryPayload::Membership(membership) => {
                state.last_membership = StoredMembership::new(Some(log_id), membership);
                Ok((Applied::default(), None))
            }
            EntryPayload::Normal(proposal) => {
                let wanted = self.inner.events.is_some().then(|| proposal.clone());
                let (id, cmd) = match proposal {
                    Proposal::Routing(cmd) => (None, cmd),
                    Proposal::Once { id, command } => (Some(id), command),
                };
                if let Some(first) = id.as_ref().and_then(|id| state.dedup.seen(id)) {
                    // A repeat: answer as the first time; the node already heard its events.
                    let applied = Applied {
                        events: Vec::new(),
                        refused: first.clone(),
                    };
                    return Ok((applied, None));
                }
                let applied = match state.acd.apply(cmd) {
                    Ok(events) => Applied {
                        events,
                        refused: None,
                    },
                    Err(e) => Applied {
                        events: Vec::new(),
                        refused: Some(e.to_string()),
                    },
                };
                if let Some(id) = id {
                    state.dedup.record(id, applied.refused.clone());
                }
                let note = wanted.map(|proposal| AppliedEntry {
                    index: log_id.index,
                    proposal,
                    applied: applied.clone(),
                });
                Ok((applied, note))
            }
        }
    }

    /// Encodes the current state as a snapshot, under one read lock so the ACD and the
    /// log id it reflects agree.
    fn capture(&self) -> Result<CurrentSnapshot, StoreError> {
        let state = self.inner.read();
        let body = SnapshotBodyRef {
            format: SNAPSHOT_FORMAT,
            last_applied: &state.last_applied,
            last_membership: &state.last_membership,
            acd: &state.acd,
            dedup: &state.dedup,
        };
        let bytes = encode("snapshot", &body)?;
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.last_membership.clone(),
        };
        Ok(CurrentSnapshot {
            meta,
            bytes: Arc::new(bytes),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), io::Error> {
        let state = self.inner.read();
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let (applied, note) = self.apply_one(entry)?;
            // Answer the proposer first: it never waits on the events channel.
            if let Some(responder) = responder {
                responder.send(applied);
            }
            if let (Some(tx), Some(note)) = (&self.inner.events, note) {
                if self.inner.events_paused.load(Ordering::Acquire) {
                    self.inner.events_skipped.fetch_add(1, Ordering::Relaxed);
                } else if tx.send(note).await.is_err() {
                    tracing::debug!("applied-entry receiver is gone; entry not forwarded");
                }
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Encode now: the builder must reflect the state at this moment, even though
        // openraft runs it while later entries are being applied.
        SnapshotBuilder {
            store: self.clone(),
            captured: self.capture(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let bytes = snapshot.into_inner();
        let body = SnapshotBody::decode(&bytes)?;
        if body.last_applied != meta.last_log_id || body.last_membership != meta.last_membership {
            return Err(StoreError::SnapshotMetaMismatch.into());
        }
        let bytes = Arc::new(bytes);
        let mut current = self.inner.snapshot.lock().await;
        self.inner.store_snapshot(Arc::clone(&bytes)).await?;
        {
            let mut state = self.inner.state.write().map_err(|_| {
                io::Error::other("the state machine lock is poisoned: an earlier apply panicked")
            })?;
            *state = SmState {
                acd: body.acd,
                last_applied: body.last_applied,
                last_membership: body.last_membership,
                dedup: body.dedup,
            };
        }
        *current = Some(CurrentSnapshot {
            meta: meta.clone(),
            bytes,
        });
        tracing::info!(last_log_id = ?meta.last_log_id, "installed a snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let current = self.inner.snapshot.lock().await;
        Ok(current.as_ref().map(|c| Snapshot {
            meta: c.meta.clone(),
            snapshot: Cursor::new(c.bytes.as_ref().clone()),
        }))
    }
}

/// Builds one snapshot from the state captured when openraft asked for the builder.
pub struct SnapshotBuilder {
    store: StateMachineStore,
    captured: Result<CurrentSnapshot, StoreError>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let taken = std::mem::replace(&mut self.captured, Err(StoreError::SnapshotBuilderReused));
        let built = taken?;
        let inner = &self.store.inner;
        let mut current = inner.snapshot.lock().await;
        // Never replace a newer snapshot (one installed meanwhile) with this older one.
        let newer_exists = current
            .as_ref()
            .is_some_and(|c| c.meta.last_log_id > built.meta.last_log_id);
        if !newer_exists {
            inner.store_snapshot(Arc::clone(&built.bytes)).await?;
            *current = Some(built.clone());
        }
        tracing::debug!(last_log_id = ?built.meta.last_log_id, "built a snapshot");
        Ok(Snapshot {
            meta: built.meta,
            snapshot: Cursor::new(built.bytes.as_ref().clone()),
        })
    }
}

/// A cheap, cloneable read-only view of the replicated ACD, for the node.
#[derive(Clone)]
pub struct AcdReader {
    inner: Arc<Inner>,
}

impl AcdReader {
    /// Runs `f` on the current ACD. The state is locked for the call: keep `f` short and
    /// never await inside it.
    pub fn with_acd<T>(&self, f: impl FnOnce(&Acd) -> T) -> T {
        f(&self.inner.read().acd)
    }

    /// The log index of the last applied entry (`None` before the first).
    pub fn last_applied_index(&self) -> Option<u64> {
        self.inner.read().last_applied.map(|id| id.index)
    }

    /// The ACD's state hash: equal on replicas that applied the same entries.
    pub fn state_hash(&self) -> u64 {
        self.inner.read().acd.state_hash()
    }

    /// The last membership the state machine applied.
    pub fn last_membership(&self) -> Membership {
        self.inner.read().last_membership.clone()
    }
}
