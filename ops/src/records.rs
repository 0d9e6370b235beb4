//! Call detail records and the store that keeps them.
//!
//! One [`Cdr`] per call that reached a node (answered, abandoned, lost, ...). Keys are the
//! arrival time then the call id, so a scan returns calls in arrival order and two calls
//! arriving in the same millisecond never collide.

use std::path::Path;

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

/// Key: (arrived_at_ms, call_id). Value: the CDR as JSON (stable, readable, and tolerant of
/// added fields when an older node reads a newer record).
const CDRS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("cdrs");

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
    /// CDRs in arrival order, optionally only those that arrived at or after `since_ms`,
    /// at most `limit` of them.
    fn list_cdrs(&self, since_ms: u64, limit: usize) -> Result<Vec<Cdr>, RecordError>;
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
        txn.commit()?;
        Ok(Self { db })
    }
}

impl RecordStore for RedbRecordStore {
    fn put_cdr(&self, cdr: &Cdr) -> Result<(), RecordError> {
        let value = serde_json::to_vec(cdr)?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(CDRS)?;
            table.insert((cdr.arrived_at_ms, cdr.call_id.as_str()), value.as_slice())?;
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
        }
    }

    #[test]
    fn cdrs_come_back_in_arrival_order_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("records.redb");
        {
            let store = RedbRecordStore::open(&path).expect("open");
            store.put_cdr(&cdr("b", 20)).expect("put");
            store.put_cdr(&cdr("a", 10)).expect("put");
            store.put_cdr(&cdr("c", 20)).expect("put");
        }
        let store = RedbRecordStore::open(&path).expect("reopen");
        let all = store.list_cdrs(0, 100).expect("list");
        let ids: Vec<_> = all.iter().map(|c| c.call_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(all[0], cdr("a", 10));
        assert_eq!(store.list_cdrs(15, 100).expect("list").len(), 2);
        assert_eq!(store.list_cdrs(0, 1).expect("list").len(), 1);
    }
}
