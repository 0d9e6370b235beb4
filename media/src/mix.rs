//! Mixing for a third party on a call (a supervisor): who hears whom, and the 20 ms mixer.
//!
//! A call has up to three parties: the caller, the agent and a third leg. A [`ThirdMode`]
//! says what each party hears ([`ThirdMode::hears`]). A direction in which a party hears
//! exactly one other party that is not the third leg stays on the relay's packet fast path;
//! every other direction is mixed here on the 20 ms clock.
//!
//! Sans-IO: [`Mixer::push`] takes a received G.711 payload, decodes it to linear and appends
//! it to that party's short sample buffer; [`Mixer::tick`] (once per 20 ms, driven by the
//! caller's clock) takes one frame from every buffer, and [`Mixer::mix_into`] sums the
//! frames a listener hears, with saturation, and encodes them in the listener's law. Nothing
//! allocates after [`Mixer::new`]; a buffer that overflows drops its oldest samples, so a
//! source whose clock runs fast never builds up delay.
//!
//! Call order: `new`, then any interleaving of `push`; per clock tick: `tick`, then
//! `mix_into` for each listener whose direction is mixed.

use crate::codec::Codec;
use crate::prompt::FRAME_SAMPLES;

/// Samples each party may buffer ahead of the clock (three frames, 60 ms): enough for the
/// jitter of a loopback or LAN phone, small enough to add little delay.
pub const BUFFERED_SAMPLES_MAX: usize = 3 * FRAME_SAMPLES;

/// A party on a call, as the mixer indexes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Party {
    Caller = 0,
    Agent = 1,
    Third = 2,
}

impl Party {
    pub const ALL: [Party; 3] = [Party::Caller, Party::Agent, Party::Third];

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The set of parties a listener hears.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Hears(u8);

impl Hears {
    pub const NOBODY: Hears = Hears(0);

    pub fn of(parties: &[Party]) -> Hears {
        Hears(parties.iter().fold(0, |m, p| m | p.bit()))
    }

    pub fn contains(self, party: Party) -> bool {
        self.0 & party.bit() != 0
    }

    /// Whether this is exactly the one party `party`.
    pub fn is_only(self, party: Party) -> bool {
        self.0 == party.bit()
    }
}

/// What a third leg on a call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThirdMode {
    /// Silent monitor: the third hears caller and agent; nobody hears the third.
    Monitor,
    /// Whisper: the third hears both; the agent hears caller and third; the caller hears
    /// the agent only.
    Whisper,
    /// Barge: everyone hears the other two.
    Barge,
    /// Consultation: agent and third talk; the caller hears neither (the node plays hold
    /// music to the caller).
    Consult,
}

impl ThirdMode {
    pub const ALL: [ThirdMode; 4] = [
        ThirdMode::Monitor,
        ThirdMode::Whisper,
        ThirdMode::Barge,
        ThirdMode::Consult,
    ];

    /// Who `listener` hears in this mode.
    pub fn hears(self, listener: Party) -> Hears {
        use Party::*;
        match (self, listener) {
            (ThirdMode::Consult, Caller) => Hears::NOBODY,
            (ThirdMode::Barge, Caller) => Hears::of(&[Agent, Third]),
            (_, Caller) => Hears::of(&[Agent]),
            (ThirdMode::Monitor, Agent) => Hears::of(&[Caller]),
            (ThirdMode::Consult, Agent) => Hears::of(&[Third]),
            (_, Agent) => Hears::of(&[Caller, Third]),
            (ThirdMode::Consult, Third) => Hears::of(&[Agent]),
            (_, Third) => Hears::of(&[Caller, Agent]),
        }
    }

    /// Whether what `listener` hears must be mixed on the clock rather than relayed packet
    /// by packet: anything but exactly the other one of caller and agent.
    pub fn is_mixed(self, listener: Party) -> bool {
        let hears = self.hears(listener);
        match listener {
            Party::Caller => !hears.is_only(Party::Agent) && hears != Hears::NOBODY,
            Party::Agent => !hears.is_only(Party::Caller) && hears != Hears::NOBODY,
            Party::Third => true,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ThirdMode::Monitor => "monitor",
            ThirdMode::Whisper => "whisper",
            ThirdMode::Barge => "barge",
            ThirdMode::Consult => "consult",
        }
    }
}

/// A fixed ring of linear samples for one party.
#[derive(Debug)]
struct SampleRing {
    samples: Box<[i16; BUFFERED_SAMPLES_MAX]>,
    start: usize,
    len: usize,
}

impl SampleRing {
    fn new() -> SampleRing {
        SampleRing {
            samples: Box::new([0; BUFFERED_SAMPLES_MAX]),
            start: 0,
            len: 0,
        }
    }

