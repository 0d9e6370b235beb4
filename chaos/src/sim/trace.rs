//! The ordered record of one simulated run: messages delivered and dropped, faults,
//! elections, commits and routing events, each stamped with the virtual time.
//!
//! Every line feeds a running hash, so two runs compare cheaply; the lines themselves are
//! kept only when asked for (`--trace FILE`, the determinism test).

use std::fmt::Write as _;

/// A run's trace.
#[derive(Debug, Default)]
pub struct Trace {
    keep: bool,
    lines: Vec<String>,
    hash: u64,
    count: u64,
    scratch: String,
}

/// FNV-1a over whatever is formatted into it.
struct Fnv(u64);

impl std::fmt::Write for Fnv {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        for b in s.bytes() {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
        Ok(())
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Trace {
    pub fn new(keep: bool) -> Trace {
        Trace {
            keep,
            hash: FNV_OFFSET,
            ..Trace::default()
        }
    }

    /// Records one event at virtual time `at_ms`. The line is hashed as it is formatted;
    /// it is built as a string only when the lines are kept.
    pub fn push(&mut self, at_ms: u64, what: std::fmt::Arguments<'_>) {
        self.count += 1;
        if self.keep {
            self.scratch.clear();
            // Writing into a String cannot fail.
            let _ = write!(self.scratch, "{at_ms:>7} {what}");
            let mut h = Fnv(self.hash);
            let _ = h.write_str(&self.scratch);
            let _ = h.write_str("\n");
            self.hash = h.0;
            self.lines.push(self.scratch.clone());
        } else {
            let mut h = Fnv(self.hash);
            // Hashing never fails.
            let _ = writeln!(h, "{at_ms:>7} {what}");
            self.hash = h.0;
        }
    }

    /// The hash of every line so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The lines, when kept.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    pub fn into_lines(self) -> Vec<String> {
        self.lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_or_not_a_trace_hashes_the_same() {
        let mut kept = Trace::new(true);
        let mut hashed = Trace::new(false);
        for t in [&mut kept, &mut hashed] {
            t.push(3, format_args!("vote n{}->n{} sent", 1, 2));
            t.push(12, format_args!("healed"));
        }
        assert_eq!(kept.hash(), hashed.hash());
        assert_eq!(kept.lines(), ["      3 vote n1->n2 sent", "     12 healed"]);
        assert!(hashed.lines().is_empty());
    }
}
