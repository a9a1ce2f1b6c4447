//! Topic names, topic filters and shared subscriptions (MQTT 5 sections
//! 4.7 and 4.8.2; 3.1.1 section 4.7). Names and filters are distinct
//! newtypes so one cannot be used for the other; both are checked when
//! built:
//!
//! - at least one character [MQTT-4.7.3-1], no U+0000 [MQTT-4.7.3-2], at
//!   most 65,535 bytes of UTF-8 [MQTT-4.7.3-3];
//! - a name has no wildcard [MQTT-4.7.0-1] (3.1.1: [MQTT-4.7.1-1]);
//! - in a filter `#` stands alone in the last level [MQTT-4.7.1-1] and `+`
//!   stands alone in its level [MQTT-4.7.1-2];
//! - a shared filter is `$share/{ShareName}/{filter}` with a non-empty
//!   ShareName free of `/`, `+`, `#` [MQTT-4.8.2-1] [MQTT-4.8.2-2].

use std::fmt;

use thiserror::Error;

/// Longest topic in bytes [MQTT-4.7.3-3].
const MAX_TOPIC_LEN: usize = 65_535;

/// Prefix of a shared subscription's filter (section 4.8.2).
const SHARE_PREFIX: &str = "$share/";

/// Why a string is not a valid topic name or filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TopicError {
    /// Zero length [MQTT-4.7.3-1].
    #[error("topic is empty")]
    Empty,
    /// More than 65,535 bytes [MQTT-4.7.3-3].
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    /// Contains U+0000 [MQTT-4.7.3-2].
    #[error("topic contains U+0000")]
    Nul,
    /// A topic name containing `+` or `#` [MQTT-4.7.0-1].
    #[error("topic name contains a wildcard")]
    WildcardInName,
    /// `#` not alone in the last level [MQTT-4.7.1-1].
    #[error("'#' must be alone in the last level of a topic filter")]
    MultiLevelWildcard,
    /// `+` sharing its level with other characters [MQTT-4.7.1-2].
    #[error("'+' must be alone in its level of a topic filter")]
    SingleLevelWildcard,
    /// `$share/` without a valid ShareName [MQTT-4.8.2-1] [MQTT-4.8.2-2].
    #[error("shared subscription needs a ShareName without '/', '+' or '#'")]
    ShareName,
    /// `$share/{ShareName}` not followed by `/` and a topic filter
    /// [MQTT-4.8.2-2].
    #[error("shared subscription has no topic filter after its ShareName")]
    ShareFilter,
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// A topic name: where a PUBLISH goes. Wildcard-free.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

impl TopicName {
    /// Checks `name` against the rules for topic names.
    pub fn new(name: impl Into<String>) -> Result<Self, TopicError> {
        let name = name.into();
        check_common(&name)?;
        if name.contains(['+', '#']) {
            return Err(TopicError::WildcardInName);
        }
        Ok(Self(name))
    }

    /// The zero-length name of an MQTT 5 PUBLISH that relies on its Topic
    /// Alias (section 3.3.2.3.4); valid nowhere else.
    pub fn empty() -> Self {
        Self(String::new())
    }

    /// Whether this is the alias-only empty name.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// The alias-only empty name, as [`TopicName::empty`].
impl Default for TopicName {
    fn default() -> Self {
        Self::empty()
    }
}

impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A topic filter: what a SUBSCRIBE or UNSUBSCRIBE names; may hold
/// wildcards, and may be a shared subscription's `$share/...` filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(String);

/// The parts of a shared subscription's filter, `$share/{group}/{filter}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// The ShareName: subscribers with the same one share the messages.
    pub group: &'a str,
    /// The filter the group subscribes to.
    pub filter: &'a str,
}

fn check_filter_levels(s: &str) -> Result<(), TopicError> {
    let mut levels = s.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::SingleLevelWildcard);
        }
    }
    Ok(())
}

impl TopicFilter {
    /// Checks `filter` against the rules for topic filters. A `$share/`
    /// filter is only checked level by level here; [`TopicFilter::shared`]
    /// checks its MQTT 5 structure.
    pub fn new(filter: impl Into<String>) -> Result<Self, TopicError> {
        let filter = filter.into();
        check_common(&filter)?;
        check_filter_levels(&filter)?;
        Ok(Self(filter))
    }

    /// The filter as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The filter as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }

    /// Whether the filter contains a wildcard.
    pub fn has_wildcard(&self) -> bool {
        self.0.contains(['+', '#'])
    }

