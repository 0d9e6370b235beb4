//! Synthesised audio: a gentle hold melody made by our own code, so the project ships no
//! third-party recordings.
//!
//! The melody is a music-box arpeggio over the I-V-vi-IV progression in C major (C, G, Am, F),
//! each note a sine with a weak octave overtone and a fast attack then exponential decay, over a
//! soft sustained bass. It is deterministic: the same length always gives the same samples.

use std::f32::consts::TAU;

use crate::codec::CLOCK_RATE_HZ;

/// One eighth note at 100 beats per minute.
const STEP_S: f32 = 0.3;
/// Steps per chord (one bar of eight eighths).
const STEPS_PER_CHORD: usize = 8;
/// Chord roots as MIDI notes with their triad qualities: C, G, Am, F.
const PROGRESSION: [(u8, [u8; 3]); 4] = [
    (60, [0, 4, 7]),
    (55, [0, 4, 7]),
    (57, [0, 3, 7]),
    (53, [0, 4, 7]),
];
/// Which chord tone each step of the bar plays (3 = the root an octave up).
const ARPEGGIO: [usize; STEPS_PER_CHORD] = [0, 1, 2, 3, 2, 1, 2, 1];
/// Peak level of the melody and of the bass, as fractions of full scale; together they stay
/// below -6 dBFS so G.711 never clips.
const MELODY_LEVEL: f32 = 0.28;
const BASS_LEVEL: f32 = 0.14;
/// Fade at the ends so the loop point does not click.
const FADE_S: f32 = 0.05;

/// `seconds` of hold music at 8 kHz, 16-bit mono.
pub fn hold_music(seconds: u32) -> Vec<i16> {
    let rate = CLOCK_RATE_HZ as f32;
    let len = seconds as usize * CLOCK_RATE_HZ as usize;
    let mut mix = vec![0f32; len];
    let step_len = (STEP_S * rate) as usize;
    let steps = len.div_ceil(step_len);
    for step in 0..steps {
        let (root, triad) = PROGRESSION[(step / STEPS_PER_CHORD) % PROGRESSION.len()];
        let start = step * step_len;
        let tone = ARPEGGIO[step % STEPS_PER_CHORD];
        let note = if tone == 3 {
            root + 12
        } else {
            root + triad[tone]
        };
        // Notes ring on past the next step, as a music box's do.
        add_note(
            &mut mix,
            start,
            4 * step_len,
            midi_hz(note),
            MELODY_LEVEL,
            6.0,
        );
        if step % STEPS_PER_CHORD == 0 {
            add_note(
                &mut mix,
                start,
                STEPS_PER_CHORD * step_len,
                midi_hz(root - 24),
                BASS_LEVEL,
                1.2,
            );
        }
    }
    let fade = (FADE_S * rate) as usize;
    let mut out = Vec::with_capacity(len);
    for (i, value) in mix.iter().enumerate() {
        let edge = i.min(len - 1 - i);
        let gain = if edge < fade {
            edge as f32 / fade as f32
        } else {
            1.0
        };
        // The clamp makes the cast exact; the levels above keep it from ever engaging.
        out.push((value * gain * f32::from(i16::MAX)).clamp(-32767.0, 32767.0) as i16);
    }
    out
}

/// A pure tone of `hz` for `ms` milliseconds at `level` (0..1 of full scale).
pub fn sine(hz: f32, ms: u32, level: f32) -> Vec<i16> {
    let len = (ms * CLOCK_RATE_HZ / 1000) as usize;
    let rate = CLOCK_RATE_HZ as f32;
    (0..len)
        .map(|i| ((TAU * hz * i as f32 / rate).sin() * level.clamp(0.0, 1.0) * 32767.0) as i16)
        .collect()
}

/// A DTMF key as two sines (row and column tone) for `ms` milliseconds, each tone at `level`
/// (0..1 of full scale); `None` for a character that is not a key. For simulated phones and
/// tests.
pub fn dtmf(digit: char, ms: u32, level: f32) -> Option<Vec<i16>> {
    let (row_hz, column_hz) = crate::dtmf::key_frequencies(digit)?;
    let row = sine(row_hz, ms, level);
    let column = sine(column_hz, ms, level);
    Some(
        row.iter()
            .zip(&column)
            .map(|(a, b)| a.saturating_add(*b))
            .collect(),
    )
}

fn midi_hz(note: u8) -> f32 {
    440.0 * 2f32.powf((f32::from(note) - 69.0) / 12.0)
}

/// Adds one enveloped note into `mix`: 8 ms attack, then exponential decay at `decay_per_s`.
fn add_note(mix: &mut [f32], start: usize, len: usize, hz: f32, level: f32, decay_per_s: f32) {
    let rate = CLOCK_RATE_HZ as f32;
    let attack = 0.008 * rate;
    let end = (start + len).min(mix.len());
    let Some(slots) = mix.get_mut(start..end) else {
        return;
    };
    let release = 0.03 * rate;
    let total = slots.len() as f32;
    for (i, slot) in slots.iter_mut().enumerate() {
        let t = i as f32;
        let rise = (t / attack).min(1.0);
        let fall = (-decay_per_s * t / rate).exp();
        // A short release at the note's end so a cut-off note does not click.
        let tail = ((total - t) / release).min(1.0);
        let phase = TAU * hz * t / rate;
        let voice = phase.sin() + 0.25 * (2.0 * phase).sin();
        *slot += level * rise * fall * tail * voice / 1.25;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_music_has_the_length_and_a_sane_level() {
        let samples = hold_music(10);
        assert_eq!(samples.len(), 80_000);
        let peak = samples.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
        assert!(peak > 8_000 && peak < 30_000, "peak {peak}");
        let rms = (samples.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / 80_000.0).sqrt();
        assert!(rms > 1_000.0, "rms {rms}: audible");
        // The loop point is quiet, so looping does not click.
        assert!(samples[0].abs() < 100 && samples[79_999].abs() < 1000);
        assert_eq!(samples, hold_music(10), "deterministic");
    }

    #[test]
    fn sine_tone() {
        let tone = sine(1000.0, 10, 0.5);
        assert_eq!(tone.len(), 80);
        assert_eq!(tone[0], 0);
        assert_eq!(tone[2], 16383); // a quarter period at 1 kHz / 8 kHz
    }
}
