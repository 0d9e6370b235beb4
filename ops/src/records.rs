//! Call detail records, the index of call recordings, and the store that keeps them.
//!
//! One [`Cdr`] per call that reached a node (answered, abandoned, lost, ...). Keys are the
//! arrival time then the call id, so a scan returns calls in arrival order and two calls
//! arriving in the same millisecond never collide.
//!
//! One [`RecordingEntry`] per recorded call, keyed the same way by the recording's start.
//! Two index tables, by agent and by caller number (each `(who, start, call id)`), let a
//! [`RecordingQuery`] that names an agent or a number read only that one's recordings;
//! every other filter (date range, queue, duration) is applied while scanning.

use std::path::Path;

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

/// Key: (arrived_at_ms, call_id). Value: the CDR as JSON (stable, readable, and tolerant of
/// added fields when an older node reads a newer record).
const CDRS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("cdrs");
/// Key: (start_ms, call_id). Value: the [`RecordingEntry`] as JSON.
const RECORDINGS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("recordings");
/// Key: (agent, start_ms, call_id); the entry itself lives in [`RECORDINGS`].
const RECORDINGS_BY_AGENT: TableDefinition<(&str, u64, &str), ()> =
    TableDefinition::new("recordings_by_agent");
/// Key: (caller number, start_ms, call_id).
const RECORDINGS_BY_CALLER: TableDefinition<(&str, u64, &str), ()> =
    TableDefinition::new("recordings_by_caller");

/// Largest number of recordings one search returns.
pub const RECORDING_SEARCH_LIMIT_MAX: usize = 100_000;

/// One call's record, written once when the call ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cdr {
    /// Carillon's own id for the call (unique in the cluster).
    pub call_id: String,
    /// The caller leg's SIP Call-ID, as the trunk sent it.
    pub sip_call_id: String,
    pub caller: String,
    pub dialled: String,
    pub queue: String,
    pub agent: Option<String>,
    pub arrived_at_ms: u64,
    pub offered_at_ms: Option<u64>,
    pub answered_at_ms: Option<u64>,
    pub ended_at_ms: u64,
    pub wait_ms: u64,
    /// `answered`, `abandoned`, `lost`.
    pub disposition: String,
    /// `caller`, `agent` or `system`.
    pub hangup_by: String,
    pub cause: Option<String>,
    pub offers: u32,
    /// Post-dial delay: microseconds from the caller's INVITE reaching the node to the
    /// first agent INVITE leaving it (none if no agent was ever rung).
    #[serde(default)]
    pub post_dial_us: Option<u64>,
    /// RTP packets the node relayed from the caller to the agent, and back.
    pub rtp_caller_to_agent: u64,
    pub rtp_agent_to_caller: u64,
    /// The node that owned the call.
    pub node: String,
    /// Time on hold, ms: held from either phone (re-INVITE) or through the API.
    #[serde(default)]
    pub hold_ms: u64,
    /// Who ended the call when it was not a party's phone: `api` (CallService.Hangup).
    #[serde(default)]
    pub ended_by: Option<String>,
    /// `inbound` (a trunk call) or `outbound` (click-to-dial).
    #[serde(default = "inbound")]
    pub direction: String,
    /// The last transfer of the call: by the API, blind (`queue:<name>`, `agent:<id>`,
    /// `number:<number>`), consulted (`consulted:<number>`), or the agent leaving a
    /// conference (`conference:<number>`); or an IVR flow's transfer step (`ivr:<number>`).
    #[serde(default)]
    pub transfer: Option<String>,
}

/// The direction of a record written before directions were recorded.
fn inbound() -> String {
    "inbound".into()
}

/// One call's recording: what it was, where the file is, how long and how big.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingEntry {
    pub call_id: String,
    pub agent: String,
    pub queue: String,
    /// The caller's number as the trunk sent it.
    pub caller: String,
    /// When recording began (the bridge), Unix ms.
    pub start_ms: u64,
    /// Audio in the file, ms.
    pub duration_ms: u64,
    /// The WAV file on the recording node.
    pub path: String,
    pub size_bytes: u64,
    /// The node that recorded it (the one holding the caller's media).
    pub node: String,
    /// Audio frames lost to a slow disk or arriving too late to place.
    #[serde(default)]
    pub frames_dropped: u64,
    /// True if the disk limit cut the recording short.
    #[serde(default)]
    pub paused: bool,
}

