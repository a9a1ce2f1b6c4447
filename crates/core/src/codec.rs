//! Binary encoding of the core's durable records (messages, topology, queue
//! entries). Every record starts with a version byte so the format can grow.
//! Strings and byte strings are length-prefixed; integers are big-endian.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::CoreError;
use crate::ids::{ConnectionId, MessageId};
use crate::message::{Message, Origin, Properties, Protocol};
use crate::value::{FieldTable, FieldValue};

/// Version byte of every record this module writes.
pub const RECORD_V1: u8 = 1;

/// Appends primitive values to a buffer.
pub struct Writer {
    buf: BytesMut,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    pub fn new() -> Writer {
        Writer {
            buf: BytesMut::with_capacity(64),
        }
    }

    /// A writer whose output starts with the record version byte.
    pub fn record() -> Writer {
        let mut w = Writer::new();
        w.u8(RECORD_V1);
        w
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.put_u8(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.put_u32(v);
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.put_u64(v);
    }
    pub fn bool(&mut self, v: bool) {
        self.buf.put_u8(u8::from(v));
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.put_u32(v.len() as u32);
        self.buf.put_slice(v);
    }
    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    pub fn opt_str(&mut self, v: Option<&str>) {
        match v {
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
            None => self.u8(0),
        }
    }
    pub fn table(&mut self, t: &FieldTable) {
        self.u32(t.len() as u32);
        for (k, v) in t.iter() {
            self.str(k);
            self.value(v);
        }
    }
    pub fn value(&mut self, v: &FieldValue) {
        match v {
            FieldValue::Bool(b) => {
                self.u8(b't');
                self.bool(*b);
            }
            FieldValue::I8(x) => {
                self.u8(b'b');
                self.buf.put_i8(*x);
            }
            FieldValue::U8(x) => {
                self.u8(b'B');
                self.u8(*x);
            }
            FieldValue::I16(x) => {
                self.u8(b's');
                self.buf.put_i16(*x);
            }
            FieldValue::U16(x) => {
                self.u8(b'u');
                self.buf.put_u16(*x);
            }
            FieldValue::I32(x) => {
                self.u8(b'I');
                self.buf.put_i32(*x);
            }
            FieldValue::U32(x) => {
                self.u8(b'i');
                self.u32(*x);
            }
            FieldValue::I64(x) => {
                self.u8(b'l');
                self.buf.put_i64(*x);
            }
            FieldValue::U64(x) => {
                self.u8(b'L');
                self.u64(*x);
            }
            FieldValue::F32(x) => {
                self.u8(b'f');
                self.buf.put_f32(*x);
            }
            FieldValue::F64(x) => {
                self.u8(b'd');
                self.buf.put_f64(*x);
            }
            FieldValue::Decimal { scale, value } => {
                self.u8(b'D');
                self.u8(*scale);
                self.u32(*value);
            }
            FieldValue::ShortString(s) => {
                self.u8(b'S');
                self.str(s);
            }
            FieldValue::LongString(b) => {
                self.u8(b'Z');
                self.bytes(b);
            }
            FieldValue::Timestamp(t) => {
                self.u8(b'T');
                self.u64(*t);
            }
            FieldValue::Table(t) => {
                self.u8(b'F');
                self.table(t);
            }
            FieldValue::Array(a) => {
                self.u8(b'A');
                self.u32(a.len() as u32);
                for v in a {
                    self.value(v);
                }
            }
            FieldValue::ByteArray(b) => {
                self.u8(b'x');
                self.bytes(b);
            }
            FieldValue::Void => self.u8(b'V'),
        }
    }

    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

/// Reads what [`Writer`] wrote; every read is bounds-checked.
pub struct Reader<'a> {
    data: &'a [u8],
    /// Nesting depth of tables/arrays, bounded so corrupt input cannot recurse without limit.
    depth: u32,
}

const MAX_DEPTH: u32 = 64;

fn corrupt(what: &str) -> CoreError {
    CoreError::Corrupt(what.to_string())
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, depth: 0 }
    }

    /// Reads and checks the version byte of a record.
    pub fn record(data: &'a [u8]) -> Result<Reader<'a>, CoreError> {
        let mut r = Reader::new(data);
        match r.u8()? {
            RECORD_V1 => Ok(r),
            v => Err(CoreError::Corrupt(format!("unknown record version {v}"))),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CoreError> {
        if self.data.len() < n {
            return Err(corrupt("record truncated"));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CoreError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    pub fn u8(&mut self) -> Result<u8, CoreError> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, CoreError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, CoreError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub fn bool(&mut self) -> Result<bool, CoreError> {
        Ok(self.u8()? != 0)
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], CoreError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn string(&mut self) -> Result<String, CoreError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| corrupt("string is not UTF-8"))
    }
    pub fn opt_string(&mut self) -> Result<Option<String>, CoreError> {
        match self.u8()? {
            0 => Ok(None),
            _ => Ok(Some(self.string()?)),
        }
    }
    pub fn table(&mut self) -> Result<FieldTable, CoreError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(corrupt("tables nested too deeply"));
        }
        let n = self.u32()? as usize;
        let mut out = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let k = self.string()?;
            let v = self.value()?;
            out.push((k, v));
        }
        self.depth -= 1;
        Ok(FieldTable(out))
    }
    pub fn value(&mut self) -> Result<FieldValue, CoreError> {
        Ok(match self.u8()? {
            b't' => FieldValue::Bool(self.bool()?),
            b'b' => FieldValue::I8(i8::from_be_bytes(self.array()?)),
            b'B' => FieldValue::U8(self.u8()?),
            b's' => FieldValue::I16(i16::from_be_bytes(self.array()?)),
            b'u' => FieldValue::U16(u16::from_be_bytes(self.array()?)),
            b'I' => FieldValue::I32(i32::from_be_bytes(self.array()?)),
            b'i' => FieldValue::U32(self.u32()?),
            b'l' => FieldValue::I64(i64::from_be_bytes(self.array()?)),
            b'L' => FieldValue::U64(self.u64()?),
            b'f' => FieldValue::F32(f32::from_be_bytes(self.array()?)),
            b'd' => FieldValue::F64(f64::from_be_bytes(self.array()?)),
            b'D' => FieldValue::Decimal {
                scale: self.u8()?,
                value: self.u32()?,
            },
            b'S' => FieldValue::ShortString(self.string()?),
            b'Z' => FieldValue::LongString(Bytes::copy_from_slice(self.bytes()?)),
            b'T' => FieldValue::Timestamp(self.u64()?),
            b'F' => FieldValue::Table(self.table()?),
            b'A' => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(corrupt("arrays nested too deeply"));
                }
                let n = self.u32()? as usize;
                let mut out = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    out.push(self.value()?);
                }
                self.depth -= 1;
                FieldValue::Array(out)
            }
            b'x' => FieldValue::ByteArray(Bytes::copy_from_slice(self.bytes()?)),
            b'V' => FieldValue::Void,
            t => return Err(CoreError::Corrupt(format!("unknown field type {t}"))),
        })
    }
    /// Everything not yet read.
    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

