//! Call recording in the node: the `[recording]` settings, the node-wide
//! [`Recorder`](carillon_media::Recorder), starting a recording when a call is bridged and
//! indexing it when the call ends, the disk alarms in `/metrics`, and the parsing of the
//! times `carillon ctl recordings search` takes.
//!
//! The media crate does the recording itself (a tap off the relay, a stereo WAV, the disk
//! accounting and the alarms); this module decides which calls are recorded and keeps the
//! index. A call is recorded by the node that owns it: that node holds the caller's media
//! and relays it to the agent, whether the agent's phone is registered here or the agent
//! leg crosses to another node (whose `peer_leg` only relays, and records nothing), so one
//! call gives one file with both voices.
//!
//! Call order: [`recorder`] at start-up (into `Shared`), [`start`] right after a call's legs
//! are bridged, [`finish`] once the call is over (before its CDR is stored), [`upkeep`] as a
//! task for the node's life, [`refresh_metrics`] on every scrape.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use carillon_media::{CallMedia, MediaError, Recorder, Recording, RecordingTarget};
use serde::Deserialize;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::config::{Config, ConfigError, QueueSection};
use crate::node::Shared;

/// How often the recording directory is counted again, so that space an operator freed
/// lowers the disk figure and lifts the alarms (and a paused recorder resumes).
const RESCAN_INTERVAL_MS: u64 = 60_000;
/// Bytes in a megabyte of the `*_mb` settings.
const MB_BYTES: u64 = 1 << 20;
/// Largest disk setting accepted (1 PiB), so the byte figures cannot overflow.
const DISK_MB_MAX: u64 = 1 << 30;

/// `[recording]`: whether calls are recorded, where, and the disk thresholds.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingSection {
    /// Record every bridged call; a queue's `record` overrides this for its calls.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Where the WAV files go (default `<data_dir>/recordings`).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Recordings holding this much raise the watermark alarm (metric and log).
    #[serde(default = "default_watermark_mb")]
    pub disk_watermark_mb: u64,
    /// At this much recording pauses (calls go on unrecorded) with the limit alarm.
    #[serde(default = "default_limit_mb")]
    pub disk_limit_mb: u64,
}

