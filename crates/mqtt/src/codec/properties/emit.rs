//! Measuring and writing property blocks (MQTT 5 section 2.2.2.1): a
//! Property Length, then each property as its identifier and value. Every
//! packet module describes its properties once, in
//! [`EmitProperties::emit`], and the [`Emitter`] runs that description
//! twice: to measure (checking field lengths) and to write.

use bytes::{BufMut, BytesMut};

use super::id;
use crate::codec::error::EncodeError;
use crate::codec::wire::{MAX_VARINT, bin_len, put_bin, put_str, put_varint, varint_len};

/// Measures or writes a property block. The packet modules describe their
/// properties once, in an `emit` method, and run it twice: first to
/// measure and check lengths, then to write.
#[derive(Debug)]
pub(crate) struct Emitter<'o> {
    /// `None` while measuring.
    out: Option<&'o mut BytesMut>,
    /// Bytes emitted so far.
    len: usize,
    /// First field found too long while measuring.
    error: Option<EncodeError>,
}

impl Emitter<'_> {
    fn header(&mut self, id: u8, value_len: usize) {
        self.len += 1 + value_len;
        if let Some(out) = self.out.as_deref_mut() {
            out.put_u8(id);
        }
    }

    fn check(&mut self, value: &[u8], field: &'static str) -> usize {
        match bin_len(value, field) {
            Ok(len) => len,
            Err(e) => {
                self.error.get_or_insert(e);
                2 + value.len()
            }
        }
    }

    /// A byte property, if present.
    pub(crate) fn u8(&mut self, id: u8, value: Option<u8>) {
        if let Some(v) = value {
            self.header(id, 1);
            if let Some(out) = self.out.as_deref_mut() {
                out.put_u8(v);
            }
        }
    }

    /// A boolean property written as a 0/1 byte, if present.
    pub(crate) fn flag(&mut self, id: u8, value: Option<bool>) {
        self.u8(id, value.map(u8::from));
    }

    /// A Two Byte Integer property, if present.
    pub(crate) fn u16(&mut self, id: u8, value: Option<u16>) {
        if let Some(v) = value {
            self.header(id, 2);
            if let Some(out) = self.out.as_deref_mut() {
                out.put_u16(v);
            }
        }
    }

    /// A Four Byte Integer property, if present.
    pub(crate) fn u32(&mut self, id: u8, value: Option<u32>) {
        if let Some(v) = value {
            self.header(id, 4);
            if let Some(out) = self.out.as_deref_mut() {
                out.put_u32(v);
            }
        }
    }

    /// A Variable Byte Integer property (Subscription Identifier).
    pub(crate) fn varint(&mut self, id: u8, value: u32) {
        let value = value as usize;
        if value == 0 || value > MAX_VARINT {
            self.error
                .get_or_insert(EncodeError::Invalid("subscription identifier out of range"));
        }
        self.header(id, varint_len(value));
        if let Some(out) = self.out.as_deref_mut() {
            put_varint(out, value);
        }
    }

    /// A UTF-8 string property, if present.
    pub(crate) fn str(&mut self, id: u8, value: Option<&str>, field: &'static str) {
        if let Some(v) = value {
            let len = self.check(v.as_bytes(), field);
            self.header(id, len);
            if let Some(out) = self.out.as_deref_mut() {
                put_str(out, v);
            }
        }
    }

    /// A binary property, if present.
    pub(crate) fn bin(&mut self, id: u8, value: Option<&[u8]>, field: &'static str) {
        if let Some(v) = value {
            let len = self.check(v, field);
            self.header(id, len);
            if let Some(out) = self.out.as_deref_mut() {
                put_bin(out, v);
            }
        }
    }

    /// Every User Property, in order.
    pub(crate) fn user(&mut self, props: &[(String, String)]) {
        for (name, value) in props {
            let len = self.check(name.as_bytes(), "User Property name")
                + self.check(value.as_bytes(), "User Property value");
            self.header(id::USER_PROPERTY, len);
            if let Some(out) = self.out.as_deref_mut() {
                put_str(out, name);
                put_str(out, value);
            }
        }
    }
}

/// A packet's typed properties, described once for both measuring and
/// writing.
pub(crate) trait EmitProperties {
    /// Emits every present property.
    fn emit(&self, e: &mut Emitter<'_>);
}

fn content_len<P: EmitProperties>(props: &P) -> (usize, Option<EncodeError>) {
    let mut e = Emitter {
        out: None,
        len: 0,
        error: None,
    };
    props.emit(&mut e);
    (e.len, e.error)
}

/// Wire length of a property block, its Property Length included; fails if
/// a field is too long or the block exceeds a Variable Byte Integer.
pub(crate) fn properties_len<P: EmitProperties>(props: &P) -> Result<usize, EncodeError> {
    let (len, error) = content_len(props);
    if let Some(e) = error {
        return Err(e);
    }
    if len > MAX_VARINT {
        return Err(EncodeError::PacketTooLarge(len));
    }
    Ok(varint_len(len) + len)
}

/// Writes a property block already checked by [`properties_len`].
pub(crate) fn write_properties<P: EmitProperties>(props: &P, out: &mut BytesMut) {
    let (len, _) = content_len(props);
    put_varint(out, len);
    props.emit(&mut Emitter {
        out: Some(out),
        len: 0,
        error: None,
    });
}
