//! Exchange and binding definitions, and the headers exchange's match rule.

use std::fmt;
use std::str::FromStr;

use crate::error::CoreError;
use crate::value::{FieldTable, FieldValue};

/// The four AMQP 0-9-1 exchange types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExchangeKind {
    type Err = CoreError;

    /// An unknown type is 406 PRECONDITION_FAILED, a channel error, as
    /// current RabbitMQ answers and client test suites expect (RabbitMQ
    /// 3.10, Debian 12's, closed the connection with 503 COMMAND_INVALID).
    fn from_str(s: &str) -> Result<Self, CoreError> {
        match s {
            "direct" => Ok(ExchangeKind::Direct),
            "fanout" => Ok(ExchangeKind::Fanout),
            "topic" => Ok(ExchangeKind::Topic),
            "headers" => Ok(ExchangeKind::Headers),
            other => Err(CoreError::PreconditionFailed(format!(
                "unknown exchange type '{other}'"
            ))),
        }
    }
}

/// What `exchange.declare` carries.
#[derive(Clone, Debug, PartialEq)]
pub struct ExchangeDef {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    /// Deleted when its last binding (as source) goes.
    pub auto_delete: bool,
    /// Cannot be published to directly, only through exchange-to-exchange bindings.
    pub internal: bool,
    pub arguments: FieldTable,
}

impl ExchangeDef {
    pub fn new(name: impl Into<String>, kind: ExchangeKind) -> ExchangeDef {
        ExchangeDef {
            name: name.into(),
            kind,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::new(),
        }
    }

    /// The `alternate-exchange` argument: where unroutable messages go.
    pub fn alternate_exchange(&self) -> Option<&str> {
        self.arguments
            .get("alternate-exchange")
            .and_then(FieldValue::as_str)
    }

    /// Whether a redeclaration with `other` is equivalent (AMQP: same type,
    /// durability, auto-delete, internal; of the arguments only
    /// `alternate-exchange` counts, as in RabbitMQ), else 406.
    pub fn equivalent(&self, other: &ExchangeDef) -> bool {
        self.inequivalence(other).is_none()
    }

    /// The argument that differs and how, in RabbitMQ's words (`type`,
    /// `received 'fanout' but current is 'direct'`), or None when a
    /// redeclaration with `received` is equivalent.
    pub fn inequivalence(&self, received: &ExchangeDef) -> Option<(String, String)> {
        fn differ(
            name: &str,
            received: impl fmt::Display,
            current: impl fmt::Display,
        ) -> (String, String) {
            (
                name.to_string(),
                format!("received '{received}' but current is '{current}'"),
            )
        }
        if self.kind != received.kind {
            return Some(differ("type", received.kind, self.kind));
        }
        for (name, r, c) in [
            ("durable", received.durable, self.durable),
            ("auto_delete", received.auto_delete, self.auto_delete),
            ("internal", received.internal, self.internal),
        ] {
            if r != c {
                return Some(differ(name, r, c));
            }
        }
        const AE: &str = "alternate-exchange";
        let (r, c) = (received.arguments.get(AE), self.arguments.get(AE));
        let same = match (r, c) {
            (Some(a), Some(b)) => a.loosely_equals(b),
            (None, None) => true,
            _ => false,
        };
        let text = |v: Option<&FieldValue>| {
            v.map_or("none".to_string(), |v| {
                format!("'{}'", crate::interop::value_text(v))
            })
        };
        (!same).then(|| {
            (
                AE.to_string(),
                format!("received {} but current is {}", text(r), text(c)),
            )
        })
    }
}

/// Where a binding leads.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    Queue(String),
    /// Exchange-to-exchange binding (a RabbitMQ extension every client uses).
    Exchange(String),
}

impl Destination {
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(n) | Destination::Exchange(n) => n,
        }
    }
}

/// One binding from an exchange to a queue or exchange.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    pub source: String,
    pub destination: Destination,
    pub routing_key: String,
    pub arguments: FieldTable,
}

/// How a headers binding matches, from its `x-match` argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadersMode {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

impl HeadersMode {
    /// Reads `x-match`; missing means `all`. Anything else is 406, as in RabbitMQ.
    pub fn from_arguments(args: &FieldTable) -> Result<HeadersMode, CoreError> {
        match args.get("x-match") {
            None => Ok(HeadersMode::All),
            Some(v) => match v.as_str() {
                Some("all") => Ok(HeadersMode::All),
                Some("any") => Ok(HeadersMode::Any),
                Some("all-with-x") => Ok(HeadersMode::AllWithX),
                Some("any-with-x") => Ok(HeadersMode::AnyWithX),
                _ => Err(CoreError::PreconditionFailed(format!(
                    "invalid x-match field value {v:?}; expected all, any, all-with-x, or any-with-x"
                ))),
            },
        }
    }
}