impl Default for RecordingSection {
    fn default() -> Self {
        RecordingSection {
            enabled: true,
            dir: None,
            disk_watermark_mb: default_watermark_mb(),
            disk_limit_mb: default_limit_mb(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_watermark_mb() -> u64 {
    8 * 1024
}
fn default_limit_mb() -> u64 {
    10 * 1024
}

/// Checks `[recording]`; errors name the key.
pub fn validate(
    section: &RecordingSection,
    bad: &dyn Fn(String, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if !(1..=DISK_MB_MAX).contains(&section.disk_limit_mb) {
        return Err(bad(
            "recording.disk_limit_mb".into(),
            format!("must be between 1 and {DISK_MB_MAX}"),
        ));
    }
    if section.disk_watermark_mb == 0 || section.disk_watermark_mb > section.disk_limit_mb {
        return Err(bad(
            "recording.disk_watermark_mb".into(),
            format!(
                "must be at least 1 and at most recording.disk_limit_mb ({})",
                section.disk_limit_mb
            ),
        ));
    }
    if section
        .dir
        .as_ref()
        .is_some_and(|d| d.as_os_str().is_empty())
    {
        return Err(bad(
            "recording.dir".into(),
            "must not be empty (leave it out for <data_dir>/recordings)".into(),
        ));
    }
    Ok(())
}

/// Where this node writes recordings.
pub fn dir(config: &Config) -> PathBuf {
    match &config.recording.dir {
        Some(d) => config.resolve(d),
        None => config.data_dir().join("recordings"),
    }
}

/// Whether calls of `queue` are recorded: the queue's `record`, else `[recording].enabled`.
/// A queue created at run time (not in the file) follows `[recording].enabled`.
pub fn queue_records(config: &Config, queue: &str) -> bool {
    queue_setting(&config.queues, queue).unwrap_or(config.recording.enabled)
}

fn queue_setting(queues: &[QueueSection], queue: &str) -> Option<bool> {
    queues
        .iter()
        .find(|q| q.name == queue)
        .and_then(|q| q.record)
}

/// The node's recorder. Its directory is created only if some call may be recorded.
pub fn recorder(config: &Config) -> anyhow::Result<Arc<Recorder>> {
    let any = config.recording.enabled || config.queues.iter().any(|q| q.record == Some(true));
    let dir = dir(config);
    Recorder::new(Recording {
        dir: dir.clone(),
        enabled: any,
        disk_watermark_bytes: config.recording.disk_watermark_mb.saturating_mul(MB_BYTES),
        disk_limit_bytes: config.recording.disk_limit_mb.saturating_mul(MB_BYTES),
    })
    .with_context(|| format!("recording.dir: cannot use {}", dir.display()))
}

/// Starts recording a call whose legs were just bridged, if its queue records. A refusal
/// (disk limit, unwritable directory) is logged and counted; the call goes on.
pub fn start(
    shared: &Shared,
    media: &CallMedia,
    call_id: &str,
    agent: &str,
    queue: &str,
    caller: &str,
) {
    if !queue_records(&shared.config, queue) {
        return;
    }
    let target = RecordingTarget {
        recorder: Arc::clone(&shared.recorder),
        call_id: call_id.to_string(),
        agent: agent.to_string(),
        queue: queue.to_string(),
        caller: caller.to_string(),
        start_unix_ms: now_ms(),
    };
    match media.start_recording(target) {
        Ok(()) => info!(%agent, "recording the call"),
        Err(e @ MediaError::RecordingPaused { .. }) => {
            warn!(error = %e, "call not recorded: recording is paused at the disk limit")
        }
        Err(e) => warn!(error = %e, "call not recorded"),
    }
}

/// Stops the call's recording, if one runs, waits for its file to be complete and queues
/// it for the index ([`crate::record_writer`]).
pub async fn finish(shared: &Shared, media: &CallMedia) {
    let Some(meta) = media.stop_recording().await else {
        return;
    };
    if let Some(error) = &meta.error {
        // The writer logged it when it happened; a file that never was is not indexed.
        warn!(%error, path = %meta.path.display(), "the call was not recorded");
        return;
    }
    shared
        .record_writer
        .index_recording(meta, shared.node_id.clone())
        .await;
}

/// Counts the recording directory again every [`RESCAN_INTERVAL_MS`], for the node's life.
pub async fn upkeep(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(RESCAN_INTERVAL_MS));
    tick.tick().await;
    loop {
        tick.tick().await;
        let recorder = Arc::clone(&shared.recorder);
        let result = tokio::task::spawn_blocking(move || recorder.rescan()).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "could not count the recording directory"),
            Err(e) => warn!(error = %e, "counting the recording directory failed"),
        }
    }
}

/// Sets the recording series from the recorder's state.
pub fn refresh_metrics(shared: &Shared) {
    let s = shared.recorder.status();
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    metrics::gauge!("carillon_recording_disk_bytes").set(s.used_bytes as f64);
    metrics::gauge!("carillon_recording_disk_watermark_bytes")
        .set(shared.recorder.config().disk_watermark_bytes as f64);
    metrics::gauge!("carillon_recording_disk_limit_bytes")
        .set(shared.recorder.config().disk_limit_bytes as f64);
    metrics::gauge!("carillon_recording_alarm", "alarm" => "watermark")
        .set(flag(s.watermark_alarm));
    metrics::gauge!("carillon_recording_alarm", "alarm" => "limit").set(flag(s.limit_alarm));
    metrics::counter!("carillon_recordings_started_total").absolute(s.recordings_started);
    metrics::counter!("carillon_recordings_refused_total").absolute(s.recordings_refused);
    metrics::counter!("carillon_recording_frames_dropped_total").absolute(s.frames_dropped);
}

/// Describes the recording series for `/metrics`.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!(
        "carillon_recording_disk_bytes",
        Unit::Bytes,
        "Bytes of call recordings in the recording directory."
    );
    describe_gauge!(
        "carillon_recording_disk_watermark_bytes",
        Unit::Bytes,
        "recording.disk_watermark_mb in bytes: above it the watermark alarm is raised."
    );
    describe_gauge!(
        "carillon_recording_disk_limit_bytes",
        Unit::Bytes,
        "recording.disk_limit_mb in bytes: at it recording pauses and the limit alarm is raised."
    );
    describe_gauge!(
        "carillon_recording_alarm",
        "1 while a recording disk alarm holds: watermark (disk filling) or limit (recording paused)."
    );
    describe_counter!(
        "carillon_recordings_started_total",
        "Call recordings started on this node."
    );
    describe_counter!(
        "carillon_recordings_refused_total",
        "Calls that went unrecorded because recording was paused at the disk limit."
    );
    describe_counter!(
        "carillon_recording_frames_dropped_total",
        "Audio frames recordings lost (disk behind, or too late to place)."
    );
    describe_counter!(
        "carillon_recordings_indexed_total",
        "Finished recordings indexed in the record store."
    );
}