/// Which recordings a search wants. Every filter left `None` matches everything; bounds
/// are inclusive except `to_ms`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordingQuery {
    /// Started at or after (Unix ms).
    pub from_ms: Option<u64>,
    /// Started before (Unix ms).
    pub to_ms: Option<u64>,
    /// The caller's number, exactly.
    pub number: Option<String>,
    pub agent: Option<String>,
    pub queue: Option<String>,
    pub min_duration_ms: Option<u64>,
    pub max_duration_ms: Option<u64>,
    /// At most this many, oldest first.
    pub limit: usize,
}

impl RecordingQuery {
    /// Whether `entry` passes every filter.
    pub fn matches(&self, entry: &RecordingEntry) -> bool {
        let text = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        self.from_ms.is_none_or(|f| entry.start_ms >= f)
            && self.to_ms.is_none_or(|t| entry.start_ms < t)
            && text(&self.number, &entry.caller)
            && text(&self.agent, &entry.agent)
            && text(&self.queue, &entry.queue)
            && self.min_duration_ms.is_none_or(|m| entry.duration_ms >= m)
            && self.max_duration_ms.is_none_or(|m| entry.duration_ms <= m)
    }

    fn start_range(&self) -> (u64, u64) {
        (self.from_ms.unwrap_or(0), self.to_ms.unwrap_or(u64::MAX))
    }
}

/// What a search found: matches oldest first, and whether the limit cut it short.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordingSearch {
    pub recordings: Vec<RecordingEntry>,
    pub truncated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Box<redb::DatabaseError>,
    },
    #[error("record store: {0}")]
    Storage(String),
    #[error("record store: a stored CDR is not valid JSON: {0}")]
    Corrupt(#[from] serde_json::Error),
}

macro_rules! storage_err {
    ($($t:ty),*) => {$(
        impl From<$t> for RecordError {
            fn from(e: $t) -> Self {
                RecordError::Storage(e.to_string())
            }
        }
    )*};
}
storage_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Where call records live. Every backend keeps the same key order: arrival time, then id.
pub trait RecordStore: Send + Sync {
    fn put_cdr(&self, cdr: &Cdr) -> Result<(), RecordError>;
    /// Stores several CDRs at once: all or none (one transaction where the backend has
    /// them, so a batch costs one durable commit instead of one each).
    fn put_cdrs(&self, cdrs: &[Cdr]) -> Result<(), RecordError> {
        cdrs.iter().try_for_each(|cdr| self.put_cdr(cdr))
    }
    /// CDRs in arrival order, optionally only those that arrived at or after `since_ms`,
    /// at most `limit` of them.
    fn list_cdrs(&self, since_ms: u64, limit: usize) -> Result<Vec<Cdr>, RecordError>;
    /// Indexes one finished recording (a second put for the same start and call replaces
    /// the first).
    fn put_recording(&self, entry: &RecordingEntry) -> Result<(), RecordError>;
    /// Indexes several recordings at once: all or none where the backend has transactions.
    fn put_recordings(&self, entries: &[RecordingEntry]) -> Result<(), RecordError> {
        entries.iter().try_for_each(|e| self.put_recording(e))
    }
    /// Recordings matching `query`, oldest first, at most `query.limit` (clamped to
    /// [`RECORDING_SEARCH_LIMIT_MAX`]).
    fn search_recordings(&self, query: &RecordingQuery) -> Result<RecordingSearch, RecordError>;
}

/// The embedded default: one redb file in the node's data directory.
pub struct RedbRecordStore {
    db: Database,
}

impl RedbRecordStore {
    pub fn open(path: &Path) -> Result<Self, RecordError> {
        let db = Database::create(path).map_err(|e| RecordError::Open {
            path: path.display().to_string(),
            source: Box::new(e),
        })?;
        let txn = db.begin_write()?;
        txn.open_table(CDRS)?;
        txn.open_table(RECORDINGS)?;
        txn.open_table(RECORDINGS_BY_AGENT)?;
        txn.open_table(RECORDINGS_BY_CALLER)?;
        txn.commit()?;
        Ok(Self { db })
    }
}

