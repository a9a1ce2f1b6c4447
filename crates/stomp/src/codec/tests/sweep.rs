//! A deterministic sweep standing in for the fuzz targets on stable:
//! mutated sample streams fed to the decoder under every version, with
//! default and tight limits. It must never panic, must end the same way
//! fed whole or one byte at a time, and every frame it yields must
//! re-encode and decode to itself.

use super::*;

/// xorshift64*: tiny, deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const CASES: usize = 4_000;

const TIGHT: Limits = Limits {
    max_frame: 96,
    max_headers: 4,
    max_header_line: 24,
    max_body: 32,
};

#[test]
fn stomp_sweep_of_mutated_streams_never_panics_and_ignores_splits() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut corpus = Vec::new();
    for v in Version::ALL {
        for f in samples::samples(v) {
            corpus.push((enc(&f, v), v));
        }
    }
    let mut decoded = 0;
    for _ in 0..CASES {
        let (bytes, v) = &corpus[rng.below(corpus.len())];
        let mut bytes = bytes.clone();
        for _ in 0..=rng.below(4) {
            if bytes.is_empty() {
                break;
            }
            let at = rng.below(bytes.len());
            match rng.below(5) {
                0 => bytes[at] ^= 1 << rng.below(8),
                1 => bytes[at] = [b'\n', b'\r', b':', b'\\', 0][rng.below(5)],
                2 => bytes.truncate(at.max(1)),
                3 => bytes.insert(at, rng.next() as u8),
                _ => {
                    bytes.remove(at);
                }
            }
        }
        for limits in [BIG, TIGHT] {
            let whole = feed_whole(&bytes, *v, &limits);
            assert_eq!(
                feed_bytewise(&bytes, *v, &limits),
                whole,
                "{v} {limits:?} {bytes:?}"
            );
            for f in &whole.frames {
                assert_eq!(&frame(&enc(f, *v), *v), f, "{v} {bytes:?}");
            }
            decoded += whole.frames.len();
        }
    }
    // The mutations must leave many frames whole.
    assert!(decoded > 1000, "only {decoded} frames decoded");
}
