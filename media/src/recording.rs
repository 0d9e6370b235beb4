//! Call recording: a tap off the relay, never in its path.
//!
//! The relay copies each accepted RTP payload of either leg into a [`RecordedFrame`] and offers
//! it to a bounded channel with `try_send`; when the channel is full the frame is dropped and
//! counted, so a slow disk can cost recording frames but never a relayed packet. A writer task
//! per recording takes the frames, places them on one timeline with [`StereoTimeline`] (the sans-IO
//! core: RTP timestamps within a stream, arrival time across streams, silence in gaps) and
//! writes a stereo WAV file, caller left and agent right, 8 kHz 16-bit. After each second of
//! audio it writes the data and then rewrites the header's lengths, so a file cut off by a crash
//! is valid up to its last flushed second.
//!
//! A [`Recorder`] is the node-wide part: the directory, the bytes its recordings hold, and two
//! alarms. Past [`Recording::disk_watermark_bytes`] it raises the watermark alarm (a flag for
//! metrics and a warning in the log); at [`Recording::disk_limit_bytes`] recordings pause (files
//! are closed valid, new ones are refused) and the limit alarm is raised. Calls are never
//! affected.
//!
//! Call order: [`Recorder::new`] at start-up; per call
//! [`CallMedia::start_recording`](crate::CallMedia::start_recording) with a
//! [`RecordingTarget`], then [`CallMedia::stop_recording`](crate::CallMedia::stop_recording),
//! which returns the [`RecordingMeta`] for the node to index.
//!
//! The writer task creates its file on tokio's blocking pool (a create on a busy file system
//! can take milliseconds) and does only CPU work after that: each ready second is encoded and
//! handed to the recorder's disk thread, one thread per [`Recorder`] that does every
//! recording's writes (the second's data, then the header) in order. Writes into the page
//! cache usually take microseconds, but once the kernel throttles dirty pages a write can
//! sleep for hundreds of milliseconds, and on the relay's runtime that stalled every call's
//! audio (`carillon bench media` with recording showed p99 latencies near 0.5 s). The hand-off
//! queue is bounded ([`DISK_QUEUE_JOBS_MAX`]): a second that finds it full is dropped and
//! counted, and is left as silence in the file (its place is kept, so the timeline stays
//! true). A recording's end waits until its last second is on the disk thread's side done.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::codec::{Codec, CLOCK_RATE_HZ};
use crate::MediaError;

/// Frames (either leg) that may wait for a recording's writer: about 2.5 s of a call.
pub const FRAME_QUEUE_DEPTH_MAX: usize = 256;
/// The largest payload recorded per packet: 60 ms of G.711. Longer payloads are cut.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 480;
/// Audio held back before a second is flushed, so that late packets still find their place.
pub const REORDER_WINDOW_MS: u64 = 200;
/// A stream whose RTP time strays further than this from its arrival time is re-anchored on
/// arrival time (the phone restarted its clock, or jumped).
pub const RESYNC_THRESHOLD_MS: u64 = 1000;
/// Longest stretch the timeline buffers ahead of the flush point.
const BUFFER_MS_MAX: u64 = 4000;
const SAMPLES_PER_MS: u64 = CLOCK_RATE_HZ as u64 / 1000;
const FLUSH_SAMPLES: usize = CLOCK_RATE_HZ as usize;
const WAV_HEADER_LEN: usize = 44;
const CHANNELS: usize = 2;
/// Seconds of audio (any recordings) that may wait for the disk thread: about 32 MB, one
/// second of 1,000 recorded calls.
pub const DISK_QUEUE_JOBS_MAX: usize = 1024;
/// One recorded frame's length, for counting the frames of a dropped second.
const FRAME_MS: u64 = 20;

/// Recording settings of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recording {
    /// Where recordings are written.
    pub dir: PathBuf,
    /// Whether calls are recorded at all.
    pub enabled: bool,
    /// Bytes of recordings above which the watermark alarm is raised.
    pub disk_watermark_bytes: u64,
    /// Bytes of recordings at which recording pauses (with the limit alarm).
    pub disk_limit_bytes: u64,
}

