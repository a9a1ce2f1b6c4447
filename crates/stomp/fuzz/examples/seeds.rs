//! Writes a seed corpus for the fuzz targets from the codec's own samples
//! (`junction_stomp::codec::samples`): every command of every version,
//! with escapes, repeated headers and binary bodies, one frame per file
//! and one whole connection (CONNECT first, heart-beats between frames)
//! per version, each under roomy and under tight limits. Without seeds a
//! short run seldom builds a frame with escapes and a content-length body.
//!
//! From crates/stomp, `cargo run --manifest-path fuzz/Cargo.toml --example
//! seeds -- fuzz/corpus` writes `fuzz/corpus/decode/` and
//! `fuzz/corpus/decode_split/`, each in its target's input format.

use std::fs;
use std::path::Path;

use bytes::BytesMut;
use junction_stomp::codec::{Version, encode, encode_heartbeat, samples};
use junction_stomp_fuzz::selector;

fn write(root: &Path, name: &str, first: u8, stream: &[u8]) {
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
    for v in Version::ALL {
        let mut connection = BytesMut::new();
        for (i, frame) in samples::samples(v).iter().enumerate() {
            let mut one = BytesMut::new();
            encode(frame, v, &mut one);
            for (tight, tag) in [(false, "roomy"), (true, "tight")] {
                write(
                    root,
                    &format!("seed-{v}-{tag}-{i:02}"),
                    selector(v, tight),
                    &one,
                );
            }
            connection.extend_from_slice(&one);
            encode_heartbeat(&mut connection);
            count += 1;
        }
        for (tight, tag) in [(false, "roomy"), (true, "tight")] {
            write(
                root,
                &format!("seed-{v}-{tag}-connection"),
                selector(v, tight),
                &connection,
            );
        }
    }
    println!("wrote {count} frames as seeds under {}", root.display());
}
