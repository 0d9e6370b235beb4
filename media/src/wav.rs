//! RIFF/WAVE reading and writing for prompts: 8000 Hz mono, 16-bit PCM or G.711.
//!
//! Prompts are recorded by people with all sorts of tools, so every way a file can be unfit is
//! reported by name: which file, and what about it is wrong ("hold.wav: sample rate 44100 Hz,
//! expected 8000").

use std::path::Path;

use crate::codec::{Codec, CLOCK_RATE_HZ};
use crate::MediaError;

/// Longest prompt we load: ten minutes at 8 kHz.
pub const PROMPT_SAMPLES_MAX: usize = 10 * 60 * CLOCK_RATE_HZ as usize;

const FORMAT_PCM: u16 = 1;
const FORMAT_ALAW: u16 = 6;
const FORMAT_MULAW: u16 = 7;
const FORMAT_EXTENSIBLE: u16 = 0xFFFE;

/// Reads a WAV file into 16-bit linear samples.
pub fn read(path: impl AsRef<Path>) -> Result<Vec<i16>, MediaError> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| MediaError::Io {
        file: file.clone(),
        source,
    })?;
    decode(&bytes).map_err(|reason| MediaError::Wav { file, reason })
}

/// Decodes WAV bytes into 16-bit linear samples; the error names what is wrong.
pub fn decode(bytes: &[u8]) -> Result<Vec<i16>, String> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("not a WAV file (no RIFF/WAVE header)".to_owned());
    }
    let mut format: Option<Format> = None;
    let mut rest = &bytes[12..];
    while rest.len() >= 8 {
        let id = &rest[0..4];
        let declared = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let body_start = 8;
        // Streaming writers leave the size at 0 or 0xFFFFFFFF; take what is there.
        let body_len = declared.min(rest.len() - body_start);
        let body = &rest[body_start..body_start + body_len];
        match id {
            b"fmt " => format = Some(Format::parse(body)?),
            b"data" => {
                let format = format.ok_or("data chunk before fmt chunk")?;
                return format.samples(body);
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        let next = body_start + body_len + (body_len & 1);
        rest = rest.get(next..).unwrap_or(&[]);
    }
    Err(match format {
        None => "no fmt chunk".to_owned(),
        Some(_) => "no data chunk".to_owned(),
    })
}

#[derive(Clone, Copy, Debug)]
struct Format {
    encoding: Encoding,
}

#[derive(Clone, Copy, Debug)]
enum Encoding {
    Pcm16,
    G711(Codec),
}

impl Format {
    fn parse(body: &[u8]) -> Result<Format, String> {
        if body.len() < 16 {
            return Err(format!(
                "fmt chunk of {} bytes, expected at least 16",
                body.len()
            ));
        }
        let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
        let mut tag = u16_at(0);
        let channels = u16_at(2);
        let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
        let bits = u16_at(14);
        if tag == FORMAT_EXTENSIBLE {
            // The real tag is the first two bytes of the sub-format GUID at offset 24.
            if body.len() < 26 {
                return Err("WAVE_FORMAT_EXTENSIBLE fmt chunk too short".to_owned());
            }
            tag = u16_at(24);
        }
        if channels != 1 {
            return Err(format!("{channels} channels, expected 1 (mono)"));
        }
        if rate != CLOCK_RATE_HZ {
            return Err(format!("sample rate {rate} Hz, expected {CLOCK_RATE_HZ}"));
        }
        let encoding = match (tag, bits) {
            (FORMAT_PCM, 16) => Encoding::Pcm16,
            (FORMAT_PCM, other) => {
                return Err(format!("{other}-bit PCM, expected 16-bit"));
            }
            (FORMAT_MULAW, 8) => Encoding::G711(Codec::Pcmu),
            (FORMAT_ALAW, 8) => Encoding::G711(Codec::Pcma),
            (FORMAT_MULAW | FORMAT_ALAW, other) => {
                return Err(format!("{other}-bit G.711, expected 8-bit"));
            }
            (other, _) => {
                return Err(format!(
                    "format tag {other}, expected 1 (PCM), 6 (A-law) or 7 (mu-law)"
                ));
            }
        };
        Ok(Format { encoding })
    }

    fn samples(self, data: &[u8]) -> Result<Vec<i16>, String> {
        let count = match self.encoding {
            Encoding::Pcm16 => data.len() / 2,
            Encoding::G711(_) => data.len(),
        };
        if count > PROMPT_SAMPLES_MAX {
            return Err(format!(
                "{count} samples ({} s), longer than the {} s limit",
                count / CLOCK_RATE_HZ as usize,
                PROMPT_SAMPLES_MAX / CLOCK_RATE_HZ as usize
            ));
        }
        Ok(match self.encoding {
            Encoding::Pcm16 => data
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect(),
            Encoding::G711(codec) => data.iter().map(|b| codec.decode(*b)).collect(),
        })
    }
}

/// Encodes samples as a 16-bit PCM, 8000 Hz mono WAV file image.
pub fn encode_pcm16(samples: &[i16]) -> Vec<u8> {
    let data_len = samples.len() * 2;
    let mut out = Vec::with_capacity(44 + data_len);
    // Sizes beyond u32 cannot be written as WAV; prompts are capped far below that.
    let data_len32 = u32::try_from(data_len).unwrap_or(u32::MAX - 36);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&FORMAT_PCM.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&CLOCK_RATE_HZ.to_le_bytes());
    out.extend_from_slice(&(CLOCK_RATE_HZ * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len32.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// Writes samples as a 16-bit PCM, 8000 Hz mono WAV file.
pub fn write_pcm16(path: impl AsRef<Path>, samples: &[i16]) -> Result<(), MediaError> {
    let path = path.as_ref();
    std::fs::write(path, encode_pcm16(samples)).map_err(|source| MediaError::Io {
        file: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
        let mut out = b"RIFF\0\0\0\0WAVE".to_vec();
        out.extend_from_slice(b"LIST\x03\0\0\0abc\0"); // odd chunk with padding
        out.extend_from_slice(b"fmt \x10\0\0\0");
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&channels.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * u32::from(bits / 8)).to_le_bytes());
        out.extend_from_slice(&(bits / 8).to_le_bytes());
        out.extend_from_slice(&bits.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&u32::try_from(data.len()).expect("small").to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn pcm16_round_trip() {
        let samples = vec![0, 1, -1, i16::MAX, i16::MIN, 1234];
        assert_eq!(decode(&encode_pcm16(&samples)), Ok(samples));
    }

    #[test]
    fn g711_files_decode() {
        assert_eq!(
            decode(&wav(7, 1, 8000, 8, &[0xFF, 0x80])),
            Ok(vec![0, 32124])
        );
        assert_eq!(
            decode(&wav(6, 1, 8000, 8, &[0xD5, 0x2A])),
            Ok(vec![8, -32256])
        );
    }

    #[test]
    fn unfit_files_are_named_precisely() {
        let cases: [(Vec<u8>, &str); 8] = [
            (
                wav(1, 1, 44100, 16, &[0, 0]),
                "sample rate 44100 Hz, expected 8000",
            ),
            (
                wav(1, 2, 8000, 16, &[0, 0]),
                "2 channels, expected 1 (mono)",
            ),
            (wav(1, 1, 8000, 8, &[0]), "8-bit PCM, expected 16-bit"),
            (
                wav(3, 1, 8000, 32, &[0; 4]),
                "format tag 3, expected 1 (PCM), 6 (A-law) or 7 (mu-law)",
            ),
            (b"RIFF\0\0\0\0WAVE".to_vec(), "no fmt chunk"),
            (
                b"RIFX\0\0\0\0WAVE".to_vec(),
                "not a WAV file (no RIFF/WAVE header)",
            ),
            (
                b"RIFF\0\0\0\0WAVEdata\0\0\0\0".to_vec(),
                "data chunk before fmt chunk",
            ),
            (
                b"RIFF\0\0\0\0WAVEfmt \x04\0\0\0abcd".to_vec(),
                "fmt chunk of 4 bytes, expected at least 16",
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(decode(&bytes), Err(expected.to_owned()));
        }
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("carillon-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("hold.wav");
        std::fs::write(&path, wav(1, 1, 44100, 16, &[0, 0])).expect("write temp file");
        let err = read(&path).expect_err("44.1 kHz refused").to_string();
        assert!(
            err.ends_with("hold.wav: sample rate 44100 Hz, expected 8000"),
            "{err}"
        );
        let missing = read(dir.join("missing.wav"))
            .expect_err("missing file")
            .to_string();
        assert!(missing.contains("missing.wav: "), "{missing}");
        write_pcm16(&path, &[5, 6, 7]).expect("write");
        assert_eq!(read(&path).expect("read back"), vec![5, 6, 7]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn truncated_data_chunk_takes_what_is_there() {
        let mut bytes = wav(1, 1, 8000, 16, &[1, 0, 2, 0]);
        let len = bytes.len();
        bytes[len - 8..len - 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&bytes), Ok(vec![1, 2]));
    }
}
