//! The size limits the decoder enforces ("STOMP 1.2 Size Limits": "servers
//! MAY place maximum limits on the number of frame headers allowed in a
//! single frame, the maximum length of header lines, the maximum size of a
//! frame body"; past one, the server sends an ERROR frame and closes).

/// Bounds on one frame, all in bytes except `max_headers`. Each is checked
/// while the frame streams in, so the decoder never buffers or waits for
/// more than these allow (see the [module docs](super)).
///
/// For reference: ActiveMQ's STOMP transport allows 1,000 headers, header
/// lines of 10 KiB and 100 MiB of data (its `maxFrameSize`, 100 MB by
/// default); RabbitMQ's STOMP parser allows 1,000 headers, header lines of
/// 100 KiB and 100 MiB bodies. The defaults here take ActiveMQ's header
/// limits and a smaller body: a broker holds whole frames in memory, and
/// 16 MiB is far above what STOMP clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole frame: command line, header lines, blank line, body and
    /// the closing NUL (not the heart-beat EOLs around it). Default
    /// [`Limits::DEFAULT_MAX_FRAME`]: the largest body plus 64 KiB of
    /// command and headers.
    pub max_frame: usize,
    /// Header entries in one frame, repeats included. Default 1,000.
    pub max_headers: usize,
    /// One header line as sent (escaped), without its EOL. Default 10 KiB.
    /// The command line has its own fixed bound: the longest command.
    pub max_header_line: usize,
    /// The body, whether sized by `content-length` or ended by NUL.
    /// Default 16 MiB.
    pub max_body: usize,
}

impl Limits {
    /// Default [`Limits::max_body`]: 16 MiB.
    pub const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;
    /// Default [`Limits::max_frame`]: the largest body plus 64 KiB for the
    /// command and headers.
    pub const DEFAULT_MAX_FRAME: usize = Self::DEFAULT_MAX_BODY + 64 * 1024;
    /// Default [`Limits::max_headers`]: 1,000 (ActiveMQ's and RabbitMQ's).
    pub const DEFAULT_MAX_HEADERS: usize = 1000;
    /// Default [`Limits::max_header_line`]: 10 KiB (ActiveMQ's).
    pub const DEFAULT_MAX_HEADER_LINE: usize = 10 * 1024;

    /// The default limits.
    pub const DEFAULT: Limits = Limits {
        max_frame: Self::DEFAULT_MAX_FRAME,
        max_headers: Self::DEFAULT_MAX_HEADERS,
        max_header_line: Self::DEFAULT_MAX_HEADER_LINE,
        max_body: Self::DEFAULT_MAX_BODY,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}