/// Which leg a frame came from; the caller is the left channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Caller,
    Agent,
}

/// One RTP payload copied off the relay.
#[derive(Clone, Copy, Debug)]
pub struct RecordedFrame {
    pub channel: Channel,
    pub codec: Codec,
    /// Arrival, microseconds since the recording started.
    pub arrival_us: u64,
    pub ssrc: u32,
    pub timestamp: u32,
    pub len: u16,
    pub payload: [u8; FRAME_PAYLOAD_BYTES_MAX],
}

/// What the node knows about a call, for the file name and the index.
#[derive(Clone, Debug)]
pub struct RecordingTarget {
    pub recorder: Arc<Recorder>,
    pub call_id: String,
    pub agent: String,
    pub queue: String,
    pub caller: String,
    /// When the recording starts, Unix milliseconds (time is an input).
    pub start_unix_ms: u64,
}

/// A finished recording, for the node to index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingMeta {
    pub call_id: String,
    pub agent: String,
    pub queue: String,
    pub caller: String,
    pub start_unix_ms: u64,
    /// Audio written, milliseconds.
    pub duration_ms: u64,
    pub path: PathBuf,
    /// Frames the relay could not hand over (writer behind) or the timeline could not place.
    pub frames_dropped: u64,
    /// True if the disk limit stopped this recording early.
    pub paused: bool,
    /// Why the file could not be created, if it could not: nothing was recorded.
    pub error: Option<String>,
}

/// A snapshot of the recorder's state, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecorderStatus {
    pub used_bytes: u64,
    pub watermark_alarm: bool,
    pub limit_alarm: bool,
    pub frames_dropped: u64,
    pub recordings_started: u64,
    pub recordings_refused: u64,
}

/// The node-wide recording state: settings, disk use and alarms.
#[derive(Debug)]
pub struct Recorder {
    config: Recording,
    /// The disk thread's queue (`None` when recording is disabled). The thread ends when the
    /// recorder is dropped.
    disk: Option<SyncSender<DiskJob>>,
    used_bytes: AtomicU64,
    watermark_alarm: AtomicBool,
    limit_alarm: AtomicBool,
    frames_dropped: AtomicU64,
    recordings_started: AtomicU64,
    recordings_refused: AtomicU64,
}

impl Recorder {
    /// Creates the directory if needed and counts the recordings already in it.
    pub fn new(config: Recording) -> Result<Arc<Recorder>, MediaError> {
        let io_err = |source| MediaError::Io {
            file: config.dir.display().to_string(),
            source,
        };
        if config.enabled {
            std::fs::create_dir_all(&config.dir).map_err(io_err)?;
        }
        let used = if config.enabled {
            bytes_in(&config.dir)?
        } else {
            0
        };
        let disk = if config.enabled {
            let (jobs, queue) = std::sync::mpsc::sync_channel(DISK_QUEUE_JOBS_MAX);
            std::thread::Builder::new()
                .name("recording-disk".into())
                .spawn(move || run_disk(queue))
                .map_err(io_err)?;
            Some(jobs)
        } else {
            None
        };
        let recorder = Recorder {
            config,
            disk,
            used_bytes: AtomicU64::new(0),
            watermark_alarm: AtomicBool::new(false),
            limit_alarm: AtomicBool::new(false),
            frames_dropped: AtomicU64::new(0),
            recordings_started: AtomicU64::new(0),
            recordings_refused: AtomicU64::new(0),
        };
        recorder.add_bytes(used);
        Ok(Arc::new(recorder))
    }

    /// Counts the directory again (after an operator freed space) and clears the alarms that
    /// no longer hold.
    pub fn rescan(&self) -> Result<(), MediaError> {
        if !self.config.enabled {
            return Ok(());
        }
        let used = bytes_in(&self.config.dir)?;
        self.used_bytes.store(0, Ordering::Relaxed);
        self.watermark_alarm.store(false, Ordering::Relaxed);
        self.limit_alarm.store(false, Ordering::Relaxed);
        self.add_bytes(used);
        Ok(())
    }