/// A time on the command line as Unix ms: `2024-05-01` (midnight UTC),
/// `2024-05-01T10:30:00Z`, `2024-05-01T10:30:00.250+02:00` (RFC 3339; a space may stand
/// for the `T`), or plain Unix milliseconds. With `end_of_day`, a bare date means the
/// midnight after it, so `--to 2024-05-01` takes that whole day in.
pub fn parse_time(text: &str, end_of_day: bool) -> Result<u64, String> {
    let text = text.trim();
    let why = || {
        format!("`{text}` is not a date (2024-05-01), an RFC 3339 time (2024-05-01T10:30:00Z) or Unix ms")
    };
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && text.len() > 8 {
        return text.parse().map_err(|_| why());
    }
    let (date, rest) = text.split_at(text.len().min(10));
    let days = parse_date(date).ok_or_else(why)?;
    let day_ms = days * 86_400_000;
    if rest.is_empty() {
        let day_ms = if end_of_day {
            day_ms + 86_400_000
        } else {
            day_ms
        };
        return u64::try_from(day_ms).map_err(|_| why());
    }
    let rest = rest.strip_prefix(['T', 't', ' ']).ok_or_else(why)?;
    let (clock, offset_s) = split_offset(rest).ok_or_else(why)?;
    let clock_ms = parse_clock(clock).ok_or_else(why)?;
    let ms = day_ms + clock_ms - offset_s * 1000;
    u64::try_from(ms).map_err(|_| why())
}