fn protocol_code(p: Protocol) -> u8 {
    match p {
        Protocol::Amqp => 1,
        Protocol::Mqtt => 2,
        Protocol::Stomp => 3,
        Protocol::Internal => 0,
    }
}

fn protocol_from(code: u8) -> Protocol {
    match code {
        1 => Protocol::Amqp,
        2 => Protocol::Mqtt,
        3 => Protocol::Stomp,
        _ => Protocol::Internal,
    }
}

/// Encodes a message for the `messages` column family.
pub fn encode_message(m: &Message) -> Bytes {
    let mut w = Writer::record();
    w.u64(m.id.0);
    w.str(&m.exchange);
    w.str(&m.routing_key);
    let p = &m.properties;
    w.opt_str(p.content_type.as_deref());
    w.opt_str(p.content_encoding.as_deref());
    w.table(&p.headers);
    w.u8(p.delivery_mode.unwrap_or(0));
    match p.priority {
        Some(v) => {
            w.u8(1);
            w.u8(v);
        }
        None => w.u8(0),
    }
    w.opt_str(p.correlation_id.as_deref());
    w.opt_str(p.reply_to.as_deref());
    w.opt_str(p.expiration.as_deref());
    w.opt_str(p.message_id.as_deref());
    match p.timestamp {
        Some(t) => {
            w.u8(1);
            w.u64(t);
        }
        None => w.u8(0),
    }
    w.opt_str(p.kind.as_deref());
    w.opt_str(p.user_id.as_deref());
    w.opt_str(p.app_id.as_deref());
    w.u8(protocol_code(m.origin.protocol));
    w.u64(m.origin.connection.0);
    w.bytes(&m.body);
    w.finish()
}

