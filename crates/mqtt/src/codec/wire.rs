//! Data representations shared by every packet (MQTT 5 section 1.5, 3.1.1
//! section 1.5): two and four byte integers, the Variable Byte Integer,
//! length-prefixed UTF-8 strings and binary data. Reads go through
//! [`Reader`], a cursor over one packet's `Bytes` whose every read is
//! bounds-checked, so no input can panic the decoder and binary fields stay
//! zero-copy slices of the read buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError, malformed};

/// Largest value of a Variable Byte Integer (four bytes) [MQTT-1.5.5].
pub(crate) const MAX_VARINT: usize = 268_435_455;

/// Largest string or binary field (16-bit length prefix).
const MAX_FIELD: usize = u16::MAX as usize;

/// Decodes a Variable Byte Integer from the start of `buf` without
/// consuming it: `Ok(None)` if more bytes are needed, else the value and
/// the number of bytes it took. A fifth byte is malformed [MQTT-1.5.5];
/// non-minimal encodings are accepted.
pub(crate) fn peek_varint(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, byte) in buf.iter().enumerate() {
        if i == 4 {
            return Err(malformed("variable byte integer longer than 4 bytes"));
        }
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        return Err(malformed("variable byte integer longer than 4 bytes"));
    }
    Ok(None)
}

/// Number of bytes `value` takes as a Variable Byte Integer.
pub(crate) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `value` (at most [`MAX_VARINT`], checked by the caller) as a
/// Variable Byte Integer.
pub(crate) fn put_varint(out: &mut BytesMut, value: usize) {
    let mut value = value;
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if value == 0 {
            return;
        }
    }
}

/// Length on the wire of a UTF-8 string field, prefix included.
pub(crate) fn str_len(s: &str, field: &'static str) -> Result<usize, EncodeError> {
    bin_len(s.as_bytes(), field)
}

/// Length on the wire of a binary field, prefix included.
pub(crate) fn bin_len(b: &[u8], field: &'static str) -> Result<usize, EncodeError> {
    if b.len() > MAX_FIELD {
        return Err(EncodeError::TooLong {
            field,
            len: b.len(),
        });
    }
    Ok(2 + b.len())
}

/// Writes a string field whose length was checked by [`str_len`].
pub(crate) fn put_str(out: &mut BytesMut, s: &str) {
    put_bin(out, s.as_bytes());
}

/// Writes a binary field whose length was checked by [`bin_len`].
pub(crate) fn put_bin(out: &mut BytesMut, b: &[u8]) {
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

/// A bounds-checked cursor over the body of one packet.
#[derive(Debug)]
pub(crate) struct Reader {
    /// What is left of the body; reads split from its front.
    buf: Bytes,
}

impl Reader {
    /// Reads from `buf`.
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    /// Bytes left.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Whether every byte was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn need(&self, n: usize, what: &str) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            return Err(malformed(format!("packet ends inside {what}")));
        }
        Ok(())
    }

    /// One byte.
    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    /// A Two Byte Integer, big-endian.
    pub(crate) fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        self.need(2, what)?;
        Ok(self.buf.get_u16())
    }

    /// A Four Byte Integer, big-endian.
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    /// A Variable Byte Integer.
    pub(crate) fn varint(&mut self, what: &str) -> Result<u32, DecodeError> {
        match peek_varint(&self.buf)? {
            Some((value, len)) => {
                self.buf.advance(len);
                u32::try_from(value).map_err(|_| malformed(format!("{what} out of range")))
            }
            None => Err(malformed(format!("packet ends inside {what}"))),
        }
    }

    /// The next `n` bytes, zero-copy.
    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<Bytes, DecodeError> {
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }

    /// Everything left, zero-copy.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Binary Data: a two-byte length, then that many bytes (zero-copy).
    pub(crate) fn binary(&mut self, what: &str) -> Result<Bytes, DecodeError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    /// A UTF-8 Encoded String: well-formed UTF-8 without U+0000
    /// [MQTT-1.5.4-1] [MQTT-1.5.4-2] (3.1.1: [MQTT-1.5.3-1] [MQTT-1.5.3-2]).
    /// A BOM is kept as U+FEFF [MQTT-1.5.4-3].
    pub(crate) fn string(&mut self, what: &str) -> Result<String, DecodeError> {
        let raw = self.binary(what)?;
        let s = std::str::from_utf8(&raw)
            .map_err(|_| malformed(format!("{what} is not well-formed UTF-8")))?;
        if s.contains('\0') {
            return Err(malformed(format!("{what} contains U+0000")));
        }
        Ok(s.to_owned())
    }

    /// A packet identifier, which must not be 0 [MQTT-2.3.1-1]
    /// (MQTT 5: [MQTT-2.2.1-3]).
    pub(crate) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16("packet identifier")? {
            0 => Err(malformed("packet identifier 0")),
            id => Ok(id),
        }
    }

    /// Fails if any byte is left: a packet longer than its fields.
    pub(crate) fn finish(&self, packet: &str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(malformed(format!(
                "{} unexpected bytes at the end of {packet}",
                self.buf.len()
            )))
        }
    }
}