    pub fn config(&self) -> &Recording {
        &self.config
    }

    pub fn status(&self) -> RecorderStatus {
        RecorderStatus {
            used_bytes: self.used_bytes.load(Ordering::Relaxed),
            watermark_alarm: self.watermark_alarm.load(Ordering::Relaxed),
            limit_alarm: self.limit_alarm.load(Ordering::Relaxed),
            frames_dropped: self.frames_dropped.load(Ordering::Relaxed),
            recordings_started: self.recordings_started.load(Ordering::Relaxed),
            recordings_refused: self.recordings_refused.load(Ordering::Relaxed),
        }
    }

    /// Accounts written bytes and raises the alarms as thresholds are crossed.
    fn add_bytes(&self, bytes: u64) {
        let used = self.used_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if used >= self.config.disk_watermark_bytes
            && !self.watermark_alarm.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                used_bytes = used,
                watermark_bytes = self.config.disk_watermark_bytes,
                dir = %self.config.dir.display(),
                "recording disk watermark reached; free space or raise the limit"
            );
        }
        if used >= self.config.disk_limit_bytes {
            self.would_pass_limit(0);
        }
    }

    /// True once the limit has been met: recording stays paused until a rescan.
    fn over_limit(&self) -> bool {
        self.limit_alarm.load(Ordering::Relaxed)
            || self.used_bytes.load(Ordering::Relaxed) >= self.config.disk_limit_bytes
    }

    /// Whether `bytes` more would pass the limit; if so, raises the limit alarm.
    fn would_pass_limit(&self, bytes: u64) -> bool {
        let used = self.used_bytes.load(Ordering::Relaxed);
        if self.over_limit() || used + bytes > self.config.disk_limit_bytes {
            if !self.limit_alarm.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    used_bytes = used,
                    limit_bytes = self.config.disk_limit_bytes,
                    dir = %self.config.dir.display(),
                    "recording disk limit reached: recording paused, calls go on unrecorded"
                );
            }
            return true;
        }
        false
    }

    /// Opens a recording file and returns its writer, or why not (blocking file I/O).
    #[cfg(test)]
    pub(crate) fn open(self: &Arc<Self>, target: RecordingTarget) -> Result<Writer, MediaError> {
        let mut writer = self.prepare(target)?;
        writer.create()?;
        Ok(writer)
    }

    /// Checks that a recording may start and returns its writer, whose file is created by
    /// [`Writer::create`] (the writer task does that off the async runtime: creating a file
    /// can take milliseconds on a busy file system, and must not stall calls).
    pub(crate) fn prepare(self: &Arc<Self>, target: RecordingTarget) -> Result<Writer, MediaError> {
        if !self.config.enabled {
            return Err(MediaError::RecordingDisabled);
        }
        if self.over_limit() {
            self.recordings_refused.fetch_add(1, Ordering::Relaxed);
            self.limit_alarm.store(true, Ordering::Relaxed);
            return Err(MediaError::RecordingPaused {
                used_bytes: self.used_bytes.load(Ordering::Relaxed),
                limit_bytes: self.config.disk_limit_bytes,
            });
        }
        let path = self
            .config
            .dir
            .join(file_name(&target.call_id, target.start_unix_ms));
        Ok(Writer {
            recorder: Arc::clone(self),
            file: None,
            meta: RecordingMeta {
                call_id: target.call_id,
                agent: target.agent,
                queue: target.queue,
                caller: target.caller,
                start_unix_ms: target.start_unix_ms,
                duration_ms: 0,
                path,
                frames_dropped: 0,
                paused: false,
                error: None,
            },
            timeline: StereoTimeline::new(),
            data_bytes: 0,
        })
    }
}

impl Recorder {
    /// Queues `then` behind every job queued so far, waiting for room (blocking: call it
    /// off the async runtime). False when there is no disk thread to run it.
    fn flush_disk(&self, then: Box<dyn FnOnce() + Send>) -> bool {
        match &self.disk {
            Some(disk) => disk.send(DiskJob::Flush(then)).is_ok(),
            None => false,
        }
    }