/// Decodes a record written by [`encode_message`].
pub fn decode_message(data: &[u8]) -> Result<Message, CoreError> {
    let mut r = Reader::record(data)?;
    let id = MessageId(r.u64()?);
    let exchange = r.string()?;
    let routing_key = r.string()?;
    let content_type = r.opt_string()?;
    let content_encoding = r.opt_string()?;
    let headers = r.table()?;
    let delivery_mode = match r.u8()? {
        0 => None,
        m => Some(m),
    };
    let priority = match r.u8()? {
        0 => None,
        _ => Some(r.u8()?),
    };
    let correlation_id = r.opt_string()?;
    let reply_to = r.opt_string()?;
    let expiration = r.opt_string()?;
    let message_id = r.opt_string()?;
    let timestamp = match r.u8()? {
        0 => None,
        _ => Some(r.u64()?),
    };
    let kind = r.opt_string()?;
    let user_id = r.opt_string()?;
    let app_id = r.opt_string()?;
    let protocol = protocol_from(r.u8()?);
    let connection = ConnectionId(r.u64()?);
    let body = Bytes::copy_from_slice(r.bytes()?);
    Ok(Message {
        id,
        exchange,
        routing_key,
        properties: Properties {
            content_type,
            content_encoding,
            headers,
            delivery_mode,
            priority,
            correlation_id,
            reply_to,
            expiration,
            message_id,
            timestamp,
            kind,
            user_id,
            app_id,
        },
        body,
        origin: Origin {
            protocol,
            connection,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trips_with_every_field_type() {
        let mut headers = FieldTable::new();
        headers.insert("b", FieldValue::Bool(true));
        headers.insert("i8", FieldValue::I8(-3));
        headers.insert("u64", FieldValue::U64(u64::MAX));
        headers.insert("f", FieldValue::F64(1.5));
        headers.insert(
            "d",
            FieldValue::Decimal {
                scale: 2,
                value: 314,
            },
        );
        headers.insert("s", FieldValue::ShortString("short".into()));
        headers.insert("z", FieldValue::LongString(Bytes::from_static(b"\xff\x00")));
        headers.insert("t", FieldValue::Timestamp(1_700_000_000));
        headers.insert(
            "arr",
            FieldValue::Array(vec![FieldValue::Void, FieldValue::I32(7)]),
        );
        let mut inner = FieldTable::new();
        inner.insert("x", FieldValue::ByteArray(Bytes::from_static(b"abc")));
        headers.insert("tbl", FieldValue::Table(inner));
        let m = Message {
            id: MessageId(42),
            exchange: "amq.topic".into(),
            routing_key: "a.b".into(),
            properties: Properties {
                content_type: Some("text/plain".into()),
                content_encoding: None,
                headers,
                delivery_mode: Some(2),
                priority: Some(3),
                correlation_id: Some("c".into()),
                reply_to: Some("r".into()),
                expiration: Some("1000".into()),
                message_id: None,
                timestamp: Some(5),
                kind: Some("k".into()),
                user_id: None,
                app_id: Some("app".into()),
            },
            body: Bytes::from_static(b"hello"),
            origin: Origin {
                protocol: Protocol::Mqtt,
                connection: ConnectionId(9),
            },
        };
        let encoded = encode_message(&m);
        assert_eq!(decode_message(&encoded).unwrap(), m);
    }

    #[test]
    fn truncated_record_is_corrupt_not_a_panic() {
        let m = Message::new("", "q", Bytes::from_static(b"body"));
        let encoded = encode_message(&m);
        for cut in 0..encoded.len() {
            assert!(decode_message(&encoded[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn unknown_version_is_refused() {
        assert!(matches!(
            decode_message(&[9, 0, 0]),
            Err(CoreError::Corrupt(_))
        ));
    }
}
