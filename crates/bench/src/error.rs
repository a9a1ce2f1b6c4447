//! The generator's one error type. Setup failures (bad flags, a broker that
//! cannot be reached or refuses us) end the run without a RESULT line;
//! failures mid-run still print what was measured.

use crate::cli::Proto;

/// Everything that can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Flags that make no sense together.
    #[error("usage: {0}")]
    Usage(String),
    /// Could not open or set up a connection.
    #[error("{proto} connect to {addr}: {reason}")]
    Connect {
        /// Protocol of the failed connection.
        proto: Proto,
        /// host:port tried.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The broker said no, or broke the protocol, after connecting.
    #[error("{proto}: {reason}")]
    Protocol {
        /// Protocol of the failing connection.
        proto: Proto,
        /// What went wrong.
        reason: String,
    },
    /// A connection or setup step took longer than its bound.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Socket or file I/O.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Internal failure (a task panicked, a histogram could not be built).
    #[error("internal: {0}")]
    Internal(String),
}

impl BenchError {
    /// A [`BenchError::Protocol`] from anything printable.
    pub fn protocol(proto: Proto, reason: impl std::fmt::Display) -> Self {
        BenchError::Protocol {
            proto,
            reason: reason.to_string(),
        }
    }

    /// A [`BenchError::Connect`] from anything printable.
    pub fn connect(proto: Proto, addr: &str, reason: impl std::fmt::Display) -> Self {
        BenchError::Connect {
            proto,
            addr: addr.to_string(),
            reason: reason.to_string(),
        }
    }
}

impl From<crate::stats::StatsError> for BenchError {
    fn from(e: crate::stats::StatsError) -> Self {
        BenchError::Internal(e.to_string())
    }
}
