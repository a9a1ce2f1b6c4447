//! Property tests: generated frames survive encode → decode in every
//! version; a stream decodes the same whole, one byte at a time, split at
//! random points, and with a fresh decoder per read; and STOMP-like junk
//! under tight limits ends the same way (same frames, same error) however
//! it is split.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use super::*;

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![
        Just(Version::V1_0),
        Just(Version::V1_1),
        Just(Version::V1_2)
    ]
}

fn command() -> impl Strategy<Value = Command> {
    (0..Command::ALL.len()).prop_map(|i| Command::ALL[i])
}

/// What a header can hold and still round-trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carries {
    /// 1.2 escaping: anything but NUL.
    Everything,
    /// 1.1 escaping: no CR either.
    NoCr,
    /// No escaping: no CR or LF, and in names no colon.
    Plain,
}

fn carries(command: Command, v: Version) -> Carries {
    match escape::Escaping::of(command, v) {
        escape::Escaping::V1_2 => Carries::Everything,
        escape::Escaping::V1_1 => Carries::NoCr,
        escape::Escaping::None => Carries::Plain,
    }
}

/// Header text rich in the octets that need escaping, plus Unicode.
fn text(carries: Carries, name: bool) -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        3 => proptest::char::range('a', 'e'),
        1 => Just(':'),
        1 => Just('\\'),
        1 => Just('\n'),
        1 => Just('\r'),
        1 => Just(' '),
        1 => any::<char>(),
    ];
    vec(ch, 0..10).prop_map(move |chars| {
        chars
            .into_iter()
            .filter(|&c| match c {
                '\0' => false,
                '\r' => carries == Carries::Everything,
                '\n' => carries != Carries::Plain,
                ':' => !(name && carries == Carries::Plain),
                _ => true,
            })
            .collect()
    })
}

/// Any frame `v` can carry; bodies with NULs get a content-length, some
/// NUL-free bodies go without.
fn frame_for(v: Version) -> impl Strategy<Value = Frame> {
    command().prop_flat_map(move |command| {
        let c = carries(command, v);
        let header = (text(c, true), text(c, false))
            .prop_filter("content-length is the codec's", |(n, _)| {
                n != "content-length"
            });
        (vec(header, 0..6), vec(any::<u8>(), 0..40), any::<bool>()).prop_map(
            move |(headers, body, sized)| {
                let frame = Frame {
                    headers: headers.into_iter().collect(),
                    ..Frame::new(command)
                };
                if sized || body.contains(&0) {
                    frame.with_body(Bytes::from(body))
                } else {
                    Frame {
                        body: Bytes::from(body),
                        ..frame
                    }
                }
            },
        )
    })
}

/// A version and frames for it.
fn frames() -> impl Strategy<Value = (Version, Vec<Frame>)> {
    version().prop_flat_map(|v| (Just(v), vec(frame_for(v), 1..6)))
}

/// EOLs to put between frames (heart-beats).
fn eols() -> impl Strategy<Value = Vec<u8>> {
    vec(prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..])], 0..3).prop_map(|e| e.concat())
}

/// `bytes` cut at `points` (any number, any order).
fn split<'a>(bytes: &'a [u8], points: &[Index]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = points.iter().map(|i| i.index(bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut from = 0;
    for cut in cuts {
        chunks.push(&bytes[from..cut]);
        from = cut;
    }
    chunks.push(&bytes[from..]);
    chunks
}

/// Like [`feed`], but with a fresh decoder for every call, as the
/// stateless [`decode`] is used.
fn feed_stateless(v: Version, limits: &Limits, chunks: &[&[u8]]) -> Outcome {
    crate::codec::samples::decode_chunks(v, limits, crate::codec::samples::Mode::Stateless, chunks)
}

/// Pieces of STOMP-like input: commands, EOLs, colons, escapes, NULs,
/// content-lengths, and random bytes.
fn junk() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        2 => (0..Command::ALL.len()).prop_map(|i| Command::ALL[i].as_str().as_bytes().to_vec()),
        4 => prop_oneof![
            Just(&b"\n"[..]),
            Just(&b"\r\n"[..]),
            Just(&b"\r"[..]),
            Just(&b":"[..]),
            Just(&b"\0"[..]),
            Just(&b"\\n"[..]),
            Just(&b"\\c"[..]),
            Just(&b"\\r"[..]),
            Just(&b"\\t"[..]),
            Just(&b"receipt:r"[..]),
            Just(&b"content-length:"[..]),
        ]
        .prop_map(<[u8]>::to_vec),
        2 => (0u32..30).prop_map(|n| n.to_string().into_bytes()),
        2 => vec(any::<u8>(), 1..6),
        2 => vec(b'a'..=b'c', 1..12),
    ];
    vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

/// Tight limits, so that every limit is hit somewhere.
fn tight_limits() -> impl Strategy<Value = Limits> {
    (1usize..80, 0usize..4, 0usize..16, 0usize..24).prop_map(
        |(max_frame, max_headers, max_header_line, max_body)| Limits {
            max_frame,
            max_headers,
            max_header_line,
            max_body,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn stomp_prop_frames_round_trip_in_their_version((v, frames) in frames()) {
        for f in &frames {
            prop_assert_eq!(&frame(&enc(f, v), v), f);
        }
    }

    #[test]
    fn stomp_prop_streams_decode_the_same_however_split(
        (v, frames) in frames(),
        gaps in vec(eols(), 6),
        points in vec(any::<Index>(), 0..6),
    ) {
        let mut bytes = Vec::new();
        for (f, gap) in frames.iter().zip(&gaps) {
            bytes.extend_from_slice(gap);
            bytes.extend(enc(f, v));
        }
        let whole = feed_whole(&bytes, v, &BIG);
        prop_assert_eq!(&whole.frames, &frames);
        prop_assert_eq!(&whole.end, &End::Incomplete(Vec::new()));
        prop_assert_eq!(&feed_bytewise(&bytes, v, &BIG), &whole);
        let chunks = split(&bytes, &points);
        prop_assert_eq!(&feed(v, &BIG, &chunks), &whole);
        prop_assert_eq!(&feed_stateless(v, &BIG, &chunks), &whole);
    }

    #[test]
    fn stomp_prop_junk_ends_the_same_however_split(
        v in version(),
        bytes in junk(),
        limits in tight_limits(),
        points in vec(any::<Index>(), 0..6),
    ) {
        let whole = feed_whole(&bytes, v, &limits);
        prop_assert_eq!(&feed_bytewise(&bytes, v, &limits), &whole);
        let chunks = split(&bytes, &points);
        prop_assert_eq!(&feed(v, &limits, &chunks), &whole);
        prop_assert_eq!(&feed_stateless(v, &limits, &chunks), &whole);
    }
}
