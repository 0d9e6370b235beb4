//! The timeline's placement of frames, the writer's files, and the disk alarms.

use super::*;

fn frame(channel: Channel, arrival_ms: u64, ssrc: u32, timestamp: u32, byte: u8) -> RecordedFrame {
    let mut payload = [0u8; FRAME_PAYLOAD_BYTES_MAX];
    payload[..160].fill(byte);
    RecordedFrame {
        channel,
        codec: Codec::Pcmu,
        arrival_us: arrival_ms * 1000,
        ssrc,
        timestamp,
        len: 160,
        payload,
    }
}

/// mu-law byte for a loud positive sample (decodes to 988) and its value.
const LOUD: u8 = 0xCE;
const LOUD_VALUE: i16 = 988;
const QUIET: u8 = 0xFF;

fn drain(timeline: &mut StereoTimeline) -> Vec<[i16; 2]> {
    let mut all = Vec::new();
    while let Some(second) = timeline.ready(true) {
        all.extend(second);
    }
    all
}

#[test]
fn both_legs_share_one_timeline_with_silence_in_gaps() {
    let mut t = StereoTimeline::new();
    // Caller from 0 ms, agent's first packet arrives at 100 ms with a wild RTP timestamp.
    for i in 0..10u32 {
        t.push(&frame(
            Channel::Caller,
            u64::from(i) * 20,
            1,
            5000 + i * 160,
            LOUD,
        ));
    }
    for i in 0..5u32 {
        t.push(&frame(
            Channel::Agent,
            100 + u64::from(i) * 20,
            2,
            9_000_000 + i * 160,
            LOUD,
        ));
    }
    let all = drain(&mut t);
    assert_eq!(all.len(), 1600, "200 ms of audio");
    assert!(
        all[..1600].iter().all(|s| s[0] == LOUD_VALUE),
        "caller continuous, left"
    );
    assert!(
        all[..800].iter().all(|s| s[1] == 0),
        "agent silent before it started"
    );
    assert!(
        all[800..].iter().all(|s| s[1] == LOUD_VALUE),
        "agent right from 100 ms"
    );
}

#[test]
fn jitter_does_not_move_audio_and_loss_is_silence() {
    let mut t = StereoTimeline::new();
    t.push(&frame(Channel::Caller, 0, 1, 0, LOUD));
    // Packet 1 lost; packet 2 arrives 15 ms late; packet 3 before it (reordered).
    t.push(&frame(Channel::Caller, 50, 1, 480, LOUD));
    t.push(&frame(Channel::Caller, 55, 1, 320, QUIET));
    let all = drain(&mut t);
    assert_eq!(all.len(), 640);
    assert!(all[..160].iter().all(|s| s[0] == LOUD_VALUE));
    assert!(
        all[160..480].iter().all(|s| s[0] == 0),
        "lost packet and quiet one"
    );
    assert!(
        all[480..].iter().all(|s| s[0] == LOUD_VALUE),
        "reordered packet in its place"
    );
}

#[test]
fn a_new_ssrc_or_a_jump_reanchors_on_arrival() {
    let mut t = StereoTimeline::new();
    t.push(&frame(Channel::Agent, 0, 1, 0, LOUD));
    t.push(&frame(Channel::Agent, 40, 7, 123, LOUD)); // new source: at 40 ms
    t.push(&frame(Channel::Agent, 60, 7, 123 + 160 + 8000 * 60, LOUD)); // RTP jumps a minute
    let all = drain(&mut t);
    assert_eq!(all.len(), 640);
    assert!(all[160..320].iter().all(|s| s[1] == 0));
    assert!(all[320..].iter().all(|s| s[1] == LOUD_VALUE));
}

#[test]
fn seconds_come_out_once_the_reorder_window_has_passed() {
    let mut t = StereoTimeline::new();
    for i in 0..59u32 {
        t.push(&frame(Channel::Caller, u64::from(i) * 20, 1, i * 160, LOUD));
    }
    assert!(
        t.ready(false).is_none(),
        "1.18 s is under 1 s + the window: not yet"
    );
    t.push(&frame(Channel::Caller, 1180, 1, 59 * 160, LOUD));
    assert_eq!(t.ready(false).map(|s| s.len()), Some(8000));
    assert!(t.ready(false).is_none());
    // A frame for the flushed second is too late.
    t.push(&frame(Channel::Caller, 1300, 1, 40 * 160, LOUD));
    assert_eq!(t.frames_dropped, 1);
}