    /// Waits (blocking) until the disk thread has written everything queued so far.
    #[cfg(test)]
    pub(crate) fn wait_written(&self) {
        let (done, written) = std::sync::mpsc::channel();
        if self.flush_disk(Box::new(move || {
            let _ = done.send(());
        })) {
            let _ = written.recv();
        }
    }
}

/// A recording's open file, shared by its writer and the disk thread.
#[derive(Debug)]
pub(crate) struct RecordingFile {
    file: File,
    path: PathBuf,
    /// Set by the disk thread when a write failed: the writer stops there.
    failed: AtomicBool,
}

/// Work for the disk thread.
enum DiskJob {
    /// Write `bytes` at `offset`, then the header saying the data is `header_len` long.
    Append {
        file: Arc<RecordingFile>,
        offset: u64,
        bytes: Vec<u8>,
        header_len: u32,
    },
    /// Run this once every earlier job is done.
    Flush(Box<dyn FnOnce() + Send>),
}

impl std::fmt::Debug for DiskJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskJob::Append { file, offset, .. } => f
                .debug_struct("Append")
                .field("path", &file.path)
                .field("offset", offset)
                .finish(),
            DiskJob::Flush(_) => f.write_str("Flush"),
        }
    }
}

/// The disk thread: every recording's writes, in the order they were queued, until the
/// recorder is dropped.
fn run_disk(queue: Receiver<DiskJob>) {
    while let Ok(job) = queue.recv() {
        match job {
            DiskJob::Append {
                file,
                offset,
                bytes,
                header_len,
            } => {
                if file.failed.load(Ordering::Relaxed) {
                    continue;
                }
                // Data first, then the header that covers it: a crash between the two leaves
                // the file valid up to the previous second.
                let result = file
                    .file
                    .write_all_at(&bytes, offset)
                    .and_then(|()| file.file.write_all_at(&wav_header(header_len), 0));
                if let Err(error) = result {
                    tracing::warn!(path = %file.path.display(), %error, "recording write failed; recording stopped");
                    file.failed.store(true, Ordering::Relaxed);
                }
            }
            DiskJob::Flush(then) => then(),
        }
    }
}

/// The bytes of the `.wav` files in `dir`.
fn bytes_in(dir: &Path) -> Result<u64, MediaError> {
    let io_err = |source| MediaError::Io {
        file: dir.display().to_string(),
        source,
    };
    let mut used = 0;
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        if entry.path().extension().is_some_and(|e| e == "wav") {
            used += entry.metadata().map_err(io_err)?.len();
        }
    }
    Ok(used)
}

/// `<start>-<call id>.wav`, the call id reduced to characters safe in a file name (it comes
/// from SIP, so from the network).
fn file_name(call_id: &str, start_unix_ms: u64) -> String {
    let safe: String = call_id
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = safe.trim_start_matches('.');
    format!("{start_unix_ms}-{safe}.wav")
}

/// The canonical 44-byte header of a stereo 8 kHz 16-bit PCM file with `data_bytes` of audio.
fn wav_header(data_bytes: u32) -> [u8; WAV_HEADER_LEN] {
    let mut h = [0u8; WAV_HEADER_LEN];
    let byte_rate = CLOCK_RATE_HZ * CHANNELS as u32 * 2;
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(36 + data_bytes).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&(CHANNELS as u16).to_le_bytes());
    h[24..28].copy_from_slice(&CLOCK_RATE_HZ.to_le_bytes());
    h[28..32].copy_from_slice(&byte_rate.to_le_bytes());
    h[32..34].copy_from_slice(&(CHANNELS as u16 * 2).to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_bytes.to_le_bytes());
    h
}

/// One recording being written: file, timeline, and what goes into the index.
#[derive(Debug)]
pub(crate) struct Writer {
    recorder: Arc<Recorder>,
    /// `None` once paused or failed: frames are then counted and dropped.
    file: Option<Arc<RecordingFile>>,
    meta: RecordingMeta,
    timeline: StereoTimeline,
    data_bytes: u64,
}

