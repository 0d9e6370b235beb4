//! The canonical encoding behind [`crate::Acd::state_hash`]: FNV-1a (64-bit) over a byte
//! stream we define ourselves, so the hash does not depend on the platform, the Rust
//! version (std's `Hash` output may change between releases) or a serde format.
//!
//! Rules: integers as 8 little-endian bytes; strings and collections length-first; enum
//! variants as one tag byte followed by their fields. Every domain type destructures
//! itself exhaustively in its `Canon` impl, so a new field cannot be left out silently.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// A running FNV-1a hash.
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Fnv(FNV_OFFSET)
    }

    pub(crate) fn bytes(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    /// An enum variant's tag.
    pub(crate) fn tag(&mut self, tag: u8) {
        self.bytes(&[tag]);
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

/// A value that can feed itself into the canonical encoding.
pub(crate) trait Canon {
    fn canon(&self, h: &mut Fnv);
}

impl Canon for u64 {
    fn canon(&self, h: &mut Fnv) {
        h.bytes(&self.to_le_bytes());
    }
}

impl Canon for u32 {
    fn canon(&self, h: &mut Fnv) {
        u64::from(*self).canon(h);
    }
}

impl Canon for usize {
    fn canon(&self, h: &mut Fnv) {
        // usize is at most 64 bits on every platform Rust supports.
        (*self as u64).canon(h);
    }
}

impl Canon for u8 {
    fn canon(&self, h: &mut Fnv) {
        u64::from(*self).canon(h);
    }
}

impl<T: Canon> Canon for Vec<T> {
    fn canon(&self, h: &mut Fnv) {
        self.len().canon(h);
        for value in self {
            value.canon(h);
        }
    }
}

impl<A: Canon, B: Canon, C: Canon> Canon for (A, B, C) {
    fn canon(&self, h: &mut Fnv) {
        self.0.canon(h);
        self.1.canon(h);
        self.2.canon(h);
    }
}

impl Canon for bool {
    fn canon(&self, h: &mut Fnv) {
        h.tag(u8::from(*self));
    }
}

impl Canon for str {
    fn canon(&self, h: &mut Fnv) {
        self.len().canon(h);
        h.bytes(self.as_bytes());
    }
}

impl Canon for String {
    fn canon(&self, h: &mut Fnv) {
        self.as_str().canon(h);
    }
}

impl<T: Canon> Canon for Option<T> {
    fn canon(&self, h: &mut Fnv) {
        match self {
            None => h.tag(0),
            Some(value) => {
                h.tag(1);
                value.canon(h);
            }
        }
    }
}

impl<A: Canon, B: Canon> Canon for (A, B) {
    fn canon(&self, h: &mut Fnv) {
        self.0.canon(h);
        self.1.canon(h);
    }
}

impl<K: Canon, V: Canon> Canon for BTreeMap<K, V> {
    fn canon(&self, h: &mut Fnv) {
        self.len().canon(h);
        for (key, value) in self {
            key.canon(h);
            value.canon(h);
        }
    }
}

impl<T: Canon> Canon for BTreeSet<T> {
    fn canon(&self, h: &mut Fnv) {
        self.len().canon(h);
        for value in self {
            value.canon(h);
        }
    }
}

impl<T: Canon> Canon for VecDeque<T> {
    fn canon(&self, h: &mut Fnv) {
        self.len().canon(h);
        for value in self {
            value.canon(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_vectors() {
        let mut h = Fnv::new();
        assert_eq!(h.finish(), 0xcbf2_9ce4_8422_2325);
        h.bytes(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
        let mut h = Fnv::new();
        h.bytes(b"foobar");
        assert_eq!(h.finish(), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn length_prefix_separates_fields() {
        let hash = |parts: &[&str]| {
            let mut h = Fnv::new();
            for part in parts {
                part.canon(&mut h);
            }
            h.finish()
        };
        assert_ne!(hash(&["ab", "c"]), hash(&["a", "bc"]));
    }
}
