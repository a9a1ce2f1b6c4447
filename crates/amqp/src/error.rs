//! How a failed method ends: a channel error closes that channel, a
//! connection error the whole connection (AMQP 0-9-1 section 1.2, "soft"
//! and "hard" errors). Core errors are mapped here, in one place.

use junction_core::CoreError;

/// The reply codes of AMQP 0-9-1 (and RabbitMQ's use of them).
pub mod code {
    pub const REPLY_SUCCESS: u16 = 200;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const NO_ROUTE: u16 = 312;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;
}

/// A failed method: what to send and how far the damage goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    pub code: u16,
    pub text: String,
    /// The class and method that failed (0, 0 when none did).
    pub class_id: u16,
    pub method_id: u16,
    /// True: close the connection; false: close only the channel.
    pub hard: bool,
}

impl AmqpError {
    pub fn channel(code: u16, text: impl Into<String>) -> AmqpError {
        AmqpError {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
            hard: false,
        }
    }

    pub fn connection(code: u16, text: impl Into<String>) -> AmqpError {
        AmqpError {
            hard: true,
            ..AmqpError::channel(code, text)
        }
    }

    /// Names the method that failed.
    pub fn during(mut self, class_id: u16, method_id: u16) -> AmqpError {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }

    /// The reply text as RabbitMQ writes it: `NAME - detail`.
    pub fn reply_text(&self) -> String {
        let name = match self.code {
            code::CONNECTION_FORCED => "CONNECTION_FORCED",
            code::ACCESS_REFUSED => "ACCESS_REFUSED",
            code::NOT_FOUND => "NOT_FOUND",
            code::RESOURCE_LOCKED => "RESOURCE_LOCKED",
            code::PRECONDITION_FAILED => "PRECONDITION_FAILED",
            code::FRAME_ERROR => "FRAME_ERROR",
            code::SYNTAX_ERROR => "SYNTAX_ERROR",
            code::COMMAND_INVALID => "COMMAND_INVALID",
            code::CHANNEL_ERROR => "CHANNEL_ERROR",
            code::UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
            code::RESOURCE_ERROR => "RESOURCE_ERROR",
            code::NOT_ALLOWED => "NOT_ALLOWED",
            code::NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
            code::INTERNAL_ERROR => "INTERNAL_ERROR",
            _ => "ERROR",
        };
        // A short string: 255 bytes at most, cut on a character boundary
        // (the text may quote a client's multi-byte names).
        crate::convert::cut_at_char_boundary(&format!("{name} - {}", self.text), 255).to_string()
    }
}

impl From<CoreError> for AmqpError {
    fn from(e: CoreError) -> AmqpError {
        let code = e.amqp_code();
        let text = match &e {
            CoreError::NotFound(t)
            | CoreError::PreconditionFailed(t)
            | CoreError::AccessRefused(t)
            | CoreError::ResourceLocked(t)
            | CoreError::CommandInvalid(t)
            | CoreError::LimitReached(t)
            | CoreError::NotAllowed(t)
            | CoreError::Unavailable(t) => t.clone(),
            other => other.to_string(),
        };
        match code {
            code::ACCESS_REFUSED
            | code::NOT_FOUND
            | code::RESOURCE_LOCKED
            | code::PRECONDITION_FAILED => AmqpError::channel(code, text),
            _ => AmqpError::connection(code, text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_text_is_cut_on_a_character_boundary() {
        // A passive declare of "é" x 127 quotes 254 bytes of the name.
        let e = AmqpError::channel(404, format!("no queue '{}'", "é".repeat(127)));
        let t = e.reply_text();
        assert!(t.len() <= 255, "{} bytes", t.len());
        assert!(t.starts_with("NOT_FOUND - no queue '"));
        assert!(t.ends_with('é'));
    }
}
