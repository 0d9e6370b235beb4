//! The audit log: every refused or sensitive API action, one JSON object per line in an
//! append-only file in the node's data directory.
//!
//! JSON lines rather than a database table because an auditor reads it with `grep` and
//! `jq` as well as through the API, and appending never rewrites what is there. Time is
//! passed in by the caller. Reading is bounded: a query returns at most
//! [`AUDIT_PAGE_MAX`] entries, and lines longer than [`AUDIT_LINE_MAX_BYTES`] are skipped.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read as _, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Most entries one query returns.
pub const AUDIT_PAGE_MAX: usize = 100_000;
/// Longest line read back; our own lines stay far below it (details are truncated).
pub const AUDIT_LINE_MAX_BYTES: usize = 16 * 1024;
/// Longest detail text kept in an entry, in characters.
pub const AUDIT_DETAIL_MAX_CHARS: usize = 1024;

/// One audited action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: u64,
    pub principal: String,
    pub role: String,
    pub action: String,
    pub target: String,
    /// `allowed`, `refused` or `failed`.
    pub outcome: String,
    pub detail: String,
    pub peer: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The append-only audit file.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (creating) `path` for appending.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| AuditError::Io {
                path: path.display().to_string(),
                source,
            })?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry as a line (flushed before returning).
    pub fn append(&self, mut entry: AuditEntry) -> Result<(), AuditError> {
        if entry.detail.chars().count() > AUDIT_DETAIL_MAX_CHARS {
            entry.detail = entry.detail.chars().take(AUDIT_DETAIL_MAX_CHARS).collect();
        }
        // Serialising a struct of strings and integers cannot fail.
        let mut line = serde_json::to_string(&entry).unwrap_or_default();
        line.push('\n');
        // A panic while holding the lock leaves the file as it was; keep appending.
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(line.as_bytes())
            .and_then(|()| file.flush())
            .map_err(|source| AuditError::Io {
                path: self.path.display().to_string(),
                source,
            })
    }

    /// Entries at or after `since_ms`, oldest first; the newest `limit` of them when
    /// there are more.
    pub fn list(&self, since_ms: u64, limit: usize) -> Result<Vec<AuditEntry>, AuditError> {
        let limit = limit.min(AUDIT_PAGE_MAX);
        let io = |source| AuditError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let file = File::open(&self.path).map_err(io)?;
        let mut reader = BufReader::new(file);
        let mut out = std::collections::VecDeque::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut reader)
                .take(AUDIT_LINE_MAX_BYTES as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(io)?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') && n > AUDIT_LINE_MAX_BYTES {
                // An overlong line: skip the rest of it.
                let mut rest = Vec::new();
                reader.read_until(b'\n', &mut rest).map_err(io)?;
                continue;
            }
            let Ok(entry) = serde_json::from_slice::<AuditEntry>(&line) else {
                continue;
            };
            if entry.at_ms < since_ms {
                continue;
            }
            out.push_back(entry);
            if out.len() > limit {
                out.pop_front();
            }
        }
        Ok(out.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at_ms: u64, outcome: &str) -> AuditEntry {
        AuditEntry {
            at_ms,
            principal: "ops".into(),
            role: "admin".into(),
            action: "AdminService.SetQueue".into(),
            target: "support".into(),
            outcome: outcome.into(),
            detail: "x".repeat(AUDIT_DETAIL_MAX_CHARS + 10),
            peer: "127.0.0.1:5000".into(),
        }
    }

    #[test]
    fn appends_and_reads_back_bounded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).expect("open");
        for i in 0..5 {
            log.append(entry(i, "allowed")).expect("append");
        }
        // A torn or foreign line is skipped, not fatal.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"not json\n"))
            .expect("garbage line");
        log.append(entry(9, "refused")).expect("append");
        let all = log.list(0, 100).expect("list");
        assert_eq!(all.len(), 6);
        assert_eq!(all[0].detail.chars().count(), AUDIT_DETAIL_MAX_CHARS);
        let newest = log.list(2, 2).expect("list");
        assert_eq!(
            newest.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            vec![4, 9]
        );
        // Reopening appends after what is there.
        drop(log);
        let log = AuditLog::open(&path).expect("reopen");
        log.append(entry(10, "allowed")).expect("append");
        assert_eq!(log.list(0, 100).expect("list").len(), 7);
    }
}