impl RecordStore for RedbRecordStore {
    fn put_cdr(&self, cdr: &Cdr) -> Result<(), RecordError> {
        self.put_cdrs(std::slice::from_ref(cdr))
    }

    fn put_cdrs(&self, cdrs: &[Cdr]) -> Result<(), RecordError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(CDRS)?;
            for cdr in cdrs {
                let value = serde_json::to_vec(cdr)?;
                table.insert((cdr.arrived_at_ms, cdr.call_id.as_str()), value.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn list_cdrs(&self, since_ms: u64, limit: usize) -> Result<Vec<Cdr>, RecordError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CDRS)?;
        let mut out = Vec::new();
        for entry in table.range((since_ms, "")..)? {
            if out.len() >= limit {
                break;
            }
            let (_, value) = entry?;
            out.push(serde_json::from_slice(value.value())?);
        }
        Ok(out)
    }

    fn put_recording(&self, entry: &RecordingEntry) -> Result<(), RecordError> {
        self.put_recordings(std::slice::from_ref(entry))
    }

    fn put_recordings(&self, entries: &[RecordingEntry]) -> Result<(), RecordError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(RECORDINGS)?;
            let mut by_agent = txn.open_table(RECORDINGS_BY_AGENT)?;
            let mut by_caller = txn.open_table(RECORDINGS_BY_CALLER)?;
            for entry in entries {
                let value = serde_json::to_vec(entry)?;
                let id = entry.call_id.as_str();
                table.insert((entry.start_ms, id), value.as_slice())?;
                by_agent.insert((entry.agent.as_str(), entry.start_ms, id), ())?;
                by_caller.insert((entry.caller.as_str(), entry.start_ms, id), ())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn search_recordings(&self, query: &RecordingQuery) -> Result<RecordingSearch, RecordError> {
        let limit = query.limit.min(RECORDING_SEARCH_LIMIT_MAX);
        let (from, to) = query.start_range();
        let mut found = RecordingSearch::default();
        if from >= to {
            return Ok(found);
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECORDINGS)?;
        let take = |value: &[u8], found: &mut RecordingSearch| -> Result<bool, RecordError> {
            let entry: RecordingEntry = serde_json::from_slice(value)?;
            if !query.matches(&entry) {
                return Ok(true);
            }
            if found.recordings.len() >= limit {
                found.truncated = true;
                return Ok(false);
            }
            found.recordings.push(entry);
            Ok(true)
        };
        // A named number or agent reads only its own slice of an index, in start order.
        let index = match (&query.number, &query.agent) {
            (Some(n), _) => Some((RECORDINGS_BY_CALLER, n.as_str())),
            (None, Some(a)) => Some((RECORDINGS_BY_AGENT, a.as_str())),
            (None, None) => None,
        };
        if let Some((def, who)) = index {
            let index = txn.open_table(def)?;
            for key in index.range((who, from, "")..(who, to, ""))? {
                let (key, _) = key?;
                let (_, start, id) = key.value();
                let Some(value) = table.get((start, id))? else {
                    continue;
                };
                if !take(value.value(), &mut found)? {
                    break;
                }
            }
        } else {
            for entry in table.range((from, "")..(to, ""))? {
                let (_, value) = entry?;
                if !take(value.value(), &mut found)? {
                    break;
                }
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdr(id: &str, at: u64) -> Cdr {
        Cdr {
            call_id: id.into(),
            sip_call_id: format!("sip-{id}"),
            caller: "5551234".into(),
            dialled: "100".into(),
            queue: "support".into(),
            agent: Some("1001".into()),
            arrived_at_ms: at,
            offered_at_ms: Some(at + 5),
            answered_at_ms: Some(at + 900),
            ended_at_ms: at + 5000,
            wait_ms: 900,
            disposition: "answered".into(),
            hangup_by: "caller".into(),
            cause: None,
            offers: 1,
            post_dial_us: Some(850),
            rtp_caller_to_agent: 200,
            rtp_agent_to_caller: 199,
            node: "n1".into(),
            hold_ms: 0,
            ended_by: None,
            direction: "inbound".into(),
            transfer: None,
        }
    }

    #[test]
    fn cdrs_come_back_in_arrival_order_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("records.redb");
        {
            let store = RedbRecordStore::open(&path).expect("open");
            store.put_cdr(&cdr("b", 20)).expect("put");
            // A batch lands in the same order as single puts.
            store
                .put_cdrs(&[cdr("a", 10), cdr("c", 20)])
                .expect("put a batch");
        }
        let store = RedbRecordStore::open(&path).expect("reopen");
        let all = store.list_cdrs(0, 100).expect("list");
        let ids: Vec<_> = all.iter().map(|c| c.call_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(all[0], cdr("a", 10));
        assert_eq!(store.list_cdrs(15, 100).expect("list").len(), 2);
        assert_eq!(store.list_cdrs(0, 1).expect("list").len(), 1);
    }

    fn rec(
        id: &str,
        start: u64,
        agent: &str,
        caller: &str,
        queue: &str,
        secs: u64,
    ) -> RecordingEntry {
        RecordingEntry {
            call_id: id.into(),
            agent: agent.into(),
            queue: queue.into(),
            caller: caller.into(),
            start_ms: start,
            duration_ms: secs * 1000,
            path: format!("/rec/{start}-{id}.wav"),
            size_bytes: secs * 32_000 + 44,
            node: "n1".into(),
            frames_dropped: 0,
            paused: false,
        }
    }

    fn ids(found: &RecordingSearch) -> Vec<&str> {
        found
            .recordings
            .iter()
            .map(|r| r.call_id.as_str())
            .collect()
    }

    #[test]
    fn recordings_are_found_by_every_filter_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("records.redb");
        {
            let store = RedbRecordStore::open(&path).expect("open");
            store
                .put_recording(&rec("c", 3_000, "1002", "555", "sales", 60))
                .expect("put");
            store
                .put_recording(&rec("a", 1_000, "1001", "555", "support", 10))
                .expect("put");
            store
                .put_recording(&rec("b", 2_000, "1001", "777", "support", 30))
                .expect("put");
            store
                .put_recording(&rec("d", 4_000, "1001", "555", "support", 5))
                .expect("put");
        }
        let store = RedbRecordStore::open(&path).expect("reopen");
        let q = |f: &dyn Fn(&mut RecordingQuery)| {
            let mut query = RecordingQuery {
                limit: 100,
                ..Default::default()
            };
            f(&mut query);
            store.search_recordings(&query).expect("search")
        };
        assert_eq!(ids(&q(&|_| {})), ["a", "b", "c", "d"]);
        assert_eq!(
            q(&|_| {}).recordings[0],
            rec("a", 1_000, "1001", "555", "support", 10)
        );
        assert_eq!(ids(&q(&|q| q.from_ms = Some(2_000))), ["b", "c", "d"]);
        assert_eq!(ids(&q(&|q| q.to_ms = Some(3_000))), ["a", "b"]);
        let window = q(&|q| {
            q.from_ms = Some(1_500);
            q.to_ms = Some(3_500);
        });
        assert_eq!(ids(&window), ["b", "c"]);
        assert_eq!(ids(&q(&|q| q.number = Some("555".into()))), ["a", "c", "d"]);
        assert_eq!(ids(&q(&|q| q.agent = Some("1001".into()))), ["a", "b", "d"]);
        assert_eq!(ids(&q(&|q| q.queue = Some("sales".into()))), ["c"]);
        assert_eq!(ids(&q(&|q| q.min_duration_ms = Some(30_000))), ["b", "c"]);
        assert_eq!(ids(&q(&|q| q.max_duration_ms = Some(10_000))), ["a", "d"]);
        let both = q(&|q| {
            q.number = Some("555".into());
            q.agent = Some("1001".into());
            q.from_ms = Some(2_000);
        });
        assert_eq!(ids(&both), ["d"]);
        assert!(q(&|q| q.agent = Some("9999".into())).recordings.is_empty());
        assert!(q(&|q| {
            q.from_ms = Some(5_000);
            q.to_ms = Some(1_000);
        })
        .recordings
        .is_empty());
        let cut = q(&|q| q.limit = 2);
        assert_eq!(ids(&cut), ["a", "b"]);
        assert!(cut.truncated);
        assert!(!q(&|q| q.limit = 4).truncated);
    }
}