/// Does a message with `headers` match a headers binding with `args`?
///
/// Binding arguments other than `x-match` are the pairs to test; those whose
/// name starts with `x-` are ignored unless the mode is a `-with-x` one. A
/// void value tests only that the header is present. `all` with no pairs
/// matches everything; `any` with no pairs matches nothing.
pub fn headers_match(mode: HeadersMode, args: &FieldTable, headers: &FieldTable) -> bool {
    let with_x = matches!(mode, HeadersMode::AllWithX | HeadersMode::AnyWithX);
    let mut pairs = args
        .iter()
        .filter(|(k, _)| *k != "x-match" && (with_x || !k.starts_with("x-")));
    let pair_matches = |(k, v): (&str, &FieldValue)| match headers.get(k) {
        None => false,
        Some(_) if *v == FieldValue::Void => true,
        Some(h) => h.loosely_equals(v),
    };
    match mode {
        HeadersMode::All | HeadersMode::AllWithX => pairs.all(pair_matches),
        HeadersMode::Any | HeadersMode::AnyWithX => pairs.any(pair_matches),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn s(v: &str) -> FieldValue {
        FieldValue::string(v)
    }

    #[test]
    fn all_needs_every_pair() {
        let args = table(&[
            ("x-match", s("all")),
            ("a", s("1")),
            ("b", FieldValue::I32(2)),
        ]);
        let mode = HeadersMode::from_arguments(&args).unwrap();
        assert!(headers_match(
            mode,
            &args,
            &table(&[("a", s("1")), ("b", FieldValue::I64(2))])
        ));
        assert!(!headers_match(mode, &args, &table(&[("a", s("1"))])));
        assert!(!headers_match(
            mode,
            &args,
            &table(&[("a", s("1")), ("b", FieldValue::I32(3))])
        ));
    }

    #[test]
    fn any_needs_one_pair() {
        let args = table(&[("x-match", s("any")), ("a", s("1")), ("b", s("2"))]);
        let mode = HeadersMode::from_arguments(&args).unwrap();
        assert!(headers_match(mode, &args, &table(&[("b", s("2"))])));
        assert!(!headers_match(mode, &args, &table(&[("c", s("2"))])));
        let none = table(&[("x-match", s("any"))]);
        assert!(!headers_match(
            HeadersMode::Any,
            &none,
            &table(&[("a", s("1"))])
        ));
        assert!(headers_match(
            HeadersMode::All,
            &FieldTable::new(),
            &FieldTable::new()
        ));
    }

    #[test]
    fn x_prefixed_pairs_need_with_x_mode() {
        let args = table(&[("x-match", s("all")), ("x-tenant", s("t1"))]);
        assert!(headers_match(HeadersMode::All, &args, &FieldTable::new()));
        let args = table(&[("x-match", s("all-with-x")), ("x-tenant", s("t1"))]);
        let mode = HeadersMode::from_arguments(&args).unwrap();
        assert_eq!(mode, HeadersMode::AllWithX);
        assert!(!headers_match(mode, &args, &FieldTable::new()));
        assert!(headers_match(mode, &args, &table(&[("x-tenant", s("t1"))])));
        let args = table(&[("x-match", s("any-with-x")), ("x-a", s("1")), ("b", s("2"))]);
        let mode = HeadersMode::from_arguments(&args).unwrap();
        assert!(headers_match(mode, &args, &table(&[("x-a", s("1"))])));
    }

    #[test]
    fn void_value_tests_presence() {
        let args = table(&[("a", FieldValue::Void)]);
        assert!(headers_match(
            HeadersMode::All,
            &args,
            &table(&[("a", s("anything"))])
        ));
        assert!(!headers_match(HeadersMode::All, &args, &FieldTable::new()));
    }

    #[test]
    fn invalid_x_match_is_precondition_failed() {
        let args = table(&[("x-match", s("most"))]);
        assert!(matches!(
            HeadersMode::from_arguments(&args),
            Err(CoreError::PreconditionFailed(_))
        ));
    }

    #[test]
    fn unknown_exchange_type_is_precondition_failed() {
        assert_eq!(
            "topic".parse::<ExchangeKind>().unwrap(),
            ExchangeKind::Topic
        );
        assert_eq!(
            "x-custom".parse::<ExchangeKind>().unwrap_err().amqp_code(),
            406
        );
    }
}
