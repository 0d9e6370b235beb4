//! In-band DTMF detection (ITU-T Q.23 tones, Q.24-style acceptance) over 8 kHz linear audio.
//!
//! The detector correlates the signal with the eight DTMF frequencies and their second
//! harmonics in blocks of [`BLOCK_SAMPLES`] (10 ms). Each correlation keeps its phase against
//! absolute sample time, so sums over several blocks are plain sums, and the phase advance from
//! one block to the next measures the tone's real frequency. Decisions look at a window of the
//! last [`WINDOW_BLOCKS`] blocks (30 ms): over the window, one row and one column tone must stand
//! out (level, twist, the other tones of each group well below), lie within the frequency
//! tolerance and carry no strong second harmonic (voice and music do; a keypad does not); and in
//! *every* block of the window the pair must carry most of the block's energy, which is what
//! makes the window a duration test. A key press gives one event: after a digit is reported,
//! nothing more is reported until the window has failed [`RELEASE_WINDOWS`] times in a row.
//!
//! What that gives against Q.24's figures:
//! - frequency: deviations up to 1.5% are accepted and beyond 3.5% rejected (the decision point
//!   is [`DtmfConfig::frequency_tolerance`], 2.5% by default);
//! - duration: a 40 ms tone always covers three whole blocks and is accepted; a window passes
//!   only if each edge block is at least 3/4 covered, so a tone needs 25 ms at the very least and
//!   one under 23 ms is rejected;
//! - twist: the high-group tone may be up to [`DtmfConfig::normal_twist_db`] weaker or
//!   [`DtmfConfig::reverse_twist_db`] stronger than the low-group tone;
//! - an interruption of 10 ms does not split a key press; a pause of 40 ms separates two.
//!
//! Sans-IO: [`DtmfDetector::push`] takes samples and returns a digit; nothing here reads a clock.

use std::f32::consts::TAU;

use crate::codec::CLOCK_RATE_HZ;

/// Samples per analysis block: 10 ms at 8 kHz.
pub const BLOCK_SAMPLES: usize = 80;
/// Half a block: the unit of the coarse frequency estimate.
const HALF_BLOCK_SAMPLES: usize = BLOCK_SAMPLES / 2;
/// Blocks in a decision window (30 ms).
pub const WINDOW_BLOCKS: usize = 3;
/// Failed windows in a row after which a new key press may be reported.
pub const RELEASE_WINDOWS: u32 = 5;
/// Digits waiting to be returned when one `push` finds more than one.
const PENDING_DIGITS_MAX: usize = 16;

/// The low (row) group, Hz.
pub const ROW_HZ: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
/// The high (column) group, Hz.
pub const COLUMN_HZ: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
/// The keypad: `KEYPAD[row][column]`.
pub const KEYPAD: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// The row and column frequencies of a key, if it is one.
pub fn key_frequencies(digit: char) -> Option<(f32, f32)> {
    let digit = digit.to_ascii_uppercase();
    KEYPAD.iter().enumerate().find_map(|(row, keys)| {
        keys.iter()
            .position(|k| *k == digit)
            .map(|column| (ROW_HZ[row], COLUMN_HZ[column]))
    })
}

/// Acceptance thresholds. The defaults follow Q.24's common administration values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DtmfConfig {
    /// Weakest tone accepted, as a peak amplitude in 16-bit linear units (600 is about
    /// -31 dBm0 for G.711).
    pub tone_amplitude_min: f32,
    /// How much weaker the high-group tone may be than the low-group tone, dB.
    pub normal_twist_db: f32,
    /// How much stronger the high-group tone may be than the low-group tone, dB.
    pub reverse_twist_db: f32,
    /// How far each of the other tones of a group must stay below the chosen one, dB.
    pub group_margin_db: f32,
    /// The share of each block's energy the two tones must carry (the rest is noise, speech or
    /// silence before and after the tone).
    pub tone_energy_share_min: f32,
    /// How far a tone's second harmonic must stay below the tone, dB.
    pub harmonic_margin_db: f32,
    /// Largest accepted relative frequency deviation.
    pub frequency_tolerance: f32,
}