    /// Splits a shared subscription's filter into its ShareName and topic
    /// filter: `Ok(None)` for a filter that does not start with `$share/`,
    /// an error for one that does but breaks [MQTT-4.8.2-1] or
    /// [MQTT-4.8.2-2].
    pub fn shared(&self) -> Result<Option<SharedFilter<'_>>, TopicError> {
        let Some(rest) = self.0.strip_prefix(SHARE_PREFIX) else {
            return Ok(None);
        };
        let Some((group, filter)) = rest.split_once('/') else {
            return Err(if rest.is_empty() || rest.contains(['+', '#']) {
                TopicError::ShareName
            } else {
                TopicError::ShareFilter
            });
        };
        if group.is_empty() || group.contains(['+', '#']) {
            return Err(TopicError::ShareName);
        }
        if filter.is_empty() {
            return Err(TopicError::ShareFilter);
        }
        Ok(Some(SharedFilter { group, filter }))
    }
}

impl AsRef<str> for TopicFilter {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_4_7_0_1_topic_name_must_not_contain_wildcards() {
        assert_eq!(TopicName::new("a/+/c"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new("a#b"), Err(TopicError::WildcardInName));
        assert!(TopicName::new("a/b c/$d").is_ok());
        assert!(TopicName::new("/").is_ok());
    }

    #[test]
    fn mqtt_4_7_1_1_multi_level_wildcard_alone_and_last() {
        for ok in ["#", "a/#", "/#", "a/b/#", "+/#"] {
            assert!(TopicFilter::new(ok).is_ok(), "{ok}");
        }
        for bad in ["a#", "a/#/b", "#/a", "a/b#", "##", "a/#/"] {
            assert_eq!(
                TopicFilter::new(bad),
                Err(TopicError::MultiLevelWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn mqtt_4_7_1_2_single_level_wildcard_alone_in_level() {
        for ok in ["+", "+/+", "a/+/b", "/+", "+/", "sport/+/player1"] {
            assert!(TopicFilter::new(ok).is_ok(), "{ok}");
        }
        for bad in ["a+", "+a", "a/b+/c", "++"] {
            assert_eq!(
                TopicFilter::new(bad),
                Err(TopicError::SingleLevelWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn mqtt_4_7_3_1_topics_must_not_be_empty() {
        assert_eq!(TopicName::new(""), Err(TopicError::Empty));
        assert_eq!(TopicFilter::new(""), Err(TopicError::Empty));
    }

    #[test]
    fn mqtt_4_7_3_2_topics_must_not_contain_nul() {
        assert_eq!(TopicName::new("a\0b"), Err(TopicError::Nul));
        assert_eq!(TopicFilter::new("a/\0"), Err(TopicError::Nul));
    }

    #[test]
    fn mqtt_4_7_3_3_topics_at_most_65535_bytes() {
        assert!(TopicName::new("a".repeat(65_535)).is_ok());
        assert_eq!(TopicName::new("a".repeat(65_536)), Err(TopicError::TooLong));
        // Bytes, not characters: 21,846 three-byte characters are 65,538 bytes.
        assert_eq!(
            TopicFilter::new("€".repeat(21_846)),
            Err(TopicError::TooLong)
        );
    }

    #[test]
    fn mqtt_4_8_2_1_shared_filter_splits_into_group_and_filter() {
        let f = TopicFilter::new("$share/group/sensors/+/temp").unwrap();
        assert_eq!(
            f.shared(),
            Ok(Some(SharedFilter {
                group: "group",
                filter: "sensors/+/temp"
            }))
        );
        let plain = TopicFilter::new("$shared/x").unwrap();
        assert_eq!(plain.shared(), Ok(None));
        let sys = TopicFilter::new("$share").unwrap();
        assert_eq!(sys.shared(), Ok(None));
        let hash = TopicFilter::new("$share/g/#").unwrap();
        assert_eq!(hash.shared().unwrap().map(|s| s.filter), Some("#"));
    }

    #[test]
    fn mqtt_4_8_2_2_share_name_rules() {
        for (filter, err) in [
            ("$share//a", TopicError::ShareName),
            ("$share/+/a", TopicError::ShareName),
            ("$share/#", TopicError::ShareName),
            ("$share/", TopicError::ShareName),
            ("$share/group", TopicError::ShareFilter),
            ("$share/group/", TopicError::ShareFilter),
        ] {
            let f = TopicFilter::new(filter).unwrap();
            assert_eq!(f.shared(), Err(err), "{filter}");
        }
    }
}
