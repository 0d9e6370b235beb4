//! Voicemail mailboxes on disk: each message is `<data_dir>/voicemail/<mailbox>/<call id>.wav`
//! (mono, 8 kHz, 16-bit) beside `<call id>.json`, its sidecar (caller, queue, start,
//! duration). The sidecar is written last, so a listed message always has its audio.
//!
//! Taking the message (greeting, beep, recording the caller) is the call task's job
//! (`call::voicemail`); this module only stores and lists. Mailbox names come from config,
//! which keeps them to plain file names; they are checked again here because a path is
//! built from them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Messages listed at most per request (newest kept).
pub const LIST_MAX: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum VoicemailError {
    #[error("mailbox `{0}` is not a plain name (letters, digits, `-`, `_`, `.`)")]
    BadMailbox(String),
    #[error("voicemail store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "voicemail store: the mailboxes hold {used_bytes} bytes, at the limit of {limit_bytes}"
    )]
    Full { used_bytes: u64, limit_bytes: u64 },
}

/// One stored message, as its sidecar holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub call_id: String,
    pub mailbox: String,
    pub caller: String,
    pub dialled: String,
    pub queue: String,
    /// When recording began, Unix ms.
    pub start_ms: u64,
    pub duration_ms: u64,
    /// The WAV file's name within the mailbox directory.
    pub file: String,
}

/// The mailboxes under one node's data directory.
#[derive(Clone, Debug)]
pub struct Mailboxes {
    root: PathBuf,
}

impl Mailboxes {
    pub fn new(data_dir: &Path) -> Mailboxes {
        Mailboxes {
            root: data_dir.join("voicemail"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the recorder writes while a message is being taken (not a mailbox: mailbox
    /// names never start with `.`).
    pub fn incoming_dir(&self) -> PathBuf {
        self.root.join(".incoming")
    }

    /// The path of a message's WAV file.
    pub fn wav_path(&self, mailbox: &str, call_id: &str) -> Result<PathBuf, VoicemailError> {
        Ok(self
            .mailbox_dir(mailbox)?
            .join(format!("{}.wav", file_stem(call_id))))
    }

    /// Refuses a new message when the mailboxes already hold `limit_bytes`.
    pub fn check_space(&self, limit_bytes: u64) -> Result<(), VoicemailError> {
        let used_bytes = dir_bytes(&self.root);
        if used_bytes >= limit_bytes {
            return Err(VoicemailError::Full {
                used_bytes,
                limit_bytes,
            });
        }
        Ok(())
    }

    /// Stores a message: `samples` (mono, 8 kHz) as the WAV, then the sidecar. Returns the
    /// WAV's path.
    pub fn write(&self, msg: &Message, samples: &[i16]) -> Result<PathBuf, VoicemailError> {
        let dir = self.mailbox_dir(&msg.mailbox)?;
        std::fs::create_dir_all(&dir).map_err(|source| io(&dir, source))?;
        let stem = file_stem(&msg.call_id);
        let wav = dir.join(format!("{stem}.wav"));
        std::fs::write(&wav, carillon_media::wav::encode_pcm16(samples))
            .map_err(|source| io(&wav, source))?;
        let mut msg = msg.clone();
        msg.file = format!("{stem}.wav");
        let json = dir.join(format!("{stem}.json"));
        // A Message is plain strings and numbers, which always serialise.
        let text = serde_json::to_vec_pretty(&msg).unwrap_or_default();
        std::fs::write(&json, text).map_err(|source| io(&json, source))?;
        Ok(wav)
    }

    /// Messages, oldest first, from one mailbox or all of them; at most [`LIST_MAX`] (the
    /// newest). A sidecar that cannot be read is skipped with a warning.
    pub fn list(&self, mailbox: Option<&str>) -> Result<Vec<Message>, VoicemailError> {
        let dirs: Vec<PathBuf> = match mailbox {
            Some(m) => vec![self.mailbox_dir(m)?],
            None => match std::fs::read_dir(&self.root) {
                Ok(entries) => entries
                    .filter_map(Result::ok)
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(source) => return Err(io(&self.root, source)),
            },
        };
        let mut out = Vec::new();
        for dir in dirs {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(io(&dir, source)),
            };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let parsed = std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice::<Message>(&b).map_err(|e| e.to_string()));
                match parsed {
                    Ok(m) => out.push(m),
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "unreadable voicemail sidecar skipped")
                    }
                }
            }
        }
        out.sort_by(|a, b| (a.start_ms, &a.call_id).cmp(&(b.start_ms, &b.call_id)));
        let extra = out.len().saturating_sub(LIST_MAX);
        out.drain(..extra);
        Ok(out)
    }

    fn mailbox_dir(&self, mailbox: &str) -> Result<PathBuf, VoicemailError> {
        let plain = !mailbox.is_empty()
            && mailbox.len() <= 64
            && !mailbox.starts_with('.')
            && mailbox
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !plain {
            return Err(VoicemailError::BadMailbox(mailbox.to_string()));
        }
        Ok(self.root.join(mailbox))
    }
}

/// A call id as a file name (our ids are already plain; anything else is replaced).
fn file_stem(call_id: &str) -> String {
    let stem: String = call_id
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if stem.is_empty() {
        "message".into()
    } else {
        stem
    }
}

/// Bytes under `dir`, one level of mailboxes deep (missing: 0).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => std::fs::read_dir(e.path())
                .map(|inner| {
                    inner
                        .filter_map(Result::ok)
                        .filter_map(|f| f.metadata().ok())
                        .map(|m| m.len())
                        .sum::<u64>()
                })
                .unwrap_or(0),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn io(path: &Path, source: std::io::Error) -> VoicemailError {
    VoicemailError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(call: &str, mailbox: &str, start_ms: u64) -> Message {
        Message {
            call_id: call.into(),
            mailbox: mailbox.into(),
            caller: "5551000".into(),
            dialled: "100".into(),
            queue: "support".into(),
            start_ms,
            duration_ms: 1000,
            file: String::new(),
        }
    }

    #[test]
    fn writes_and_lists_messages_by_mailbox() {
        let dir = tempfile::tempdir().expect("temp dir");
        let boxes = Mailboxes::new(dir.path());
        assert!(boxes.list(None).expect("empty store").is_empty());
        let wav = boxes
            .write(&message("n1-a-2", "support", 20), &[0i16; 8000])
            .expect("write");
        assert_eq!(wav, boxes.wav_path("support", "n1-a-2").expect("path"));
        let samples = carillon_media::wav::read(&wav).expect("a valid WAV");
        assert_eq!(samples.len(), 8000);
        boxes
            .write(&message("n1-a-1", "sales", 10), &[0i16; 80])
            .expect("write");
        let all = boxes.list(None).expect("list");
        let ids: Vec<&str> = all.iter().map(|m| m.call_id.as_str()).collect();
        assert_eq!(ids, ["n1-a-1", "n1-a-2"]);
        assert_eq!(all[1].file, "n1-a-2.wav");
        let sales = boxes.list(Some("sales")).expect("list");
        assert_eq!(sales.len(), 1);
        assert!(boxes.list(Some("nobody")).expect("missing box").is_empty());
        assert!(matches!(
            boxes.list(Some("../etc")),
            Err(VoicemailError::BadMailbox(_))
        ));
        assert!(boxes.check_space(1).is_err());
        assert!(boxes.check_space(1 << 30).is_ok());
    }
}
