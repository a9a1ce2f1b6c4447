//! The STOMP codec: bytes ⇄ [`Frame`] for STOMP 1.0, 1.1 and 1.2. Pure: no
//! I/O, no tokio, no session state beyond the protocol version the caller
//! passes.
//!
//! # The wire format ("STOMP 1.2 Frames", "Augmented BNF")
//!
//! ```text
//! COMMAND EOL
//! name:value EOL          (zero or more header lines)
//! EOL                     (a blank line ends the headers)
//! body NUL                (then optionally EOLs: heart-beats)
//! ```
//!
//! - **Lines.** EOL is `\n` or `\r\n`. STOMP 1.2 introduced the CR; it is
//!   accepted here in every version (lenient on input), and the encoder
//!   always writes a bare `\n`. A CR anywhere else in the command or a
//!   header line is an error ([`ErrorKind::StrayCr`]): the 1.2 grammar
//!   forbids it, and accepting it would make `k:v\r\r\n` ambiguous.
//! - **Commands** are case sensitive; anything but the fifteen of
//!   [`Command`] is [`ErrorKind::UnknownCommand`] (the adapter answers it
//!   with an ERROR frame).
//! - **Headers** are split on the first `:` only, so a value may contain
//!   more colons. Names and values are UTF-8 ("Value Encoding"); a NUL
//!   before the end of the headers is an error (it means a client forgot
//!   the blank line, and waiting would hang it). [`Headers`] keeps them in
//!   wire order; on repeats the first one wins ("Repeated Header
//!   Entries").
//! - **Escaping** ("Value Encoding"): in 1.1 and 1.2, header names and
//!   values unescape `\n` (LF), `\c` (`:`) and `\\` (`\`), and 1.2 also
//!   `\r` (CR); any other `\x`, or a `\` at the end, is fatal
//!   ([`ErrorKind::UndefinedEscape`]: "undefined escape sequences MUST be
//!   treated as a fatal protocol error"). STOMP 1.0 has no escaping, and
//!   CONNECT and CONNECTED frames are never escaped "to remain backward
//!   compatible with STOMP 1.0"; STOMP, CONNECT's 1.1 alias, is treated as
//!   CONNECT (it is decoded before any version is agreed). 1.0 values are
//!   not trimmed either: 1.1 and 1.2 forbid trimming, and a 1.0 value is
//!   kept as sent.
//! - **Body** ("Header content-length", "Body"): with a `content-length`
//!   header (its first occurrence), exactly that many octets, NULs
//!   included, then a NUL, whose absence is [`ErrorKind::MissingNul`];
//!   without one, the octets up to the first NUL. Which commands may
//!   carry a body is the adapter's rule ([`Command::may_have_body`]), not
//!   the codec's.
//! - **Heart-beats** ("Heart-beating"): EOLs between frames are consumed
//!   and reported as [`Decoded::HeartBeat`], so the caller can note that
//!   the peer is alive.
//!
//! # Limits ("Size Limits")
//!
//! Every [`Limits`] bound is enforced while the frame streams in, at the
//! first byte that breaks it, before anything beyond it is buffered or
//! waited for: a header line without its LF fails once it is longer than
//! the limit, a `content-length` above the body limit fails as soon as
//! that header line is read, a frame whose announced size is too large
//! fails at the blank line. The error for a stream therefore does not
//! depend on how it was split into reads.
//!
//! # Decoding
//!
//! A [`Decoder`] (one per connection) returns [`Decoded::Incomplete`]
//! without consuming anything until a whole frame is buffered, then
//! splits the frame off the buffer; the body is a zero-copy slice of it.
//! It remembers how far it got, so a frame that arrives in many small
//! reads is parsed once, not once per read. [`decode`] is the stateless
//! form (a fresh `Decoder` per call) for tests and one-shot use.
//!
//! # Encoding
//!
//! [`encode`] writes one frame for a version, escaping as that version
//! and command require, headers in order, then the body and a NUL. It
//! writes exactly the headers it is given: it adds no `content-length`
//! ([`Frame::with_body`] and [`Frame::set_content_length`] do, and every
//! frame with a body should carry one). Characters a header cannot carry
//! in that version become spaces (see [`encode`]).

mod decode;
mod encode;
mod error;
mod escape;
mod frame;
mod limits;
#[cfg(any(test, feature = "samples"))]
pub mod samples;

#[cfg(test)]
mod tests;

pub use decode::{Decoded, Decoder, decode};
pub use encode::{encode, encode_head, encode_heartbeat};
pub use error::{CodecError, ErrorKind};
pub use frame::{Command, Frame, Headers, Version};
pub use limits::Limits;