impl Writer {
    /// Creates the file with an empty WAV header (blocking file I/O).
    pub(crate) fn create(&mut self) -> Result<(), MediaError> {
        let path = &self.meta.path;
        let io_err = |source| MediaError::Io {
            file: path.display().to_string(),
            source,
        };
        let mut file = File::create(path).map_err(io_err)?;
        file.write_all(&wav_header(0)).map_err(io_err)?;
        self.recorder.add_bytes(WAV_HEADER_LEN as u64);
        self.recorder
            .recordings_started
            .fetch_add(1, Ordering::Relaxed);
        self.file = Some(Arc::new(RecordingFile {
            file,
            path: path.clone(),
            failed: AtomicBool::new(false),
        }));
        Ok(())
    }

    /// Creates the file, takes frames until the relay drops its sender, then finishes the
    /// file and waits until the disk thread has written all of it. The create runs on
    /// tokio's blocking pool: it can take milliseconds on a busy file system (an ext4 inode
    /// allocation took about 200 us on our test machine) and must not hold up the runtime.
    /// Each second's writes go to the disk thread (a hand-off per second to tokio's blocking
    /// pool, tried before, cost more than it saved).
    pub(crate) async fn run(
        self,
        mut frames: mpsc::Receiver<RecordedFrame>,
        dropped: Arc<AtomicU64>,
    ) -> RecordingMeta {
        let fallback = self.meta.clone();
        let created = tokio::task::spawn_blocking(move || {
            let mut writer = self;
            let result = writer.create();
            (writer, result)
        })
        .await;
        let mut writer = match created {
            Ok((writer, Ok(()))) => writer,
            Ok((mut writer, Err(error))) => {
                tracing::warn!(%error, "call not recorded: the recording file cannot be created");
                writer.meta.error = Some(error.to_string());
                // Drain the tap so the relay's sends keep succeeding until it stops.
                while frames.recv().await.is_some() {}
                return writer.meta;
            }
            Err(_) => {
                tracing::error!(path = %fallback.path.display(), "creating the recording file did not run to its end");
                while frames.recv().await.is_some() {}
                return RecordingMeta {
                    error: Some("creating the recording file did not run to its end".into()),
                    ..fallback
                };
            }
        };
        while let Some(frame) = frames.recv().await {
            writer.push(&frame);
        }
        let recorder = Arc::clone(&writer.recorder);
        let meta = writer.finish(dropped.load(Ordering::Relaxed));
        // The index entry must not name audio that is not in the file yet. Waiting for room
        // in a full queue is blocking, so it happens on the blocking pool, once per call.
        let (done, written) = tokio::sync::oneshot::channel::<()>();
        let queued = tokio::task::spawn_blocking(move || {
            recorder.flush_disk(Box::new(move || {
                let _ = done.send(());
            }))
        })
        .await;
        if matches!(queued, Ok(true)) {
            let _ = written.await;
        }
        meta
    }

    /// Places a frame and writes any second that is ready.
    fn push(&mut self, frame: &RecordedFrame) {
        if self.file.is_none() {
            return;
        }
        self.timeline.push(frame);
        while let Some(second) = self.timeline.ready(false) {
            self.write(&second);
        }
    }

    fn finish(mut self, relay_dropped: u64) -> RecordingMeta {
        if self.file.is_some() {
            while let Some(rest) = self.timeline.ready(true) {
                self.write(&rest);
            }
        }
        if let Some(file) = &self.file {
            if file.failed.load(Ordering::Relaxed) {
                self.meta.error = Some("a write failed; the recording stopped there".into());
            }
        }
        self.meta.frames_dropped += relay_dropped + self.timeline.frames_dropped;
        self.recorder
            .frames_dropped
            .fetch_add(self.meta.frames_dropped, Ordering::Relaxed);
        self.meta.duration_ms = self.data_bytes / (CHANNELS as u64 * 2 * SAMPLES_PER_MS);
        self.meta
    }

