//! The in-band detector against Q.24's acceptance and rejection figures, on generated tones.

use super::*;

const RATE: f32 = CLOCK_RATE_HZ as f32;
/// -10 dBm0 per tone, a typical phone's level.
const LEVEL: f32 = 7000.0;

/// xorshift64*: a small seeded generator of our own for reproducible noise.
struct Noise(u64);

impl Noise {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        // The top 24 bits as a uniform value in [-1, 1).
        (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Roughly Gaussian (sum of four uniforms), unit variance.
    fn gaussian(&mut self) -> f32 {
        let sum: f32 = (0..4).map(|_| self.next_f32()).sum();
        // Each uniform on [-1, 1) has variance 1/3; four of them, 4/3.
        sum / (4.0f32 / 3.0).sqrt()
    }
}

/// A signal built sample by sample as f32, then clipped to 16 bits.
#[derive(Default)]
struct Signal(Vec<f32>);

impl Signal {
    fn silence(mut self, ms: u32) -> Signal {
        self.0.extend(std::iter::repeat_n(0.0, samples(ms)));
        self
    }

    fn tones(mut self, ms: u32, parts: &[(f32, f32)]) -> Signal {
        let start = self.0.len();
        for i in 0..samples(ms) {
            let t = (start + i) as f32 / RATE;
            self.0
                .push(parts.iter().map(|(hz, a)| a * (TAU * hz * t).sin()).sum());
        }
        self
    }

    fn key(self, digit: char, ms: u32) -> Signal {
        let (row, column) = key_frequencies(digit).expect("test keys are keys");
        self.tones(ms, &[(row, LEVEL), (column, LEVEL)])
    }

    /// Adds white noise at `snr_db` below a single tone of amplitude `LEVEL`.
    fn noise(mut self, snr_db: f32, seed: u64) -> Signal {
        let tone_power = LEVEL * LEVEL / 2.0;
        let sigma = (tone_power / 10f32.powf(snr_db / 10.0)).sqrt();
        let mut noise = Noise(seed | 1);
        for x in &mut self.0 {
            *x += sigma * noise.gaussian();
        }
        self
    }

