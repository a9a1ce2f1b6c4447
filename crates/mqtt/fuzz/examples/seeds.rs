//! Writes a seed corpus for the fuzz targets from the codec's own samples
//! (`junction_mqtt::codec::samples`): every packet type of every version,
//! with every field and MQTT 5 property set somewhere, one packet
//! per file and one whole connection (CONNECT first) per version. Without
//! seeds a short run seldom builds an MQTT 5 CONNECT with properties.
//!
//! From crates/mqtt, `cargo run --manifest-path fuzz/Cargo.toml --example
//! seeds -- fuzz/corpus` writes `fuzz/corpus/decode/` and
//! `fuzz/corpus/decode_split/`, each in its target's input format.

use std::fs;
use std::path::Path;

use bytes::BytesMut;
use junction_mqtt::codec::*;

/// The first input byte that makes the targets start with `v`
/// (see `version_from`).
fn version_byte(v: Option<ProtocolVersion>) -> u8 {
    match v {
        None => 0,
        Some(ProtocolVersion::V3_1) => 1,
        Some(ProtocolVersion::V3_1_1) => 2,
        Some(ProtocolVersion::V5) => 3,
    }
}

fn write(root: &Path, name: &str, version: Option<ProtocolVersion>, stream: &[u8]) {
    let first = version_byte(version);
    let mut decode = vec![first];
    decode.extend_from_slice(stream);
    fs::write(root.join("decode").join(name), decode).expect("write seed");
    // Split in the middle of the stream.
    let at = u16::try_from(stream.len() / 2).unwrap_or(u16::MAX);
    let mut split = vec![first];
    split.extend_from_slice(&at.to_le_bytes());
    split.extend_from_slice(stream);
    fs::write(root.join("decode_split").join(name), split).expect("write seed");
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .expect("usage: seeds CORPUS_ROOT (e.g. fuzz/corpus)");
    let root = Path::new(&root);
    for target in ["decode", "decode_split"] {
        fs::create_dir_all(root.join(target)).expect("create corpus dir");
    }
    let mut count = 0;
    for v in [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ] {
        let tag = version_byte(Some(v));
        let mut connection = BytesMut::new();
        for (i, p) in samples::samples(v).iter().enumerate() {
            let mut one = BytesMut::new();
            encode(p, v, &mut one).expect("seed packet encodes");
            // Each packet alone, under its own version (CONNECT also before
            // any version).
            write(root, &format!("seed-v{tag}-{i:02}"), Some(v), &one);
            if let Packet::Connect(_) = p {
                write(root, &format!("seed-v{tag}-{i:02}-first"), None, &one);
            }
            // The whole connection: the full CONNECT, then everything else.
            if i != 1 {
                connection.extend_from_slice(&one);
            }
            count += 1;
        }
        write(root, &format!("seed-v{tag}-connection"), None, &connection);
    }
    println!("wrote {count} packets as seeds under {}", root.display());
}