/// Days since 1970-01-01 of `YYYY-MM-DD`, checked against the month's length.
fn parse_date(date: &str) -> Option<i64> {
    let b = date.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |s: &str| -> Option<i64> {
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let (y, m, d) = (num(&date[0..4])?, num(&date[5..7])?, num(&date[8..10])?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `HH:MM:SS[.fff]` and the offset after it: `Z` or `±HH:MM` (seconds east of UTC).
fn split_offset(rest: &str) -> Option<(&str, i64)> {
    if let Some(clock) = rest.strip_suffix(['Z', 'z']) {
        return Some((clock, 0));
    }
    let at = rest.rfind(['+', '-'])?;
    let (clock, offset) = rest.split_at(at);
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let (h, m) = offset[1..].split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    if h > 23 || m > 59 {
        return None;
    }
    Some((clock, sign * (h * 3600 + m * 60)))
}

/// Milliseconds into the day of `HH:MM:SS[.fff...]`.
fn parse_clock(clock: &str) -> Option<i64> {
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut parts = hms.split(':');
    let mut field = |max: i64| -> Option<i64> {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let v: i64 = p.parse().ok()?;
        (v <= max).then_some(v)
    };
    // A leap second (60) is read as the last second of its minute.
    let (h, m, s) = (field(23)?, field(59)?, field(60)?.min(59));
    if parts.next().is_some() || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let ms = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0, |acc, c| acc * 10 + i64::from(c - b'0'));
    Some(((h * 60 + m) * 60 + s) * 1000 + ms)
}

/// Unix ms as `2024-05-01T10:30:00.250Z`.
pub fn format_utc(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let in_day = ms % 86_400_000;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

/// A duration on the command line, in seconds (fractions allowed), as ms.
pub fn parse_seconds(text: &str) -> Result<u64, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if (0.0..1e12).contains(&s) => Ok((s * 1000.0).round() as u64),
        _ => Err(format!("`{text}` is not a number of seconds")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_parse_as_utc_milliseconds() {
        assert_eq!(parse_time("1970-01-01", false), Ok(0));
        assert_eq!(parse_time("1970-01-01", true), Ok(86_400_000));
        // 2024-05-01T00:00:00Z is 1714521600 s.
        assert_eq!(parse_time("2024-05-01", false), Ok(1_714_521_600_000));
        assert_eq!(
            parse_time("2024-05-01T10:30:00Z", false),
            Ok(1_714_521_600_000 + 37_800_000)
        );
        assert_eq!(
            parse_time("2024-05-01T10:30:00.25+02:00", true),
            Ok(1_714_521_600_000 + 37_800_000 + 250 - 7_200_000)
        );
        assert_eq!(
            parse_time("2024-05-01 10:30:00-01:30", false),
            Ok(1_714_521_600_000 + 37_800_000 + 5_400_000)
        );
        assert_eq!(parse_time("2024-02-29", false), Ok(1_709_164_800_000));
        assert_eq!(parse_time("1714521600000", false), Ok(1_714_521_600_000));
        for bad in [
            "",
            "2023-02-29",
            "2024-13-01",
            "2024-5-1",
            "2024-05-01T25:00:00Z",
            "2024-05-01T10:30:00",
            "2024-05-01T10:30Z",
            "yesterday",
            "1969-12-31T00:00:00Z",
        ] {
            assert!(parse_time(bad, false).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn utc_times_print_and_parse_back() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00.000Z");
        for ms in [
            1_714_559_400_250,
            1_709_164_800_000,
            951_782_400_000,
            4_102_444_799_999,
        ] {
            let text = format_utc(ms);
            assert_eq!(parse_time(&text, false), Ok(ms), "{text}");
        }
    }

    #[test]
    fn seconds_parse_to_milliseconds() {
        assert_eq!(parse_seconds("5"), Ok(5_000));
        assert_eq!(parse_seconds("1.5"), Ok(1_500));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    fn config(extra: &str) -> Result<Config, ConfigError> {
        let text = format!(
            r#"
[node]
id = "n1"
data_dir = "/tmp/carillon-recording-test"
[sip]
listen = "127.0.0.1:5060"
[rtp]
ip = "127.0.0.1"
port_min = 20000
port_max = 20100
[http]
listen = "127.0.0.1:8080"
[media]
hold_music = "hold.wav"
[[queues]]
name = "support"
skill = "support"
[[queues]]
name = "private"
skill = "support"
record = false
{extra}
"#
        );
        Config::from_toml(&text, "test.toml", PathBuf::from("/etc/carillon"))
    }

    #[test]
    fn queues_follow_the_section_unless_they_say_otherwise() {
        let c = config("").expect("config");
        assert!(c.recording.enabled);
        assert_eq!(
            dir(&c),
            PathBuf::from("/tmp/carillon-recording-test/recordings")
        );
        assert!(queue_records(&c, "support"));
        assert!(!queue_records(&c, "private"));
        assert!(queue_records(&c, "made-at-run-time"));
        let c = config("[recording]\nenabled = false\ndir = \"rec\"").expect("config");
        assert!(!queue_records(&c, "support"));
        assert_eq!(dir(&c), PathBuf::from("/etc/carillon/rec"));
    }

    #[test]
    fn bad_settings_name_their_key() {
        for (extra, key) in [
            ("[recording]\ndisk_limit_mb = 0", "recording.disk_limit_mb"),
            (
                "[recording]\ndisk_limit_mb = 10\ndisk_watermark_mb = 11",
                "recording.disk_watermark_mb",
            ),
            (
                "[recording]\ndisk_watermark_mb = 0",
                "recording.disk_watermark_mb",
            ),
            ("[recording]\ndir = \"\"", "recording.dir"),
            ("[recording]\nenabled = \"yes\"", "enabled"),
            ("[recording]\nsize = 1", "size"),
        ] {
            let e = config(extra).expect_err(extra).to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
    }
}