    fn pcm(&self) -> Vec<i16> {
        self.0
            .iter()
            .map(|x| x.clamp(-32767.0, 32767.0) as i16)
            .collect()
    }
}

fn samples(ms: u32) -> usize {
    (ms * CLOCK_RATE_HZ / 1000) as usize
}

/// Every digit the default detector reports for `pcm`, fed in 20 ms frames.
fn detect(pcm: &[i16]) -> String {
    let mut detector = DtmfDetector::default();
    let mut found = String::new();
    for frame in pcm.chunks(160) {
        found.extend(detector.push(frame));
    }
    found.extend(std::iter::from_fn(|| detector.take_pending()));
    found
}

#[test]
fn every_key_is_detected_once() {
    for digit in "0123456789*#ABCD".chars() {
        let pcm = Signal::default()
            .silence(30)
            .key(digit, 60)
            .silence(60)
            .pcm();
        assert_eq!(detect(&pcm), digit.to_string(), "key {digit}");
    }
}

#[test]
fn a_dialled_number_comes_out_in_order_one_event_per_press() {
    let mut signal = Signal::default().silence(20);
    for digit in "5551234#".chars() {
        signal = signal.key(digit, 70).silence(50);
    }
    assert_eq!(detect(&signal.pcm()), "5551234#");
}

#[test]
fn long_presses_give_one_event() {
    let pcm = Signal::default().key('7', 2000).silence(40).pcm();
    assert_eq!(detect(&pcm), "7");
}

#[test]
fn a_short_interruption_does_not_split_a_press() {
    let pcm = Signal::default()
        .key('3', 100)
        .silence(10)
        .key('3', 100)
        .silence(60)
        .pcm();
    assert_eq!(detect(&pcm), "3");
}

#[test]
fn the_same_key_twice_after_a_pause_is_two_presses() {
    let pcm = Signal::default()
        .key('9', 50)
        .silence(45)
        .key('9', 50)
        .silence(60)
        .pcm();
    assert_eq!(detect(&pcm), "99");
}

#[test]
fn duration_accepts_40_ms_and_rejects_under_23_ms() {
    // Every alignment of the tone against the detector's blocks.
    for offset in 0..BLOCK_SAMPLES {
        let lead = offset as f32 / RATE * 1000.0;
        let long = Signal(vec![0.0; offset]).key('8', 40).silence(60).pcm();
        assert_eq!(
            detect(&long),
            "8",
            "40 ms at offset {offset} ({lead:.1} ms)"
        );
        let short = Signal(vec![0.0; offset]).key('8', 23).silence(60).pcm();
        assert_eq!(detect(&short), "", "23 ms at offset {offset}");
    }
}

#[test]
fn frequency_deviation_within_1_5_percent_is_accepted_beyond_3_5_rejected() {
    for digit in "1470*#D5".chars() {
        let (row, column) = key_frequencies(digit).expect("a key");
        for (row_dev, column_dev) in [(1.0, 1.0), (-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0)] {
            let off = |dev: f32| {
                Signal::default()
                    .silence(20)
                    .tones(
                        60,
                        &[
                            (row * (1.0 + row_dev * dev), LEVEL),
                            (column * (1.0 + column_dev * dev), LEVEL),
                        ],
                    )
                    .silence(60)
                    .pcm()
            };
            assert_eq!(detect(&off(0.015)), digit.to_string(), "{digit} at 1.5%");
            assert_eq!(detect(&off(0.035)), "", "{digit} at 3.5%");
            assert_eq!(detect(&off(0.05)), "", "{digit} at 5%");
        }
        // One tone alone off by 3.5% is enough to reject.
        for (r, c) in [(1.035, 1.0), (1.0, 0.965)] {
            let pcm = Signal::default()
                .tones(60, &[(row * r, LEVEL), (column * c, LEVEL)])
                .silence(60)
                .pcm();
            assert_eq!(detect(&pcm), "", "{digit} with one tone off ({r}, {c})");
        }
    }
}

#[test]
fn twist_limits() {
    let (row, column) = key_frequencies('6').expect("a key");
    let twisted = |column_gain_db: f32| {
        let column_level = LEVEL * 10f32.powf(column_gain_db / 20.0);
        Signal::default()
            .tones(60, &[(row, LEVEL), (column, column_level)])
            .silence(60)
            .pcm()
    };
    // Normal twist: the high group weaker.
    assert_eq!(detect(&twisted(-3.0)), "6");
    assert_eq!(detect(&twisted(-6.0)), "");
    // Reverse twist: the high group stronger.
    assert_eq!(detect(&twisted(7.0)), "6");
    assert_eq!(detect(&twisted(10.0)), "");
}

#[test]
fn noise_at_20_db_snr_is_tolerated() {
    for seed in 1..=10 {
        let pcm = Signal::default()
            .silence(30)
            .key('2', 50)
            .silence(50)
            .key('0', 50)
            .silence(50)
            .noise(20.0, seed)
            .pcm();
        assert_eq!(detect(&pcm), "20", "seed {seed}");
    }
}

#[test]
fn heavy_noise_and_noise_alone_give_nothing() {
    for seed in 1..=10 {
        let buried = Signal::default().key('5', 100).noise(-3.0, seed).pcm();
        assert_eq!(detect(&buried), "", "seed {seed}");
        let hiss = Signal::default().silence(1000).noise(0.0, seed).pcm();
        assert_eq!(detect(&hiss), "", "seed {seed}");
    }
}

#[test]
fn quiet_tones_are_ignored() {
    let (row, column) = key_frequencies('1').expect("a key");
    let pcm = Signal::default()
        .tones(100, &[(row, 300.0), (column, 300.0)])
        .pcm();
    assert_eq!(detect(&pcm), "");
}

#[test]
fn single_tones_and_same_group_pairs_are_not_keys() {
    let single = Signal::default().tones(200, &[(770.0, LEVEL)]).pcm();
    assert_eq!(detect(&single), "");
    let two_rows = Signal::default()
        .tones(200, &[(697.0, LEVEL), (941.0, LEVEL)])
        .pcm();
    assert_eq!(detect(&two_rows), "");
    // A key plus a third tone as strong: neither group's winner dominates.
    let three = Signal::default()
        .tones(
            200,
            &[(697.0, LEVEL), (1209.0, LEVEL), (1336.0, LEVEL * 0.9)],
        )
        .pcm();
    assert_eq!(detect(&three), "");
}

#[test]
fn tones_with_strong_harmonics_are_talk_off_not_keys() {
    // A key's two frequencies played by an instrument: each with a second harmonic at -3 dB.
    let (row, column) = key_frequencies('9').expect("a key");
    let h = LEVEL * 0.7;
    let pcm = Signal::default()
        .tones(
            200,
            &[
                (row, LEVEL),
                (column, LEVEL),
                (2.0 * row, h),
                (2.0 * column, h),
            ],
        )
        .pcm();
    assert_eq!(detect(&pcm), "");
}

#[test]
fn speech_like_audio_gives_no_digits() {
    // Voiced sound: a glottal-pulse-like harmonic series whose pitch glides, shaped by two
    // formants, with noise; many harmonics sweep through the DTMF bands.
    let mut noise = Noise(7);
    let mut pcm = Vec::new();
    let mut phase = 0.0f32;
    for i in 0..samples(4000) {
        let t = i as f32 / RATE;
        let pitch_hz = 110.0 + 60.0 * (TAU * 0.7 * t).sin() + 30.0 * (TAU * 2.3 * t).sin();
        phase += TAU * pitch_hz / RATE;
        let formant1_hz = 700.0 + 300.0 * (TAU * 1.1 * t).sin();
        let formant2_hz = 1400.0 + 500.0 * (TAU * 0.9 * t).sin();
        let mut x = 0.0;
        let mut k = 1.0f32;
        while k * pitch_hz < 3600.0 {
            let f = k * pitch_hz;
            let gain = 1.0 / (1.0 + ((f - formant1_hz) / 150.0).powi(2))
                + 0.6 / (1.0 + ((f - formant2_hz) / 200.0).powi(2))
                + 0.05;
            x += gain * (k * phase).sin() / k.sqrt();
            k += 1.0;
        }
        // Syllables: 200 ms on, 80 ms off.
        let envelope = if (t * 1000.0) as u32 % 280 < 200 {
            1.0
        } else {
            0.05
        };
        pcm.push(
            (envelope * (4000.0 * x + 200.0 * noise.gaussian())).clamp(-32767.0, 32767.0) as i16,
        );
    }
    assert_eq!(detect(&pcm), "");
}

#[test]
fn hold_music_gives_no_digits() {
    let pcm = crate::tone::hold_music(10);
    assert_eq!(detect(&pcm), "");
}

#[test]
fn the_tone_generator_makes_detectable_keys() {
    let mut pcm = crate::tone::dtmf('#', 80, 0.2).expect("a key");
    pcm.extend(std::iter::repeat_n(0, 400));
    assert_eq!(detect(&pcm), "#");
    assert!(crate::tone::dtmf('x', 80, 0.2).is_none());
}

#[test]
fn long_slices_keep_every_digit() {
    let mut signal = Signal::default();
    for digit in "123456789".chars() {
        signal = signal.key(digit, 50).silence(50);
    }
    let mut detector = DtmfDetector::default();
    let mut found: String = detector.push(&signal.pcm()).into_iter().collect();
    found.extend(std::iter::from_fn(|| detector.take_pending()));
    assert_eq!(found, "123456789");
}