impl Default for DtmfConfig {
    fn default() -> DtmfConfig {
        DtmfConfig {
            tone_amplitude_min: 600.0,
            normal_twist_db: 4.0,
            reverse_twist_db: 8.0,
            group_margin_db: 8.0,
            tone_energy_share_min: 0.75,
            harmonic_margin_db: 10.0,
            frequency_tolerance: 0.025,
        }
    }
}

/// A complex correlation sum.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Complex {
    re: f32,
    im: f32,
}

impl Complex {
    fn add(self, other: Complex) -> Complex {
        Complex {
            re: self.re + other.re,
            im: self.im + other.im,
        }
    }

    fn mul(self, other: Complex) -> Complex {
        Complex {
            re: self.re * other.re - self.im * other.im,
            im: self.re * other.im + self.im * other.re,
        }
    }

    fn conj(self) -> Complex {
        Complex {
            re: self.re,
            im: -self.im,
        }
    }

    fn norm_sqr(self) -> f32 {
        self.re * self.re + self.im * self.im
    }

    fn arg(self) -> f32 {
        self.im.atan2(self.re)
    }
}

/// Frequencies correlated: the eight tones, then their second harmonics in the same order.
const TONES: usize = 8;
const PROBES: usize = 2 * TONES;

fn probe_hz(i: usize) -> f32 {
    let tone = i % TONES;
    let hz = if tone < 4 {
        ROW_HZ[tone]
    } else {
        COLUMN_HZ[tone - 4]
    };
    if i < TONES {
        hz
    } else {
        2.0 * hz
    }
}

/// What one block looked like.
#[derive(Clone, Copy, Debug, Default)]
struct Block {
    /// Per probe, the two half-block sums.
    halves: [[Complex; 2]; PROBES],
    energy: f32,
}

impl Block {
    fn sum(&self, probe: usize) -> Complex {
        self.halves[probe][0].add(self.halves[probe][1])
    }
}

/// The in-band DTMF detector for one audio stream. Feed it the stream's linear samples in order.
#[derive(Clone, Debug)]
pub struct DtmfDetector {
    config: DtmfConfig,
    /// Per probe, e^{-j w n} at the current sample, and its per-sample step e^{-j w}.
    phasor: [Complex; PROBES],
    step: [Complex; PROBES],
    current: Block,
    filled: usize,
    /// The last blocks, oldest first; `blocks_seen` says how many are real.
    window: [Block; WINDOW_BLOCKS],
    blocks_seen: usize,
    /// The digit reported for the current key press, if any.
    reported: Option<(usize, usize)>,
    failed_windows: u32,
    pending: [Option<char>; PENDING_DIGITS_MAX],
    pending_len: usize,
}

impl Default for DtmfDetector {
    fn default() -> DtmfDetector {
        DtmfDetector::new(DtmfConfig::default())
    }
}

impl DtmfDetector {
    pub fn new(config: DtmfConfig) -> DtmfDetector {
        let rate = CLOCK_RATE_HZ as f32;
        let step = std::array::from_fn(|i| {
            let w = TAU * probe_hz(i) / rate;
            Complex {
                re: w.cos(),
                im: -w.sin(),
            }
        });
        DtmfDetector {
            config,
            phasor: [Complex { re: 1.0, im: 0.0 }; PROBES],
            step,
            current: Block::default(),
            filled: 0,
            window: [Block::default(); WINDOW_BLOCKS],
            blocks_seen: 0,
            reported: None,
            failed_windows: RELEASE_WINDOWS,
            pending: [None; PENDING_DIGITS_MAX],
            pending_len: 0,
        }
    }

