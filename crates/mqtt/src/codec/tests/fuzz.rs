//! A deterministic no-panic sweep standing in for a fuzz target (no
//! nightly here): random byte strings and mutated valid packets fed to
//! `decode` under every version, with a small size cap. Any outcome but a
//! panic passes; a decoded packet must re-encode.

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

/// Decodes everything `bytes` holds, as a connection would, until the
/// input runs out or fails; returns how many packets decoded.
fn drain(bytes: &[u8], version: Option<ProtocolVersion>) -> usize {
    let mut buf = BytesMut::from(bytes);
    let mut version = version;
    let mut decoded = 0;
    while let Ok(Some(packet)) = decode(&mut buf, version, 4096) {
        decoded += 1;
        let v = match &packet {
            Packet::Connect(c) => c.version,
            _ => version.unwrap_or(ProtocolVersion::V5),
        };
        version = Some(v);
        let mut out = BytesMut::new();
        // Decoded packets hold only what the version can carry.
        encode(&packet, v, &mut out).expect("a decoded packet re-encodes");
    }
    decoded
}

const CASES: usize = 20_000;

#[test]
fn mqtt_decode_never_panics_on_random_bytes() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut decoded = 0;
    for i in 0..CASES {
        let len = rng.below(64);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Steer half the cases past the first-byte check.
        if i % 2 == 0 && !bytes.is_empty() {
            bytes[0] = (bytes[0] & 0xF0).max(0x10) | [0, 2][rng.below(2)];
            if bytes.len() > 1 {
                bytes[1] = (len - 2) as u8;
            }
        }
        decoded += drain(&bytes, None);
        for v in VERSIONS {
            decoded += drain(&bytes, Some(v));
        }
    }
    // The steering must let some inputs through to the packet parsers.
    assert!(decoded > 50, "only {decoded} packets decoded");
}

#[test]
fn mqtt_decode_never_panics_on_mutated_packets() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut corpus = Vec::new();
    for v in VERSIONS {
        for p in samples(v) {
            corpus.push((enc(&p, v).to_vec(), version_for(&p, v), v));
        }
    }
    let mut decoded = 0;
    for _ in 0..CASES {
        let (bytes, version, v) = &corpus[rng.below(corpus.len())];
        let mut bytes = bytes.clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len());
            match rng.below(4) {
                0 => bytes[at] ^= 1 << rng.below(8),
                1 => bytes[at] = rng.next() as u8,
                2 => bytes.truncate(at.max(1)),
                _ => bytes.insert(at, rng.next() as u8),
            }
        }
        decoded += drain(&bytes, *version) + drain(&bytes, Some(*v));
    }
    assert!(decoded > 1000, "only {decoded} packets decoded");
}
