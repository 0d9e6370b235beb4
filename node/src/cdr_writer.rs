//! Call records leave the call tasks through one writer thread.
//!
//! A call task used to store its CDR itself: a redb write transaction with a durable commit
//! (an fsync) on a tokio worker thread, one per call. At a few hundred calls per second that
//! blocked the workers for a good part of every second, and redb's single writer made the
//! other worker wait for the lock too, so every call on the node stalled behind the disk.
//!
//! Now a call hands its record to a bounded queue and goes on; a dedicated thread takes
//! whatever is queued (up to [`CDR_BATCH_MAX`]) and stores it in one transaction, so a busy
//! second costs a handful of commits. A full queue makes the call task wait (it never drops
//! a record); a record that cannot be stored is logged with its call id and counted
//! (`carillon_cdr_store_errors_total`). Records still queued when the process is killed are
//! lost: at most one batch, a few milliseconds of calls.

use std::sync::Arc;

use carillon_ops::records::{Cdr, RecordStore};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

/// Records that may wait for the writer before call tasks wait for it.
pub const CDR_QUEUE_DEPTH_MAX: usize = 4096;
/// Records stored in one transaction.
pub const CDR_BATCH_MAX: usize = 256;

enum Job {
    Store(Box<Cdr>),
    /// Answers once everything queued before it is stored (or failed).
    Flush(oneshot::Sender<()>),
}

/// The sending side of the writer; cheap to clone.
#[derive(Clone)]
pub struct CdrWriter {
    jobs: mpsc::Sender<Job>,
}

impl CdrWriter {
    /// Starts the writer thread on `store`. The thread ends when every `CdrWriter` clone is
    /// dropped, after storing what was queued.
    pub fn start(store: Arc<dyn RecordStore>) -> std::io::Result<CdrWriter> {
        let (jobs, receiver) = mpsc::channel(CDR_QUEUE_DEPTH_MAX);
        std::thread::Builder::new()
            .name("cdr-writer".into())
            .spawn(move || write_loop(store.as_ref(), receiver))?;
        Ok(CdrWriter { jobs })
    }

    /// Queues one record without waiting. When the queue is full the record waits in a
    /// task of its own for room (counted in `carillon_cdr_queue_full_total`): a record is
    /// never dropped, and the call task is never held up by the disk. Must run inside the
    /// tokio runtime.
    pub fn store(&self, cdr: Cdr) {
        let call = cdr.call_id.clone();
        match self.jobs.try_send(Job::Store(Box::new(cdr))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                metrics::counter!("carillon_cdr_queue_full_total").increment(1);
                let jobs = self.jobs.clone();
                tokio::spawn(async move {
                    if jobs.send(job).await.is_err() {
                        lost(&call);
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => lost(&call),
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
fn lost(call: &str) {
    error!(%call, "call record lost: the record writer has stopped");
    metrics::counter!("carillon_cdr_store_errors_total").increment(1);
}

fn write_loop(store: &dyn RecordStore, mut jobs: mpsc::Receiver<Job>) {
    let mut batch: Vec<Cdr> = Vec::with_capacity(CDR_BATCH_MAX);
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = jobs.blocking_recv() {
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Store(cdr) => batch.push(*cdr),
                Job::Flush(done) => flushes.push(done),
            }
            if batch.len() < CDR_BATCH_MAX {
                next = jobs.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            store_batch(store, &batch);
            batch.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

fn store_batch(store: &dyn RecordStore, batch: &[Cdr]) {
    match store.put_cdrs(batch) {
        Ok(()) => {
            metrics::counter!("carillon_cdrs_stored_total").increment(batch.len() as u64);
        }
        Err(e) if batch.len() > 1 => {
            // One bad record must not cost the others: store them one by one.
            warn!(error = %e, records = batch.len(), "a batch of call records failed; storing them one by one");
            for cdr in batch {
                store_batch(store, std::slice::from_ref(cdr));
            }
        }
        Err(e) => {
            let call = batch.first().map(|c| c.call_id.as_str()).unwrap_or("-");
            error!(%call, error = %e, "could not store the call record");
            metrics::counter!("carillon_cdr_store_errors_total").increment(1);
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
        let writer = CdrWriter::start(Arc::clone(&store)).expect("writer thread");
        // More than one batch, queued faster than they are stored.
        let n = CDR_QUEUE_DEPTH_MAX as u64 + CDR_BATCH_MAX as u64 * 2 + 7;
        for i in 0..n {
            writer.store(cdr(&format!("c{i:04}"), 1_000 + i));
        }
        writer.flush().await;
        let all = store.list_cdrs(0, usize::MAX).expect("list");
        assert_eq!(all.len() as u64, n);
        assert_eq!(all[0].call_id, "c0000");
        assert_eq!(all[all.len() - 1].call_id, format!("c{:04}", n - 1));
    }
}