    /// Feeds samples (any count; a 20 ms frame is 160) and returns a newly pressed key, if any.
    /// Should one call find several key presses (only possible with long slices), the others
    /// come out of the following calls, or of [`DtmfDetector::take_pending`].
    pub fn push(&mut self, samples: &[i16]) -> Option<char> {
        for &sample in samples {
            let x = f32::from(sample);
            let half = usize::from(self.filled >= HALF_BLOCK_SAMPLES);
            self.current.energy += x * x;
            for probe in 0..PROBES {
                let p = self.phasor[probe];
                let sum = &mut self.current.halves[probe][half];
                sum.re += x * p.re;
                sum.im += x * p.im;
                self.phasor[probe] = p.mul(self.step[probe]);
            }
            self.filled += 1;
            if self.filled == HALF_BLOCK_SAMPLES {
                self.renormalise();
            } else if self.filled == BLOCK_SAMPLES {
                self.renormalise();
                self.end_block();
            }
        }
        self.take_pending()
    }

    /// The oldest detected key not yet returned.
    pub fn take_pending(&mut self) -> Option<char> {
        if self.pending_len == 0 {
            return None;
        }
        let digit = self.pending[0];
        self.pending.copy_within(1.., 0);
        self.pending_len -= 1;
        self.pending[self.pending_len] = None;
        digit
    }

    /// Keeps the phasors on the unit circle; f32 rounding would otherwise drift their length.
    fn renormalise(&mut self) {
        for p in &mut self.phasor {
            let norm = p.norm_sqr().sqrt();
            if norm > 0.0 {
                p.re /= norm;
                p.im /= norm;
            }
        }
    }

    fn end_block(&mut self) {
        self.window.rotate_left(1);
        self.window[WINDOW_BLOCKS - 1] = std::mem::take(&mut self.current);
        self.filled = 0;
        self.blocks_seen = self.blocks_seen.saturating_add(1);
        let found = if self.blocks_seen >= WINDOW_BLOCKS {
            self.evaluate()
        } else {
            None
        };
        match found {
            Some(digit) => {
                self.failed_windows = 0;
                if self.reported != Some(digit) {
                    // A different key without a gap is a new press too (a phone cannot do
                    // this, a recording can).
                    self.reported = Some(digit);
                    self.queue(KEYPAD[digit.0][digit.1]);
                }
            }
            None => {
                self.failed_windows = self.failed_windows.saturating_add(1);
                if self.failed_windows >= RELEASE_WINDOWS {
                    self.reported = None;
                }
            }
        }
    }

    fn queue(&mut self, digit: char) {
        if self.pending_len < PENDING_DIGITS_MAX {
            self.pending[self.pending_len] = Some(digit);
            self.pending_len += 1;
        }
    }

