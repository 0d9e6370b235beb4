//! Writes the synthesised hold music as a WAV prompt (8 kHz, 16-bit, mono).
//!
//! `cargo run -p carillon-media --example make_hold_wav [PATH] [SECONDS]`
//! Defaults: `examples/prompts/hold.wav` at the workspace root, 10 seconds.

use std::path::PathBuf;

use carillon_media::{tone, wav};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = match args.next() {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/prompts/hold.wav"),
    };
    let seconds: u32 = match args.next() {
        Some(s) => s.parse().map_err(|e| format!("SECONDS {s:?}: {e}"))?,
        None => 10,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let samples = tone::hold_music(seconds);
    wav::write_pcm16(&path, &samples)?;
    // Prove the file loads as a prompt before telling anyone it is ready.
    let prompt = carillon_media::Prompt::load_wav(&path)?;
    println!(
        "wrote {} ({} ms, {} samples)",
        path.display(),
        prompt.duration_ms(),
        samples.len()
    );
    Ok(())
}
