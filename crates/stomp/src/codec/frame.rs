//! The frame model: [`Command`], [`Version`], [`Headers`] and [`Frame`].

use std::fmt;

use bytes::Bytes;

/// A STOMP command: the first line of a frame ("STOMP 1.2 Augmented BNF",
/// `client-command | server-command`). Commands are case sensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Client: open a session ("CONNECT or STOMP Frame").
    Connect,
    /// Client: CONNECT under the name a protocol sniffer can tell from
    /// HTTP (1.1 and later).
    Stomp,
    /// Client: publish the body to a destination.
    Send,
    /// Client: start consuming a destination.
    Subscribe,
    /// Client: stop a subscription.
    Unsubscribe,
    /// Client: acknowledge a message.
    Ack,
    /// Client: reject a message (1.1 and later).
    Nack,
    /// Client: start a transaction.
    Begin,
    /// Client: commit a transaction.
    Commit,
    /// Client: roll a transaction back.
    Abort,
    /// Client: close the session gracefully.
    Disconnect,
    /// Server: the session is open.
    Connected,
    /// Server: a message from a subscription.
    Message,
    /// Server: a frame that asked for a receipt was processed.
    Receipt,
    /// Server: something went wrong; the connection closes after it.
    Error,
}

impl Command {
    /// Every command: the client's, then the server's.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The command as written on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// The command a command line names, exactly (no trimming, no case
    /// folding); `None` for anything else.
    pub fn parse(line: &[u8]) -> Option<Command> {
        Command::ALL
            .into_iter()
            .find(|c| c.as_str().as_bytes() == line)
    }

    /// Whether clients send this command (servers send the others).
    pub const fn is_client(self) -> bool {
        !matches!(
            self,
            Command::Connected | Command::Message | Command::Receipt | Command::Error
        )
    }

    /// Whether a frame of this command may have a body: "Only the SEND,
    /// MESSAGE, and ERROR frames MAY have a body" ("STOMP 1.2 Body"). The
    /// codec does not enforce it; the adapter decides what to do.
    pub const fn may_have_body(self) -> bool {
        matches!(self, Command::Send | Command::Message | Command::Error)
    }

    /// Whether header escaping may apply to this command: never to
    /// CONNECT and CONNECTED ("Value Encoding"), nor to STOMP, which is
    /// CONNECT by another name and is read before a version is agreed.
    pub(crate) const fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }

    /// Whether the spec lets this frame ask for a receipt: "Any client
    /// frame other than CONNECT MAY specify a receipt header" ("Header
    /// receipt"; STOMP is CONNECT).
    pub(crate) const fn may_request_receipt(self) -> bool {
        self.is_client() && !matches!(self, Command::Connect | Command::Stomp)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A STOMP protocol version. It decides how headers are escaped; the
/// adapter negotiates it from CONNECT's `accept-version` ("Protocol
/// Negotiation"). Ordered oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// STOMP 1.0: no header escaping.
    V1_0,
    /// STOMP 1.1: escapes `\n`, `\c` and `\\`.
    V1_1,
    /// STOMP 1.2: escapes `\r` too.
    V1_2,
}

impl Version {
    /// Every version, oldest first.
    pub const ALL: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

    /// The version as written in `accept-version` and `version` headers.
    pub const fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// The version `text` names (`"1.0"`, `"1.1"` or `"1.2"`, exactly).
    pub fn parse(text: &str) -> Option<Version> {
        Version::ALL.into_iter().find(|v| v.as_str() == text)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A frame's headers in wire order. Repeated names are all kept (a server
/// may pass on a header's history), but [`Headers::get`] returns the first
/// occurrence: "only the first header entry SHOULD be used as the value of
/// header entry" ("Repeated Header Entries").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers {
            entries: Vec::new(),
        }
    }

    /// The value of the first header called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Appends a header, after any with the same name (so it does not
    /// change what [`Headers::get`] returns for a name already present).
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.entries.push((name.into(), value.into()));
    }

    /// Sets header `name` to `value`: the first occurrence takes the new
    /// value in place and any later repeats are removed (so a client that
    /// reads the last repeat, as some do, sees the same value); without
    /// one, the header is appended.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.entries.iter().position(|(n, _)| *n == name) {
            Some(first) => {
                let mut i = 0;
                self.entries.retain(|(n, _)| {
                    let keep = i <= first || *n != name;
                    i += 1;
                    keep
                });
                if let Some(entry) = self.entries.get_mut(first) {
                    entry.1 = value;
                }
            }
            None => self.entries.push((name, value)),
        }
    }

    /// Removes every header called `name`; returns the first one's value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let first = self.entries.iter().position(|(n, _)| n == name)?;
        let (_, value) = self.entries.remove(first);
        self.entries.retain(|(n, _)| n != name);
        Some(value)
    }

    /// The headers in wire order, repeats included.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + DoubleEndedIterator {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// How many header entries there are, repeats included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a str);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a str, &'a str),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Headers {
            entries: iter
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        }
    }
}

impl<N: Into<String>, V: Into<String>> Extend<(N, V)> for Headers {
    fn extend<I: IntoIterator<Item = (N, V)>>(&mut self, iter: I) {
        self.entries
            .extend(iter.into_iter().map(|(n, v)| (n.into(), v.into())));
    }
}

/// One STOMP frame: a command, its headers (unescaped) and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command line.
    pub command: Command,
    /// The headers, in wire order.
    pub headers: Headers,
    /// The body: any octets when the frame has a `content-length`, up to
    /// the first NUL without one. Decoded frames share it with the read
    /// buffer (no copy).
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and no body.
    pub fn new(command: Command) -> Self {
        Frame {
            command,
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// An ERROR frame with a `message` header: "a short description of the
    /// error" ("STOMP 1.2 ERROR").
    pub fn error(message: impl Into<String>) -> Self {
        Frame::new(Command::Error).header("message", message)
    }

    /// Appends a header (builder style), as [`Headers::push`].
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push(name, value);
        self
    }

    /// Sets the body and its `content-length` (builder style), so the body
    /// may hold NULs.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self.set_content_length();
        self
    }

    /// Sets `content-length` to the body's length, as [`Headers::set`].
    pub fn set_content_length(&mut self) {
        self.headers
            .set("content-length", self.body.len().to_string());
    }

    /// The value of the first header called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}