    /// The digit the window holds, if every check passes.
    fn evaluate(&self) -> Option<(usize, usize)> {
        let window_sum = |probe: usize| {
            self.window
                .iter()
                .fold(Complex::default(), |acc, b| acc.add(b.sum(probe)))
        };
        // |X| of a sine of peak amplitude A over N samples is A * N / 2.
        let scale = 2.0 / (WINDOW_BLOCKS * BLOCK_SAMPLES) as f32;
        let amplitude_sqr: [f32; PROBES] =
            std::array::from_fn(|i| window_sum(i).norm_sqr() * scale * scale);
        let strongest = |range: std::ops::Range<usize>| {
            range
                .max_by(|a, b| amplitude_sqr[*a].total_cmp(&amplitude_sqr[*b]))
                .unwrap_or(0)
        };
        let row = strongest(0..4);
        let column = strongest(4..8);
        // Levels, twist and harmonics from the mean of the per-block powers: a tone off by
        // 1.5% loses little over one 10 ms block but much over the coherent 30 ms sum, which
        // would turn frequency deviation into false twist.
        let block_scale = 2.0 / BLOCK_SAMPLES as f32;
        let block_power = |probe: usize| {
            self.window
                .iter()
                .map(|b| b.sum(probe).norm_sqr() * block_scale * block_scale)
                .sum::<f32>()
                / WINDOW_BLOCKS as f32
        };
        let (row_power, column_power) = (block_power(row), block_power(column));
        let min = self.config.tone_amplitude_min * self.config.tone_amplitude_min;
        if row_power < min || column_power < min {
            return None;
        }
        let margin = db_to_power(self.config.group_margin_db);
        let dominates = |best: usize, group: std::ops::Range<usize>| {
            group
                .filter(|i| *i != best)
                .all(|i| amplitude_sqr[i] * margin <= amplitude_sqr[best])
        };
        if !dominates(row, 0..4) || !dominates(column, 4..8) {
            return None;
        }
        // Twist: the high group weaker (normal) or stronger (reverse) than the low group.
        if column_power * db_to_power(self.config.normal_twist_db) < row_power
            || row_power * db_to_power(self.config.reverse_twist_db) < column_power
        {
            return None;
        }
        // Duration and noise: every block mostly the pair. A sine of amplitude A has mean
        // power A^2 / 2.
        for block in &self.window {
            let pair = (block.sum(row).norm_sqr() + block.sum(column).norm_sqr())
                * block_scale
                * block_scale;
            let mean_power = block.energy / BLOCK_SAMPLES as f32;
            if mean_power <= 0.0 || pair / 2.0 < self.config.tone_energy_share_min * mean_power {
                return None;
            }
        }
        let tones = [(row, ROW_HZ[row]), (column, COLUMN_HZ[column - 4])];
        for (index, &(probe, hz)) in tones.iter().enumerate() {
            if frequency_offset_hz(&self.window, probe).abs() > self.config.frequency_tolerance * hz
            {
                return None;
            }
            // A harmonic that falls close to the other tone of the pair (697 Hz doubled is
            // 1394 Hz, near 1336 Hz) would measure that tone's leakage: it is not checked.
            let other_hz = tones[1 - index].1;
            if (2.0 * hz - other_hz).abs() < 100.0 {
                continue;
            }
            if block_power(probe + TONES) * db_to_power(self.config.harmonic_margin_db)
                > block_power(probe)
            {
                return None;
            }
        }
        Some((row, column - 4))
    }
}

/// The tone's deviation from the probe frequency, from the phase advance of its correlation.
/// The block-to-block advance is precise but ambiguous beyond +-50 Hz; the half-block advances
/// are coarse but unambiguous to +-100 Hz and pick the right turn of the fine one.
fn frequency_offset_hz(window: &[Block; WINDOW_BLOCKS], probe: usize) -> f32 {
    let rate = CLOCK_RATE_HZ as f32;
    let mut coarse = Complex::default();
    let mut fine = Complex::default();
    let mut previous_half: Option<Complex> = None;
    let mut previous_block: Option<Complex> = None;
    for block in window {
        for half in block.halves[probe] {
            if let Some(p) = previous_half {
                coarse = coarse.add(half.mul(p.conj()));
            }
            previous_half = Some(half);
        }
        let sum = block.sum(probe);
        if let Some(p) = previous_block {
            fine = fine.add(sum.mul(p.conj()));
        }
        previous_block = Some(sum);
    }
    let coarse_hz = coarse.arg() * rate / (TAU * HALF_BLOCK_SAMPLES as f32);
    let fine_hz = fine.arg() * rate / (TAU * BLOCK_SAMPLES as f32);
    let turn_hz = rate / BLOCK_SAMPLES as f32;
    let turns = ((coarse_hz - fine_hz) / turn_hz).round();
    fine_hz + turns * turn_hz
}

fn db_to_power(db: f32) -> f32 {
    10f32.powf(db / 10.0)
}

#[cfg(test)]
#[path = "dtmf_test.rs"]
mod tests;
