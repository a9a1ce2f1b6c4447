//! Typed header values: the AMQP 0-9-1 field-table types, so an AMQP header
//! survives a trip through the core unchanged. MQTT user properties and STOMP
//! headers become `LongString` values.

use bytes::Bytes;

/// One header value. Mirrors the field types of AMQP 0-9-1 (as RabbitMQ reads
/// them), which is the richest of the three protocols.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F32(f32),
    F64(f64),
    /// AMQP decimal: `value / 10^scale`.
    Decimal {
        scale: u8,
        value: u32,
    },
    ShortString(String),
    /// Long strings are bytes in AMQP: they need not be UTF-8.
    LongString(Bytes),
    /// Seconds since the Unix epoch.
    Timestamp(u64),
    Table(FieldTable),
    Array(Vec<FieldValue>),
    ByteArray(Bytes),
    Void,
}

impl FieldValue {
    /// Roughly the memory the value holds, in bytes (for memory
    /// accounting). Walks nested tables and arrays with a stack of its own.
    pub fn approx_size(&self) -> u64 {
        // Scalars and strings (nearly every header) without the stack.
        match self {
            FieldValue::Table(_) | FieldValue::Array(_) => {}
            FieldValue::ShortString(s) => return 16 + s.len() as u64,
            FieldValue::LongString(b) | FieldValue::ByteArray(b) => return 16 + b.len() as u64,
            _ => return 16,
        }
        let mut total = 0u64;
        let mut stack = vec![self];
        while let Some(v) = stack.pop() {
            total += 16;
            match v {
                FieldValue::ShortString(s) => total += s.len() as u64,
                FieldValue::LongString(b) | FieldValue::ByteArray(b) => total += b.len() as u64,
                FieldValue::Table(t) => {
                    for (k, v) in &t.0 {
                        total += 16 + k.len() as u64;
                        stack.push(v);
                    }
                }
                FieldValue::Array(a) => stack.extend(a.iter()),
                _ => {}
            }
        }
        total
    }

    /// The value as an integer, if it is one of the integer types.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            FieldValue::I8(v) => v.into(),
            FieldValue::U8(v) => v.into(),
            FieldValue::I16(v) => v.into(),
            FieldValue::U16(v) => v.into(),
            FieldValue::I32(v) => v.into(),
            FieldValue::U32(v) => v.into(),
            FieldValue::I64(v) => v.into(),
            FieldValue::U64(v) => v.into(),
            FieldValue::Timestamp(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as text, if it is a short or long string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::ShortString(s) => Some(s),
            FieldValue::LongString(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// A long string from text (the usual type for string headers).
    pub fn string(s: impl Into<String>) -> FieldValue {
        FieldValue::LongString(Bytes::from(s.into()))
    }

    /// Equality as the headers exchange sees it: integers compare by value
    /// whatever their width, strings by content whatever their kind.
    pub fn loosely_equals(&self, other: &FieldValue) -> bool {
        if let (Some(a), Some(b)) = (self.as_i128(), other.as_i128()) {
            return a == b;
        }
        if let (Some(a), Some(b)) = (self.as_str(), other.as_str()) {
            return a == b;
        }
        self == other
    }
}

/// An ordered table of named values. Order is kept (MQTT user properties are
/// ordered and may repeat a name); lookups return the first match.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct FieldTable(pub Vec<(String, FieldValue)>);

impl FieldTable {
    pub fn new() -> Self {
        FieldTable(Vec::new())
    }

    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// Sets `name`, replacing the first existing entry of that name.
    pub fn insert(&mut self, name: impl Into<String>, value: FieldValue) {
        let name = name.into();
        match self.0.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<FieldValue> {
        let pos = self.0.iter().position(|(k, _)| k == name)?;
        Some(self.0.remove(pos).1)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Equality of argument tables regardless of entry order (how AMQP
    /// compares the arguments of two declarations).
    pub fn equivalent(&self, other: &FieldTable) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .all(|(k, v)| other.get(k).is_some_and(|o| o.loosely_equals(v)))
    }
}

impl FromIterator<(String, FieldValue)> for FieldTable {
    fn from_iter<T: IntoIterator<Item = (String, FieldValue)>>(iter: T) -> Self {
        FieldTable(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approx_size_counts_strings_and_walks_nested_values() {
        assert_eq!(FieldValue::I32(7).approx_size(), 16);
        assert_eq!(FieldValue::ShortString("abc".into()).approx_size(), 19);
        let nested = FieldValue::Array(vec![
            FieldValue::LongString(Bytes::from_static(b"12345")),
            FieldValue::Table(FieldTable(vec![("k".into(), FieldValue::Void)])),
        ]);
        // array 16 + long string (16 + 5) + table 16 + entry (16 + 1) + void 16
        assert_eq!(nested.approx_size(), 16 + 21 + 16 + 17 + 16);
    }
}
