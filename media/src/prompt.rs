//! Prompts: audio the node plays to callers (hold music, announcements), encoded once into
//! 20 ms frames for every codec so that playback only copies bytes.

use std::path::Path;

use crate::codec::Codec;
use crate::{wav, MediaError};

/// Samples in one 20 ms frame at 8 kHz: one RTP packet's payload.
pub const FRAME_SAMPLES: usize = 160;
/// Milliseconds of audio in one frame.
pub const FRAME_MS: u64 = 20;

/// One encoded 20 ms frame.
pub type Frame = [u8; FRAME_SAMPLES];

/// A prompt ready to play: the linear samples and their frames in each codec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    samples: Vec<i16>,
    pcmu: Vec<Frame>,
    pcma: Vec<Frame>,
}

impl Prompt {
    /// A prompt from 8 kHz 16-bit samples. A last partial frame is padded with silence.
    pub fn from_pcm(samples: Vec<i16>) -> Prompt {
        Prompt {
            pcmu: encode_frames(&samples, Codec::Pcmu),
            pcma: encode_frames(&samples, Codec::Pcma),
            samples,
        }
    }

    /// Loads a WAV file: RIFF/WAVE, 8000 Hz mono, 16-bit PCM or G.711 (format tags 7 and 6).
    /// Reads the file synchronously: load prompts at start-up, not on the call path.
    pub fn load_wav(path: impl AsRef<Path>) -> Result<Prompt, MediaError> {
        wav::read(path).map(Prompt::from_pcm)
    }

    /// The precomputed 20 ms frames in `codec`; empty for an empty prompt.
    pub fn frames(&self, codec: Codec) -> &[Frame] {
        match codec {
            Codec::Pcmu => &self.pcmu,
            Codec::Pcma => &self.pcma,
        }
    }

    /// The linear samples.
    pub fn samples(&self) -> &[i16] {
        &self.samples
    }

    /// Length in milliseconds, rounded up to whole frames.
    pub fn duration_ms(&self) -> u64 {
        self.pcmu.len() as u64 * FRAME_MS
    }
}

fn encode_frames(samples: &[i16], codec: Codec) -> Vec<Frame> {
    samples
        .chunks(FRAME_SAMPLES)
        .map(|chunk| {
            let mut frame = [codec.silence(); FRAME_SAMPLES];
            codec.encode_into(chunk, &mut frame);
            frame
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_encoded_and_padded() {
        let prompt = Prompt::from_pcm(vec![1000; FRAME_SAMPLES + 10]);
        assert_eq!(prompt.duration_ms(), 40);
        let frames = prompt.frames(Codec::Pcmu);
        assert_eq!(frames.len(), 2);
        assert!(frames[0].iter().all(|b| *b == 0xCE));
        assert!(frames[1][..10].iter().all(|b| *b == 0xCE));
        assert!(frames[1][10..].iter().all(|b| *b == 0xFF));
        assert!(prompt.frames(Codec::Pcma)[1][10..]
            .iter()
            .all(|b| *b == 0xD5));
    }

    #[test]
    fn empty_prompt_has_no_frames() {
        let prompt = Prompt::from_pcm(Vec::new());
        assert!(prompt.frames(Codec::Pcma).is_empty());
        assert_eq!(prompt.duration_ms(), 0);
    }
}