    fn push(&mut self, sample: i16) {
        if self.len == BUFFERED_SAMPLES_MAX {
            // Full: the oldest sample goes, so the delay stays bounded.
            self.start = (self.start + 1) % BUFFERED_SAMPLES_MAX;
            self.len -= 1;
        }
        let at = (self.start + self.len) % BUFFERED_SAMPLES_MAX;
        self.samples[at] = sample;
        self.len += 1;
    }

    /// Fills `frame` from the front; what is missing is silence. Returns the samples taken.
    fn take_frame(&mut self, frame: &mut [i16; FRAME_SAMPLES]) -> usize {
        let n = self.len.min(FRAME_SAMPLES);
        for (i, out) in frame.iter_mut().enumerate() {
            *out = if i < n {
                self.samples[(self.start + i) % BUFFERED_SAMPLES_MAX]
            } else {
                0
            };
        }
        self.start = (self.start + n) % BUFFERED_SAMPLES_MAX;
        self.len -= n;
        n
    }

    fn clear(&mut self) {
        self.start = 0;
        self.len = 0;
    }
}

/// The 20 ms mixer of one call.
#[derive(Debug)]
pub struct Mixer {
    rings: [SampleRing; 3],
    /// The frame each party contributes at the current tick.
    frames: [[i16; FRAME_SAMPLES]; 3],
    /// Whether the party had any audio for the current tick.
    live: [bool; 3],
}

impl Default for Mixer {
    fn default() -> Self {
        Mixer::new()
    }
}

impl Mixer {
    pub fn new() -> Mixer {
        Mixer {
            rings: [SampleRing::new(), SampleRing::new(), SampleRing::new()],
            frames: [[0; FRAME_SAMPLES]; 3],
            live: [false; 3],
        }
    }

    /// Adds one received payload from `from`, in `codec`.
    pub fn push(&mut self, from: Party, codec: Codec, payload: &[u8]) {
        let ring = &mut self.rings[from as usize];
        for byte in payload.iter().take(BUFFERED_SAMPLES_MAX) {
            ring.push(codec.decode(*byte));
        }
    }

    /// Forgets what `party` had buffered (its leg left or was replaced).
    pub fn clear(&mut self, party: Party) {
        self.rings[party as usize].clear();
        self.frames[party as usize] = [0; FRAME_SAMPLES];
        self.live[party as usize] = false;
    }

    /// Advances one frame: each party's next 20 ms (silence where it had none).
    pub fn tick(&mut self) {
        for party in Party::ALL {
            let i = party as usize;
            self.live[i] = self.rings[i].take_frame(&mut self.frames[i]) > 0;
        }
    }

    /// The current frame `listener` hears under `hears`, encoded in `codec` into `out`.
    /// Returns false when none of the parties heard had audio this tick (the caller may
    /// then send nothing, or silence).
    pub fn mix_into(&self, hears: Hears, codec: Codec, out: &mut [u8; FRAME_SAMPLES]) -> bool {
        let mut any = false;
        for (i, byte) in out.iter_mut().enumerate() {
            let mut sum = 0i32;
            for party in Party::ALL {
                if hears.contains(party) {
                    sum += i32::from(self.frames[party as usize][i]);
                }
            }
            // Three i16 fit an i32 with room to spare; the clamp is the saturation.
            *byte = codec.encode(sum.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16);
        }
        for party in Party::ALL {
            any |= hears.contains(party) && self.live[party as usize];
        }
        any
    }
}

