//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! Every target reads its input the same way: the first byte picks the
//! version and the limits ([`version_from`], [`limits_from`]), the rest is
//! what the peer sent.

use bytes::BytesMut;
use junction_stomp::codec::{Decoded, Frame, Limits, Version, decode, encode};

/// Limits far above libFuzzer's default input size: only a
/// `content-length` that announces more reaches one.
pub const ROOMY: Limits = Limits {
    max_frame: 1 << 20,
    max_headers: 1 << 10,
    max_header_line: 1 << 16,
    max_body: 1 << 20,
};

/// Limits a short input reaches, so that every limit check runs.
pub const TIGHT: Limits = Limits {
    max_frame: 160,
    max_headers: 4,
    max_header_line: 32,
    max_body: 64,
};

/// The version a stream is decoded with, from the input's first byte:
/// `byte % 3` is 1.0, 1.1 or 1.2.
pub fn version_from(byte: u8) -> Version {
    match byte % 3 {
        0 => Version::V1_0,
        1 => Version::V1_1,
        _ => Version::V1_2,
    }
}

/// The limits a stream is decoded with, from the input's first byte:
/// `byte / 3 % 2` is [`ROOMY`] or [`TIGHT`].
pub fn limits_from(byte: u8) -> Limits {
    if (byte / 3).is_multiple_of(2) {
        ROOMY
    } else {
        TIGHT
    }
}

/// The first input byte that selects `version` and `limits` (see
/// [`version_from`] and [`limits_from`]).
pub fn selector(version: Version, tight: bool) -> u8 {
    let v = match version {
        Version::V1_0 => 0,
        Version::V1_1 => 1,
        Version::V1_2 => 2,
    };
    v + if tight { 3 } else { 0 }
}

/// Checks that `frame`, decoded with `version`, encodes and decodes back
/// to itself under the same version.
///
/// This holds for every frame the codec decodes: the decoder never yields
/// a header the encoder would have to change (no NUL, no CR or LF that the
/// version cannot escape, no colon in an unescaped name), and the encoder
/// writes back the headers it was given, in order, escaped. The bytes may
/// differ (CRLF lines come back as LF, a raw colon in a 1.1 or 1.2 value
/// as `\c`), so they are decoded with [`ROOMY`] limits: the round trip is
/// about content, not the input's limits.
pub fn assert_round_trip(frame: &Frame, version: Version) {
    let mut out = BytesMut::new();
    encode(frame, version, &mut out);
    let bytes = out.to_vec();
    match decode(&mut out, version, &ROOMY) {
        Ok(Decoded::Frame(again)) => assert_eq!(
            &again, frame,
            "round trip changed the frame ({version}); encoded as {bytes:?}"
        ),
        other => panic!(
            "re-encoded frame does not decode ({version}): {other:?}\n\
             frame: {frame:?}\nencoded as {bytes:?}"
        ),
    }
    assert!(
        out.is_empty(),
        "decoding the re-encoded frame left {} of its {} bytes",
        out.len(),
        bytes.len()
    );
}

pub use junction_stomp::codec::samples::{End, Mode, Outcome, decode_chunks};
