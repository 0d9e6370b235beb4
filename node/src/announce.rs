//! Announcements to a waiting caller, composed from number prompts: "you are caller
//! number 3; expected wait about 2 minutes".
//!
//! Routing knows each waiting call's place in line and its expected wait
//! ([`carillon_routing::WaitEstimate`]); this module turns that into a list of words
//! ([`words`], pure), and the words into one prompt from the recorded word files in
//! `[announcements].prompt_dir` ([`Announcer::compose`]). The call task plays it in place
//! of the hold music, then goes back to the music: the first after `first_after_s` of
//! waiting, then every `every_s`.
//!
//! The word files are the project's own (`scripts/make-prompts.sh` speaks them with
//! espeak-ng, or writes tones when it is not installed): `0.wav` to `19.wav`, the tens
//! `20.wav` to `90.wav`, `hundred.wav`, and the phrases in [`PHRASES`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use carillon_media::Prompt;
use carillon_routing::WaitEstimate;
use serde::Deserialize;

use crate::config::ConfigError;

/// Phrase prompts, by file name without `.wav`.
pub const PHRASES: [&str; 6] = [
    "you_are_caller",
    "expected_wait",
    "minute",
    "minutes",
    "less_than_a_minute",
    "more_than_an_hour",
];
/// Places in line said in full; beyond, the place is left out of the announcement.
pub const POSITION_SAID_MAX: u32 = 999;
/// Silence between two words, in samples at 8 kHz (120 ms).
const GAP_SAMPLES: usize = 960;
/// Silence between the place-in-line sentence and the wait sentence (400 ms).
const SENTENCE_GAP_SAMPLES: usize = 3_200;
const MINUTE_MS: u64 = 60_000;
/// Waits said in minutes up to this many; longer ones as "more than an hour".
const MINUTES_SAID_MAX: u64 = 60;
const INTERVAL_S_MAX: u64 = 3_600;

/// `[announcements]`: position and expected-wait announcements to waiting callers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceSection {
    /// The word prompts (see the module doc for the file names).
    pub prompt_dir: PathBuf,
    /// Seconds of waiting before the first announcement.
    #[serde(default = "default_first_after_s")]
    pub first_after_s: u64,
    /// Seconds between announcements.
    #[serde(default = "default_every_s")]
    pub every_s: u64,
    /// Say the caller's place in line.
    #[serde(default = "default_true")]
    pub position: bool,
    /// Say the expected wait (left out while routing has no estimate).
    #[serde(default = "default_true")]
    pub expected_wait: bool,
}

fn default_first_after_s() -> u64 {
    15
}
fn default_every_s() -> u64 {
    45
}
fn default_true() -> bool {
    true
}

pub fn validate(
    section: &AnnounceSection,
    bad: &dyn Fn(String, String) -> ConfigError,
) -> Result<(), ConfigError> {
    for (key, v) in [
        ("first_after_s", section.first_after_s),
        ("every_s", section.every_s),
    ] {
        if !(1..=INTERVAL_S_MAX).contains(&v) {
            return Err(bad(
                format!("announcements.{key}"),
                format!("must be between 1 and {INTERVAL_S_MAX} seconds"),
            ));
        }
    }
    if !section.position && !section.expected_wait {
        return Err(bad(
            "announcements".into(),
            "position and expected_wait are both off: remove the section instead".into(),
        ));
    }
    Ok(())
}

/// The words of one announcement, in order; empty when there is nothing to say.
pub fn words(estimate: &WaitEstimate, position: bool, expected_wait: bool) -> Vec<String> {
    let mut out = Vec::new();
    if position && (1..=POSITION_SAID_MAX).contains(&estimate.position) {
        out.push("you_are_caller".to_string());
        out.extend(number_words(estimate.position));
    }
    if let Some(wait_ms) = estimate.expected_wait_ms.filter(|_| expected_wait) {
        if !out.is_empty() {
            out.push(String::new());
        }
        out.push("expected_wait".to_string());
        if wait_ms < MINUTE_MS {
            out.push("less_than_a_minute".to_string());
        } else {
            // Rounded to the nearest minute: 90 s is "about 2 minutes".
            let minutes = (wait_ms + MINUTE_MS / 2) / MINUTE_MS;
            if minutes > MINUTES_SAID_MAX {
                out.push("more_than_an_hour".to_string());
            } else {
                // At most 60: fits u32.
                out.extend(number_words(minutes as u32));
                out.push(if minutes == 1 { "minute" } else { "minutes" }.to_string());
            }
        }
    }
    out
}

/// English number words for 0 to 999, as prompt names: 115 is `1 hundred 15`, 342 is
/// `3 hundred 40 2`.
pub fn number_words(n: u32) -> Vec<String> {
    let mut out = Vec::new();
    let hundreds = n / 100;
    let rest = n % 100;
    if hundreds > 0 {
        out.push(hundreds.min(9).to_string());
        out.push("hundred".to_string());
    }
    if rest >= 20 {
        out.push((rest / 10 * 10).to_string());
        if rest % 10 > 0 {
            out.push((rest % 10).to_string());
        }
    } else if rest > 0 || hundreds == 0 {
        out.push(rest.to_string());
    }
    out
}

/// Every word file an announcement may use.
fn word_names() -> Vec<String> {
    let mut names: Vec<String> = (0..20).map(|n| n.to_string()).collect();
    names.extend((2..10).map(|t| (t * 10).to_string()));
    names.push("hundred".to_string());
    names.extend(PHRASES.iter().map(|p| p.to_string()));
    names
}

/// The loaded word prompts and the announcement settings.
pub struct Announcer {
    pub settings: AnnounceSection,
    words: HashMap<String, Arc<Prompt>>,
}

