//! Call records and the recording index leave the call tasks through one writer thread.
//!
//! A call task used to store its CDR itself: a redb write transaction with a durable commit
//! (an fsync) on a tokio worker thread, one per call, and one more per recording to index
//! it. At a few hundred calls per second that blocked the workers for a good part of every
//! second, and redb's single writer made the other worker wait for the lock too, so every
//! call on the node stalled behind the disk.
//!
//! Now a call hands its record (and its recording's entry) to a bounded queue and goes on;
//! a dedicated thread takes whatever is queued (up to [`BATCH_MAX`]) and stores it with one
//! transaction per kind, so a busy second costs a handful of commits. Only a full queue
//! (the disk far behind) makes a call task wait; a record is never dropped. A record that
//! cannot be stored is logged with its call id and counted
//! (`carillon_record_store_errors_total{kind}`). Records still queued when the process is
//! killed are lost: at most a batch, a few milliseconds of calls.

use std::sync::Arc;

use carillon_media::RecordingMeta;
use carillon_ops::records::{Cdr, RecordStore, RecordingEntry};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

/// Records that may wait for the writer before they wait in tasks of their own.
pub const QUEUE_DEPTH_MAX: usize = 4096;
/// Records of one kind stored in one transaction.
pub const BATCH_MAX: usize = 256;

enum Job {
    Cdr(Box<Cdr>),
    /// A finished recording of this node, to index (its size is read here, off the runtime).
    Recording(Box<RecordingMeta>, String),
    /// Answers once everything queued before it is stored (or failed).
    Flush(oneshot::Sender<()>),
}

/// The sending side of the writer; cheap to clone.
#[derive(Clone)]
pub struct RecordWriter {
    jobs: mpsc::Sender<Job>,
}

impl RecordWriter {
    /// Starts the writer thread on `store`. The thread ends when every `RecordWriter` clone is
    /// dropped, after storing what was queued.
    pub fn start(store: Arc<dyn RecordStore>) -> std::io::Result<RecordWriter> {
        let (jobs, receiver) = mpsc::channel(QUEUE_DEPTH_MAX);
        std::thread::Builder::new()
            .name("record-writer".into())
            .spawn(move || write_loop(store.as_ref(), receiver))?;
        Ok(RecordWriter { jobs })
    }

    /// Queues one call record; waits only while the queue is full (see
    /// [`RecordWriter::queue`]).
    pub async fn store(&self, cdr: Cdr) {
        let call = cdr.call_id.clone();
        self.queue(Job::Cdr(Box::new(cdr)), call, "cdr").await;
    }

    /// Queues a finished recording of node `node` for the index.
    pub async fn index_recording(&self, meta: RecordingMeta, node: String) {
        let call = meta.call_id.clone();
        self.queue(Job::Recording(Box::new(meta), node), call, "recording")
            .await;
    }

    /// Queues a job. A full queue (the disk is behind) makes the caller wait, counted in
    /// `carillon_record_queue_full_total`: nothing is dropped, and the waiting call tasks
    /// still count against the node's call limit, so admission control sheds new calls
    /// instead of records piling up without bound.
    async fn queue(&self, job: Job, call: String, kind: &'static str) {
        let job = match self.jobs.try_send(job) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(job)) => job,
            Err(mpsc::error::TrySendError::Closed(_)) => return lost(&call, kind),
        };
        metrics::counter!("carillon_record_queue_full_total").increment(1);
        if self.jobs.send(job).await.is_err() {
            lost(&call, kind);
        }
    }

    /// Waits until every record queued so far is stored.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.jobs.send(Job::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Only after the writer thread died (it logged why).
fn lost(call: &str, kind: &'static str) {
    error!(%call, kind, "record lost: the record writer has stopped");
    metrics::counter!("carillon_record_store_errors_total", "kind" => kind).increment(1);
}

