//! The codec's error. A [`CodecError`] means the peer sent bytes the
//! connection cannot go on from: the adapter answers with an ERROR frame
//! whose `message` is the error's text (and `receipt-id` the failed frame's
//! receipt, when it is known), then closes ("STOMP 1.2 ERROR": the server
//! "MUST then close the connection just after sending the ERROR frame").
//! Encoding cannot fail, so there is no encode error.

use thiserror::Error;

use super::frame::Frame;

/// What was wrong with the bytes. The `Display` text is short and fit for
/// an ERROR frame's `message` header.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ErrorKind {
    /// The command line is not one of the fifteen commands (exact case).
    /// Holds the line as sent (lossy UTF-8), at most 13 bytes of it: a
    /// longer line is rejected as soon as its 13th byte arrives.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// A NUL octet in the command line or a header line. Usually a frame
    /// sent without the blank line that ends its headers.
    #[error("NUL octet before the end of the frame headers")]
    UnexpectedNul,
    /// A carriage return that does not end a line.
    #[error("carriage return inside the command or a header line")]
    StrayCr,
    /// More header entries than [`Limits::max_headers`](super::Limits).
    #[error("more than {max} headers")]
    TooManyHeaders {
        /// The limit in force.
        max: usize,
    },
    /// A header line longer than [`Limits::max_header_line`](super::Limits).
    #[error("header line longer than {max} bytes")]
    HeaderLineTooLong {
        /// The limit in force.
        max: usize,
    },
    /// A header line without a `:`.
    #[error("header line without ':'")]
    MissingColon,
    /// A header name or value that is not UTF-8 ("Value Encoding").
    #[error("header is not valid UTF-8")]
    InvalidUtf8,
    /// A `\` followed by anything but a defined escape, or ending a header
    /// name or value ("undefined escape sequences MUST be treated as a
    /// fatal protocol error"). Holds the sequence, e.g. `\t`.
    #[error("undefined escape sequence {0} in a header")]
    UndefinedEscape(String),
    /// A `content-length` that is not a decimal number (holds the start of
    /// the value).
    #[error("invalid content-length {0:?}")]
    BadContentLength(String),
    /// A body longer than [`Limits::max_body`](super::Limits), announced by
    /// `content-length` or found while looking for the NUL.
    #[error("body larger than {max} bytes")]
    BodyTooLarge {
        /// The limit in force.
        max: usize,
    },
    /// A frame larger than [`Limits::max_frame`](super::Limits).
    #[error("frame larger than {max} bytes")]
    FrameTooLarge {
        /// The limit in force.
        max: usize,
    },
    /// The octet after a `content-length` body is not NUL.
    #[error("body does not end with NUL after content-length bytes")]
    MissingNul,
}

/// Why bytes from the peer could not be decoded: an [`ErrorKind`], and the
/// failed frame's `receipt` when it was read before the error. After any
/// of these the read buffer is in an unspecified state and the connection
/// must close.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{kind}")]
pub struct CodecError {
    kind: ErrorKind,
    receipt: Option<String>,
}

impl CodecError {
    pub(crate) fn new(kind: ErrorKind, receipt: Option<String>) -> Self {
        CodecError { kind, receipt }
    }

    /// What was wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The `receipt` header of the frame that failed, best effort: set
    /// when the error was found after that header was read (a limit or
    /// malformed line further down, the body), so the ERROR frame can
    /// carry it as `receipt-id` ("STOMP 1.2 ERROR"). Never set for CONNECT
    /// and STOMP frames, which may not ask for receipts.
    pub fn receipt(&self) -> Option<&str> {
        self.receipt.as_deref()
    }

    /// The ERROR frame that reports this error: `message` is the error's
    /// text, `receipt-id` the failed frame's receipt when known.
    pub fn to_frame(&self) -> Frame {
        let frame = Frame::error(self.kind.to_string());
        match &self.receipt {
            Some(receipt) => frame.header("receipt-id", receipt.clone()),
            None => frame,
        }
    }
}

impl From<ErrorKind> for CodecError {
    fn from(kind: ErrorKind) -> Self {
        CodecError::new(kind, None)
    }
}