fn recorder(dir: &Path, watermark: u64, limit: u64) -> Arc<Recorder> {
    Recorder::new(Recording {
        dir: dir.to_path_buf(),
        enabled: true,
        disk_watermark_bytes: watermark,
        disk_limit_bytes: limit,
    })
    .expect("recorder in a temp dir")
}

fn target(recorder: &Arc<Recorder>, call_id: &str) -> RecordingTarget {
    RecordingTarget {
        recorder: Arc::clone(recorder),
        call_id: call_id.to_string(),
        agent: "alice".into(),
        queue: "support".into(),
        caller: "+15551234".into(),
        start_unix_ms: 1_700_000_000_000,
    }
}

#[test]
fn the_file_is_valid_after_each_flushed_second_and_complete_at_the_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rec = recorder(dir.path(), u64::MAX, u64::MAX);
    let mut writer = rec.open(target(&rec, "abc/../x@host")).expect("opens");
    let path = writer.meta.path.clone();
    assert_eq!(
        path.file_name().and_then(|n| n.to_str()),
        Some("1700000000000-abc_.._x_host.wav")
    );
    for i in 0..130u32 {
        writer.push(&frame(Channel::Caller, u64::from(i) * 20, 1, i * 160, LOUD));
        writer.push(&frame(Channel::Agent, u64::from(i) * 20, 2, i * 160, QUIET));
    }
    // 2.6 s pushed: two seconds flushed. A reader now (as after a crash) sees exactly them.
    writer.recorder.wait_written();
    let (left, right) = read_stereo(&path).expect("valid mid-call");
    assert_eq!((left.len(), right.len()), (16_000, 16_000));
    assert!(left.iter().all(|s| *s == LOUD_VALUE) && right.iter().all(|s| *s == 0));
    let recorder = Arc::clone(&writer.recorder);
    let meta = writer.finish(3);
    recorder.wait_written();
    assert_eq!(meta.duration_ms, 2600);
    assert_eq!(meta.frames_dropped, 3);
    assert_eq!((meta.agent.as_str(), meta.paused), ("alice", false));
    let (left, _) = read_stereo(&path).expect("valid at the end");
    assert_eq!(left.len(), 20_800);
    assert_eq!(rec.status().used_bytes, 44 + 20_800 * 4);
}

#[test]
fn watermark_raises_an_alarm_and_the_limit_pauses() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Watermark after about 1 s of audio, limit after about 2 s.
    let rec = recorder(dir.path(), 40_000, 70_000);
    let mut writer = rec.open(target(&rec, "call-1")).expect("opens");
    for i in 0..200u32 {
        writer.push(&frame(Channel::Caller, u64::from(i) * 20, 1, i * 160, LOUD));
    }
    let status = rec.status();
    assert!(status.watermark_alarm && status.limit_alarm, "{status:?}");
    let meta = writer.finish(0);
    rec.wait_written();
    assert!(meta.paused);
    assert_eq!(
        meta.duration_ms, 2000,
        "two seconds were written before the limit"
    );
    assert!(read_stereo(&meta.path).is_ok(), "paused file stays valid");
    // New recordings are refused while over the limit.
    assert!(matches!(
        rec.open(target(&rec, "call-2")),
        Err(MediaError::RecordingPaused { .. })
    ));
    assert_eq!(rec.status().recordings_refused, 1);
    // A restarted node counts what is on disk; a rescan after space is freed clears the alarms.
    let again = recorder(dir.path(), 40_000, 70_000);
    assert_eq!(again.status().used_bytes, rec.status().used_bytes);
    std::fs::remove_file(&meta.path).expect("operator frees space");
    rec.rescan().expect("rescan");
    let status = rec.status();
    assert_eq!(status.used_bytes, 0);
    assert!(!status.watermark_alarm && !status.limit_alarm);
    assert!(rec.open(target(&rec, "call-3")).is_ok());
}

#[test]
fn disabled_recording_refuses() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rec = Recorder::new(Recording {
        dir: dir.path().join("never"),
        enabled: false,
        disk_watermark_bytes: 1,
        disk_limit_bytes: 2,
    })
    .expect("a disabled recorder needs no directory");
    assert!(matches!(
        rec.open(target(&rec, "c")),
        Err(MediaError::RecordingDisabled)
    ));
    assert!(!dir.path().join("never").exists());
}