/// The power of `hz` in `samples` (8 kHz), normalised by the squared length, by the
/// Goertzel recurrence: for tests and tools that check which tone a stream carries.
pub fn goertzel_power(samples: &[i16], hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / f64::from(crate::codec::CLOCK_RATE_HZ);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let n = samples.len().max(1) as f64;
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (n * n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tone;

    fn encoded(hz: f32, codec: Codec) -> Vec<u8> {
        tone::sine(hz, 20, 0.3)
            .into_iter()
            .map(|s| codec.encode(s))
            .collect()
    }

    fn decoded(frame: &[u8], codec: Codec) -> Vec<i16> {
        frame.iter().map(|b| codec.decode(*b)).collect()
    }

    #[test]
    fn modes_say_who_hears_whom() {
        use Party::*;
        let m = ThirdMode::Monitor;
        assert!(m.hears(Caller).is_only(Agent));
        assert!(m.hears(Agent).is_only(Caller));
        assert_eq!(m.hears(Third), Hears::of(&[Caller, Agent]));
        assert!(!m.is_mixed(Caller) && !m.is_mixed(Agent) && m.is_mixed(Third));
        let w = ThirdMode::Whisper;
        assert!(w.hears(Caller).is_only(Agent));
        assert_eq!(w.hears(Agent), Hears::of(&[Caller, Third]));
        assert!(!w.is_mixed(Caller) && w.is_mixed(Agent));
        let b = ThirdMode::Barge;
        assert_eq!(b.hears(Caller), Hears::of(&[Agent, Third]));
        assert!(b.is_mixed(Caller) && b.is_mixed(Agent));
        let c = ThirdMode::Consult;
        assert_eq!(c.hears(Caller), Hears::NOBODY);
        assert!(c.hears(Agent).is_only(Third));
        assert!(c.hears(Third).is_only(Agent));
        assert!(!c.is_mixed(Caller) && c.is_mixed(Agent));
        // Nobody ever hears themselves.
        for mode in ThirdMode::ALL {
            for p in Party::ALL {
                assert!(!mode.hears(p).contains(p), "{mode:?} {p:?}");
            }
        }
    }

    #[test]
    fn a_listener_hears_the_sum_of_its_sources_and_not_the_others() {
        let mut mixer = Mixer::new();
        mixer.push(Party::Caller, Codec::Pcmu, &encoded(440.0, Codec::Pcmu));
        mixer.push(Party::Agent, Codec::Pcma, &encoded(1000.0, Codec::Pcma));
        mixer.push(Party::Third, Codec::Pcmu, &encoded(700.0, Codec::Pcmu));
        mixer.tick();
        let mut out = [0u8; FRAME_SAMPLES];
        assert!(mixer.mix_into(
            ThirdMode::Whisper.hears(Party::Agent),
            Codec::Pcmu,
            &mut out
        ));
        let pcm = decoded(&out, Codec::Pcmu);
        let (p440, p1000, p700) = (
            goertzel_power(&pcm, 440.0),
            goertzel_power(&pcm, 1000.0),
            goertzel_power(&pcm, 700.0),
        );
        assert!(p440 > 100.0 * p1000, "caller {p440} agent {p1000}");
        assert!(p700 > 100.0 * p1000, "third {p700} agent {p1000}");
        // In the other law, the third hears caller and agent, not itself.
        assert!(mixer.mix_into(ThirdMode::Barge.hears(Party::Third), Codec::Pcma, &mut out));
        let pcm = decoded(&out, Codec::Pcma);
        assert!(goertzel_power(&pcm, 1000.0) > 100.0 * goertzel_power(&pcm, 700.0));
        assert!(goertzel_power(&pcm, 440.0) > 100.0 * goertzel_power(&pcm, 700.0));
    }

    #[test]
    fn loud_sources_saturate_instead_of_wrapping() {
        let mut mixer = Mixer::new();
        let loud = [Codec::Pcmu.encode(30_000); FRAME_SAMPLES];
        mixer.push(Party::Caller, Codec::Pcmu, &loud);
        mixer.push(Party::Agent, Codec::Pcmu, &loud);
        mixer.tick();
        let mut out = [0u8; FRAME_SAMPLES];
        mixer.mix_into(
            ThirdMode::Monitor.hears(Party::Third),
            Codec::Pcmu,
            &mut out,
        );
        assert!(decoded(&out, Codec::Pcmu).iter().all(|s| *s > 30_000));
    }

    #[test]
    fn a_silent_tick_says_so_and_buffers_stay_bounded() {
        let mut mixer = Mixer::new();
        let mut out = [0u8; FRAME_SAMPLES];
        mixer.tick();
        assert!(!mixer.mix_into(Hears::of(&[Party::Caller]), Codec::Pcmu, &mut out));
        // Ten frames arrive at once: only the newest three are kept.
        for n in 0..10u8 {
            mixer.push(Party::Caller, Codec::Pcmu, &[n; FRAME_SAMPLES]);
        }
        for n in 7..10u8 {
            mixer.tick();
            mixer.mix_into(Hears::of(&[Party::Caller]), Codec::Pcmu, &mut out);
            assert_eq!(out, [n; FRAME_SAMPLES]);
        }
        mixer.tick();
        assert!(!mixer.mix_into(Hears::of(&[Party::Caller]), Codec::Pcmu, &mut out));
        // A half frame is padded with silence.
        mixer.push(Party::Agent, Codec::Pcmu, &[0x10; 80]);
        mixer.tick();
        assert!(mixer.mix_into(Hears::of(&[Party::Agent]), Codec::Pcmu, &mut out));
        assert_eq!(out[79], 0x10);
        assert_eq!(out[80], Codec::Pcmu.silence());
        mixer.clear(Party::Agent);
        mixer.tick();
        assert!(!mixer.mix_into(Hears::of(&[Party::Agent]), Codec::Pcmu, &mut out));
    }
}