    /// Encodes interleaved samples and queues them for the disk thread, which appends them
    /// and then rewrites the header to cover them.
    fn write(&mut self, samples: &[[i16; CHANNELS]]) {
        let Some(file) = self.file.as_ref() else {
            return;
        };
        if file.failed.load(Ordering::Relaxed) {
            // The disk thread logged why; the file stays valid up to its last good second.
            self.file = None;
            return;
        }
        let bytes_len = (samples.len() * CHANNELS * 2) as u64;
        if self.recorder.would_pass_limit(bytes_len) {
            self.pause();
            return;
        }
        let new_len = self.data_bytes + bytes_len;
        // A WAV file's lengths are 32-bit: stop well before (about 37 hours of stereo).
        let Ok(header_len) = u32::try_from(new_len) else {
            self.pause();
            return;
        };
        let mut bytes = Vec::with_capacity(bytes_len as usize);
        for pair in samples {
            for s in pair {
                bytes.extend_from_slice(&s.to_le_bytes());
            }
        }
        let job = DiskJob::Append {
            file: Arc::clone(file),
            offset: WAV_HEADER_LEN as u64 + self.data_bytes,
            bytes,
            header_len,
        };
        let queued = match &self.recorder.disk {
            Some(disk) => disk.try_send(job).is_ok(),
            None => false,
        };
        // Either way the second keeps its place: a dropped one reads back as silence once a
        // later second's header covers it.
        self.data_bytes = new_len;
        if queued {
            self.recorder.add_bytes(bytes_len);
        } else {
            let frames =
                (samples.len() as u64).div_ceil(SAMPLES_PER_MS * FRAME_MS) * CHANNELS as u64;
            if self.meta.frames_dropped == 0 {
                tracing::warn!(path = %self.meta.path.display(), "recording disk queue full: a second of audio dropped (the disk is behind)");
            }
            self.meta.frames_dropped += frames;
        }
    }

    fn pause(&mut self) {
        if self.file.take().is_some() {
            self.meta.paused = true;
            tracing::warn!(path = %self.meta.path.display(), "recording paused at the disk limit");
        }
    }
}

/// One stream's mapping from RTP time to the recording's timeline.
#[derive(Clone, Copy, Debug)]
struct Anchor {
    ssrc: u32,
    timestamp: u32,
    position: u64,
}

/// Places frames of both legs on one timeline of stereo samples and hands it out a second at a
/// time, silence filling whatever no frame covered.
///
/// Within one stream, a frame's place is its RTP timestamp relative to the stream's first
/// frame, so jitter does not move audio; a new stream (SSRC), or RTP time that strays from
/// arrival time by more than [`RESYNC_THRESHOLD_MS`], is anchored at its arrival time. Frames
/// that arrive after their second was flushed are dropped and counted.
#[derive(Debug)]
pub struct StereoTimeline {
    anchors: [Option<Anchor>; CHANNELS],
    /// Samples from `flushed` on; `buffer[i]` is position `flushed + i`.
    buffer: Vec<[i16; CHANNELS]>,
    flushed: u64,
    /// One past the furthest position written.
    end: u64,
    /// The second handed out by `ready`.
    out: Vec<[i16; CHANNELS]>,
    pub frames_dropped: u64,
}

impl Default for StereoTimeline {
    fn default() -> StereoTimeline {
        StereoTimeline::new()
    }
}

impl StereoTimeline {
    pub fn new() -> StereoTimeline {
        StereoTimeline {
            anchors: [None; CHANNELS],
            buffer: Vec::with_capacity((BUFFER_MS_MAX * SAMPLES_PER_MS) as usize),
            flushed: 0,
            end: 0,
            out: Vec::with_capacity(FLUSH_SAMPLES),
            frames_dropped: 0,
        }
    }