impl Announcer {
    /// Loads every word file from `dir` (resolved `prompt_dir`); a missing or unreadable
    /// one is an error naming it.
    pub fn load(settings: AnnounceSection, dir: &Path) -> anyhow::Result<Announcer> {
        let mut words = HashMap::new();
        for name in word_names() {
            let path = dir.join(format!("{name}.wav"));
            let prompt = Prompt::load_wav(&path).with_context(|| {
                format!(
                    "announcements.prompt_dir: cannot load {} (make the word prompts with \
                     scripts/make-prompts.sh)",
                    path.display()
                )
            })?;
            words.insert(name, Arc::new(prompt));
        }
        Ok(Announcer { settings, words })
    }

    /// One prompt saying `words` (an empty word is a pause between sentences); None when
    /// there is nothing to say.
    pub fn compose(&self, words: &[String]) -> Option<Prompt> {
        if words.is_empty() {
            return None;
        }
        let mut samples = Vec::new();
        for w in words {
            if w.is_empty() {
                samples.resize(samples.len() + SENTENCE_GAP_SAMPLES, 0);
                continue;
            }
            // `load` read every name `words` can produce.
            let prompt = self.words.get(w)?;
            samples.extend_from_slice(prompt.samples());
            samples.resize(samples.len() + GAP_SAMPLES, 0);
        }
        Some(Prompt::from_pcm(samples))
    }

    /// The announcement for `estimate` under the configured settings.
    pub fn announcement(&self, estimate: &WaitEstimate) -> Option<(Prompt, Vec<String>)> {
        let w = words(
            estimate,
            self.settings.position,
            self.settings.expected_wait,
        );
        self.compose(&w).map(|p| (p, w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn say(position: u32, wait_ms: Option<u64>) -> String {
        words(
            &WaitEstimate {
                position,
                expected_wait_ms: wait_ms,
            },
            true,
            true,
        )
        .join(" ")
    }

    #[test]
    fn numbers_are_said_as_english_words() {
        let said = |n| number_words(n).join(" ");
        assert_eq!(said(0), "0");
        assert_eq!(said(3), "3");
        assert_eq!(said(13), "13");
        assert_eq!(said(20), "20");
        assert_eq!(said(42), "40 2");
        assert_eq!(said(100), "1 hundred");
        assert_eq!(said(115), "1 hundred 15");
        assert_eq!(said(342), "3 hundred 40 2");
        assert_eq!(said(999), "9 hundred 90 9");
    }

    #[test]
    fn an_announcement_says_the_place_then_the_wait() {
        assert_eq!(
            say(3, Some(125_000)),
            "you_are_caller 3  expected_wait 2 minutes"
        );
        assert_eq!(
            say(1, Some(80_000)),
            "you_are_caller 1  expected_wait 1 minute"
        );
        assert_eq!(
            say(21, Some(20_000)),
            "you_are_caller 20 1  expected_wait less_than_a_minute"
        );
        assert_eq!(
            say(2, Some(4 * 3_600_000)),
            "you_are_caller 2  expected_wait more_than_an_hour"
        );
    }

    #[test]
    fn what_is_unknown_or_turned_off_is_left_out() {
        assert_eq!(say(4, None), "you_are_caller 4");
        assert_eq!(say(1_000, Some(60_000)), "expected_wait 1 minute");
        let e = WaitEstimate {
            position: 2,
            expected_wait_ms: Some(60_000),
        };
        assert_eq!(words(&e, false, true).join(" "), "expected_wait 1 minute");
        assert_eq!(words(&e, true, false).join(" "), "you_are_caller 2");
        assert!(words(&e, false, false).is_empty());
    }

    #[test]
    fn compose_joins_the_word_prompts_with_pauses() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (k, name) in word_names().iter().enumerate() {
            // Each word a distinct constant level, 100 ms long.
            let level = (k as i16 + 1) * 100;
            let samples = vec![level; 800];
            carillon_media::wav::write_pcm16(dir.path().join(format!("{name}.wav")), &samples)
                .expect("word file");
        }
        let settings = AnnounceSection {
            prompt_dir: dir.path().to_path_buf(),
            first_after_s: 1,
            every_s: 1,
            position: true,
            expected_wait: true,
        };
        let a = Announcer::load(settings, dir.path()).expect("words load");
        let w: Vec<String> = ["you_are_caller", "3", "", "minutes"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = a.compose(&w).expect("something to say");
        let s = p.samples();
        assert_eq!(s.len(), 3 * (800 + GAP_SAMPLES) + SENTENCE_GAP_SAMPLES);
        let level_of = |name: &str| {
            let k = word_names().iter().position(|n| n == name).expect("a word");
            (k as i16 + 1) * 100
        };
        assert_eq!(s[0], level_of("you_are_caller"));
        assert_eq!(s[800], 0);
        assert_eq!(s[800 + GAP_SAMPLES], level_of("3"));
        let third = 2 * (800 + GAP_SAMPLES) + SENTENCE_GAP_SAMPLES;
        assert_eq!(s[third - 1], 0);
        assert_eq!(s[third], level_of("minutes"));
        assert!(a.compose(&[]).is_none());
    }

    #[test]
    fn a_missing_word_file_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = AnnounceSection {
            prompt_dir: dir.path().to_path_buf(),
            first_after_s: 1,
            every_s: 1,
            position: true,
            expected_wait: true,
        };
        let err = Announcer::load(settings, dir.path())
            .err()
            .expect("no word files");
        assert!(format!("{err:#}").contains("0.wav"), "{err:#}");
    }
}