fn write_loop(store: &dyn RecordStore, mut jobs: mpsc::Receiver<Job>) {
    let mut cdrs: Vec<Cdr> = Vec::with_capacity(BATCH_MAX);
    let mut recordings: Vec<RecordingEntry> = Vec::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = jobs.blocking_recv() {
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Cdr(cdr) => cdrs.push(*cdr),
                Job::Recording(meta, node) => recordings.push(entry(*meta, node)),
                Job::Flush(done) => flushes.push(done),
            }
            if cdrs.len() < BATCH_MAX && recordings.len() < BATCH_MAX {
                next = jobs.try_recv().ok();
            }
        }
        if !cdrs.is_empty() {
            store_cdrs(store, &cdrs);
            cdrs.clear();
        }
        if !recordings.is_empty() {
            store_recordings(store, &recordings);
            recordings.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// The index entry of a finished recording; the size is the file's on disk, header
/// included (a file that vanished indexes as 0 bytes).
fn entry(meta: RecordingMeta, node: String) -> RecordingEntry {
    let size_bytes = std::fs::metadata(&meta.path).map(|m| m.len()).unwrap_or(0);
    RecordingEntry {
        call_id: meta.call_id,
        agent: meta.agent,
        queue: meta.queue,
        caller: meta.caller,
        start_ms: meta.start_unix_ms,
        duration_ms: meta.duration_ms,
        path: meta.path.display().to_string(),
        size_bytes,
        node,
        frames_dropped: meta.frames_dropped,
        paused: meta.paused,
    }
}

fn store_cdrs(store: &dyn RecordStore, batch: &[Cdr]) {
    match store.put_cdrs(batch) {
        Ok(()) => {
            metrics::counter!("carillon_cdrs_stored_total").increment(batch.len() as u64);
        }
        Err(e) if batch.len() > 1 => {
            // One bad record must not cost the others: store them one by one.
            warn!(error = %e, records = batch.len(), "a batch of call records failed; storing them one by one");
            for cdr in batch {
                store_cdrs(store, std::slice::from_ref(cdr));
            }
        }
        Err(e) => {
            let call = batch.first().map(|c| c.call_id.as_str()).unwrap_or("-");
            error!(%call, error = %e, "could not store the call record");
            metrics::counter!("carillon_record_store_errors_total", "kind" => "cdr").increment(1);
        }
    }
}

fn store_recordings(store: &dyn RecordStore, batch: &[RecordingEntry]) {
    match store.put_recordings(batch) {
        Ok(()) => {
            metrics::counter!("carillon_recordings_indexed_total").increment(batch.len() as u64);
            for e in batch {
                info!(call = %e.call_id, duration_ms = e.duration_ms, size_bytes = e.size_bytes, path = %e.path, paused = e.paused, "recording stored");
            }
        }
        Err(e) if batch.len() > 1 => {
            warn!(error = %e, entries = batch.len(), "a batch of recording entries failed; storing them one by one");
            for entry in batch {
                store_recordings(store, std::slice::from_ref(entry));
            }
        }
        Err(e) => {
            let call = batch.first().map(|r| r.call_id.as_str()).unwrap_or("-");
            error!(%call, error = %e, "could not index the recording");
            metrics::counter!("carillon_record_store_errors_total", "kind" => "recording")
                .increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carillon_ops::records::RedbRecordStore;

    fn cdr(id: &str, at: u64) -> Cdr {
        serde_json::from_value(serde_json::json!({
            "call_id": id, "sip_call_id": id, "caller": "555", "dialled": "100",
            "queue": "support", "agent": null, "arrived_at_ms": at, "offered_at_ms": null,
            "answered_at_ms": null, "ended_at_ms": at + 1, "wait_ms": 1,
            "disposition": "abandoned", "hangup_by": "caller", "cause": null, "offers": 0,
            "rtp_caller_to_agent": 0, "rtp_agent_to_caller": 0, "node": "n1"
        }))
        .expect("a valid CDR")
    }

    #[tokio::test]
    async fn queued_records_are_all_stored_by_flush_time_even_past_the_queue_depth() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn RecordStore> =
            Arc::new(RedbRecordStore::open(&dir.path().join("r.redb")).expect("open"));
        let writer = RecordWriter::start(Arc::clone(&store)).expect("writer thread");
        // More than one batch, queued faster than they are stored.
        let n = QUEUE_DEPTH_MAX as u64 + BATCH_MAX as u64 * 2 + 7;
        for i in 0..n {
            writer.store(cdr(&format!("c{i:04}"), 1_000 + i)).await;
        }
        writer.flush().await;
        let all = store.list_cdrs(0, usize::MAX).expect("list");
        assert_eq!(all.len() as u64, n);
        assert_eq!(all[0].call_id, "c0000");
        assert_eq!(all[all.len() - 1].call_id, format!("c{:04}", n - 1));
    }
}
