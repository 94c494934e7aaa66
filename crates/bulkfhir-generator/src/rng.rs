//! Deterministic, platform-independent randomness and id derivation.
//!
//! Everything here is plain integer arithmetic (plus IEEE-exact `f64`
//! operations), so the same inputs give the same outputs on every machine
//! and every release of the crate's dependencies. Nothing reads a global
//! random stream: each patient and each shared resource gets its own
//! generator seeded from `(seed, stream, index)`, which lets resource types
//! or patient ranges be generated independently.

use std::fmt;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finalizer: a bijection on `u64` with good avalanche.
#[inline]
pub(crate) const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hashes `(seed, stream, index)` to 64 bits; for fixed `seed` and `stream`
/// it is a bijection of `index`.
#[inline]
pub(crate) const fn hash3(seed: u64, stream: u64, index: u64) -> u64 {
    let salt = mix64(mix64(seed ^ 0x5851_F42D_4C95_7F2D).wrapping_add(stream.wrapping_mul(GOLDEN)));
    mix64(salt.wrapping_add(index))
}

/// FNV-1a, used to turn fixed names into stream tags at compile time.
pub(crate) const fn fnv1a(s: &str) -> u64 {
    let bytes = s.as_bytes();
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
        i += 1;
    }
    h
}

/// A small SplitMix64 generator. Fast, portable and good enough for
/// synthetic data (this is not a cryptographic generator).
#[derive(Debug, Clone)]
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    /// A generator for the stream `(seed, stream, index)`.
    pub(crate) fn for_stream(seed: u64, stream: u64, index: u64) -> Self {
        Self { state: hash3(seed, stream, index) }
    }

    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// Uniform in `0..n` (`n > 0`; returns 0 for `n == 0`).
    #[inline]
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform index into a slice of length `len`.
    #[inline]
    pub(crate) fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// Uniform in the inclusive range `lo..=hi` (`lo <= hi`).
    #[inline]
    pub(crate) fn between(&mut self, lo: i64, hi: i64) -> i64 {
        let span = hi.wrapping_sub(lo) as u64;
        lo.wrapping_add(self.below(span.wrapping_add(1)) as i64)
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    #[inline]
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    #[inline]
    pub(crate) fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// `true` with probability `p`.
    #[inline]
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Approximately normal (Irwin–Hall sum of four uniforms, rescaled to
    /// unit variance); avoids `ln`/`cos`, whose results vary by platform.
    pub(crate) fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let s = self.unit() + self.unit() + self.unit() + self.unit() - 2.0;
        mean + sd * s * 1.732_050_807_568_877_2
    }

    /// A uniformly chosen element of a non-empty slice.
    #[inline]
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    /// An index chosen with the given relative weights (at least one > 0).
    pub(crate) fn weighted(&mut self, weights: impl Iterator<Item = u32> + Clone) -> usize {
        let total: u64 = weights.clone().map(u64::from).sum();
        let mut roll = self.below(total);
        let mut last = 0;
        for (i, w) in weights.enumerate() {
            let w = u64::from(w);
            if roll < w {
                return i;
            }
            roll -= w;
            last = i;
        }
        last
    }
}

/// A UUID-shaped resource id (version-4 layout), derived from
/// `(seed, resource type, key)` and stored as its 36 ASCII characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Id([u8; 36]);

impl Id {
    pub(crate) fn derive(seed: u64, type_tag: u64, key: u64) -> Self {
        let hi = hash3(seed, type_tag, key);
        let lo = hash3(seed, type_tag ^ 0xA076_1D64_78BD_642F, key);
        let hi = (hi & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
        let lo = (lo & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
        let mut out = [0u8; 36];
        let mut pos = 0;
        for (i, byte) in hi.to_be_bytes().into_iter().chain(lo.to_be_bytes()).enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                out[pos] = b'-';
                pos += 1;
            }
            out[pos] = HEX[usize::from(byte >> 4)];
            out[pos + 1] = HEX[usize::from(byte & 0xF)];
            pos += 2;
        }
        Self(out)
    }

    /// The id's 36 ASCII bytes (lowercase hex digits and dashes).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuid_shaped_and_stable() {
        let id = Id::derive(1, 2, 3);
        let s = format!("{id:?}");
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
        assert_eq!(s.matches('-').count(), 4);
        assert_eq!(format!("{:?}", Id::derive(1, 2, 3)), s);
        assert_ne!(Id::derive(1, 2, 4), id);
        assert_ne!(Id::derive(2, 2, 3), id);
        assert_ne!(Id::derive(1, 3, 3), id);
    }

    #[test]
    fn rng_ranges() {
        let mut r = Rng::for_stream(7, 1, 0);
        for _ in 0..10_000 {
            let v = r.between(-3, 3);
            assert!((-3..=3).contains(&v));
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(r.below(5) < 5);
        }
        let picks: Vec<usize> = (0..1000).map(|_| r.weighted([0u32, 3, 1].into_iter())).collect();
        assert!(picks.iter().all(|&i| i == 1 || i == 2));
    }
}