    /// Places one frame.
    pub fn push(&mut self, frame: &RecordedFrame) {
        let channel = match frame.channel {
            Channel::Caller => 0,
            Channel::Agent => 1,
        };
        let arrival = frame.arrival_us * SAMPLES_PER_MS / 1000;
        let len = usize::from(frame.len).min(FRAME_PAYLOAD_BYTES_MAX);
        let position = match self.anchors[channel] {
            Some(anchor) if anchor.ssrc == frame.ssrc => {
                // Signed distance in RTP time, wrapping like RTP does.
                let delta = frame.timestamp.wrapping_sub(anchor.timestamp) as i32;
                let position = anchor.position as i64 + i64::from(delta);
                let stray = (position - arrival as i64).unsigned_abs();
                if position < 0 || stray > RESYNC_THRESHOLD_MS * SAMPLES_PER_MS {
                    self.anchor(channel, frame, arrival)
                } else {
                    position as u64
                }
            }
            _ => self.anchor(channel, frame, arrival),
        };
        if position < self.flushed {
            self.frames_dropped += 1;
            return;
        }
        let limit = self.flushed + BUFFER_MS_MAX * SAMPLES_PER_MS;
        let frame_end = position + len as u64;
        if frame_end > limit {
            // The writer fell far behind the stream; cannot happen while `ready` is called after
            // each push, since arrival time bounds positions.
            self.frames_dropped += 1;
            return;
        }
        let start = (position - self.flushed) as usize;
        if self.buffer.len() < start + len {
            self.buffer.resize(start + len, [0; CHANNELS]);
        }
        for (slot, byte) in self.buffer[start..start + len]
            .iter_mut()
            .zip(&frame.payload[..len])
        {
            slot[channel] = frame.codec.decode(*byte);
        }
        self.end = self.end.max(frame_end);
    }

    fn anchor(&mut self, channel: usize, frame: &RecordedFrame, arrival: u64) -> u64 {
        self.anchors[channel] = Some(Anchor {
            ssrc: frame.ssrc,
            timestamp: frame.timestamp,
            position: arrival,
        });
        arrival
    }

    /// The next second of audio once the timeline runs [`REORDER_WINDOW_MS`] past it; with
    /// `finish`, whatever remains (then `None` once empty).
    pub fn ready(&mut self, finish: bool) -> Option<Vec<[i16; CHANNELS]>> {
        let available = self.end.saturating_sub(self.flushed);
        let take = if finish {
            available.min(FLUSH_SAMPLES as u64)
        } else if available >= FLUSH_SAMPLES as u64 + REORDER_WINDOW_MS * SAMPLES_PER_MS {
            FLUSH_SAMPLES as u64
        } else {
            return None;
        };
        if take == 0 {
            return None;
        }
        let take = take as usize;
        if self.buffer.len() < take {
            self.buffer.resize(take, [0; CHANNELS]);
        }
        self.out.clear();
        self.out.extend_from_slice(&self.buffer[..take]);
        self.buffer.drain(..take);
        self.flushed += take as u64;
        Some(std::mem::take(&mut self.out))
    }
}

/// The recording's reader side for tests and tools: channels of a stereo file written here.
pub fn read_stereo(path: &Path) -> Result<(Vec<i16>, Vec<i16>), MediaError> {
    let bytes = std::fs::read(path).map_err(|source| MediaError::Io {
        file: path.display().to_string(),
        source,
    })?;
    let bad = |reason: &str| MediaError::Wav {
        file: path.display().to_string(),
        reason: reason.to_string(),
    };
    if bytes.len() < WAV_HEADER_LEN || &bytes[0..4] != b"RIFF" || &bytes[36..40] != b"data" {
        return Err(bad("not a stereo recording written by carillon"));
    }
    if u16::from_le_bytes([bytes[22], bytes[23]]) != CHANNELS as u16 {
        return Err(bad("not stereo"));
    }
    let data_len = u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]) as usize;
    let data = bytes
        .get(WAV_HEADER_LEN..WAV_HEADER_LEN + data_len)
        .ok_or_else(|| bad("data length beyond the end of the file"))?;
    let mut left = Vec::with_capacity(data_len / 4);
    let mut right = Vec::with_capacity(data_len / 4);
    for frame in data.chunks_exact(4) {
        left.push(i16::from_le_bytes([frame[0], frame[1]]));
        right.push(i16::from_le_bytes([frame[2], frame[3]]));
    }
    Ok((left, right))
}

#[cfg(test)]
#[path = "recording_test.rs"]
mod tests;
