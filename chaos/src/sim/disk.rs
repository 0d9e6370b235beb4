//! A simulated disk: a redb storage backend in memory that knows which of its writes were
//! synced, so a crash can keep them all or only the synced ones.
//!
//! Each opening of a store gets a handle of the disk's current generation; a crash moves
//! the generation on, and writes from an older handle (a dead process's store still being
//! dropped) are ignored, as a dead process writes nothing.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// One node's disk for one store.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
}

#[derive(Debug, Default)]
struct DiskState {
    /// What reads see.
    live: Vec<u8>,
    /// The bytes as of the last sync.
    synced: Vec<u8>,
    /// Writes since the last sync, in order: `(offset, bytes)`; a length change is a write
    /// of `None`.
    unsynced: Vec<(u64, Option<Vec<u8>>)>,
    generation: u64,
}

impl SimDisk {
    fn lock(&self) -> MutexGuard<'_, DiskState> {
        // A panic while holding the lock ends the simulation anyway; the bytes stay usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A backend for one opening of a store.
    pub fn handle(&self) -> DiskHandle {
        DiskHandle {
            disk: self.clone(),
            generation: self.lock().generation,
        }
    }

    /// The process died: handles opened before now write nothing more. With
    /// `lose_unsynced`, the bytes go back to the last sync.
    pub fn crash(&self, lose_unsynced: bool) -> usize {
        let mut s = self.lock();
        s.generation += 1;
        let lost = s.unsynced.len();
        if lose_unsynced {
            s.live = s.synced.clone();
        } else {
            s.synced = s.live.clone();
        }
        s.unsynced.clear();
        if lose_unsynced {
            lost
        } else {
            0
        }
    }
}

/// A [`SimDisk`] as one store opening sees it.
#[derive(Debug)]
pub struct DiskHandle {
    disk: SimDisk,
    generation: u64,
}

impl DiskHandle {
    fn current(&self) -> Option<MutexGuard<'_, DiskState>> {
        let s = self.disk.lock();
        (s.generation == self.generation).then_some(s)
    }
}

fn set_len(buf: &mut Vec<u8>, len: u64) -> io::Result<()> {
    let len = usize::try_from(len).map_err(|_| io::Error::other("simulated disk too large"))?;
    buf.resize(len, 0);
    Ok(())
}

fn write_at(buf: &mut Vec<u8>, offset: u64, data: &[u8]) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
    let end = start + data.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[start..end].copy_from_slice(data);
    Ok(())
}

impl redb::StorageBackend for DiskHandle {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.disk.lock().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let s = self.disk.lock();
        let start = usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
        let end = start + out.len();
        if end > s.live.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the simulated disk",
            ));
        }
        out.copy_from_slice(&s.live[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        if let Some(mut s) = self.current() {
            set_len(&mut s.live, len)?;
            s.unsynced.push((len, None));
        }
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        if let Some(mut s) = self.current() {
            let pending = std::mem::take(&mut s.unsynced);
            for (at, bytes) in pending {
                match bytes {
                    None => set_len(&mut s.synced, at)?,
                    Some(b) => write_at(&mut s.synced, at, &b)?,
                }
            }
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        if let Some(mut s) = self.current() {
            write_at(&mut s.live, offset, data)?;
            s.unsynced.push((offset, Some(data.to_vec())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend;

    #[test]
    fn a_crash_keeps_synced_bytes_and_drops_the_rest_when_asked() {
        let disk = SimDisk::default();
        let h = disk.handle();
        h.write(0, b"abc").expect("in memory");
        h.sync_data().expect("in memory");
        h.write(1, b"Z").expect("in memory");
        assert_eq!(disk.crash(true), 1);
        let h2 = disk.handle();
        let mut out = [0u8; 3];
        h2.read(0, &mut out).expect("in memory");
        assert_eq!(&out, b"abc");
        // The dead handle writes nothing.
        h.write(0, b"X").expect("ignored");
        h2.read(0, &mut out).expect("in memory");
        assert_eq!(&out, b"abc");
    }
}
