//! Permission patterns: RabbitMQ's regular expressions (lookahead
//! included, hence `fancy-regex`) over exchange and queue names, and over
//! the routing keys of topic exchanges.
//!
//! As in RabbitMQ a pattern matches anywhere in the name unless anchored
//! (`^amq\.` not `amq\.`), and the empty pattern matches nothing. Topic
//! patterns may hold `{username}`, `{vhost}` and `{client_id}`, which stand
//! for the connection's values, regex-escaped, so one rule gives each device
//! its own subtree (`^devices\.{client_id}\.`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use fancy_regex::Regex;
use junction_core::{Permission, Principal};

/// The variables a topic pattern may use.
const VARIABLES: [&str; 3] = ["{username}", "{vhost}", "{client_id}"];

/// Longest match search a pattern may run on one name before it counts as
/// not matching (fancy-regex's backtracking bound; a pattern like
/// `(a+)+$` must not stall a connection).
const BACKTRACK_LIMIT: usize = 100_000;

/// One permission's regular expression.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    /// Compiled when the pattern has no variables; None for the empty
    /// pattern and for patterns compiled per connection.
    compiled: Option<Arc<Regex>>,
    has_variables: bool,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Builds a regex with the backtracking bound: every pattern a user or
/// client supplies (permissions, policies, the API's `use_regex` filter)
/// is compiled here, so none can make a match run without end.
pub fn compile(source: &str) -> Result<Regex, String> {
    fancy_regex::RegexBuilder::new(source)
        .backtrack_limit(BACKTRACK_LIMIT)
        .build()
        .map_err(|e| format!("invalid pattern {source:?}: {e}"))
}

impl Pattern {
    /// A resource pattern (no variables). Errors name the pattern.
    pub fn resource(source: &str) -> Result<Pattern, String> {
        Pattern::build(source, false)
    }

    /// A topic pattern, variables allowed.
    pub fn topic(source: &str) -> Result<Pattern, String> {
        Pattern::build(source, true)
    }

    fn build(source: &str, variables: bool) -> Result<Pattern, String> {
        let has_variables = variables && VARIABLES.iter().any(|v| source.contains(v));
        let compiled = if source.is_empty() {
            None
        } else if has_variables {
            // Checked now with sample values so a bad pattern fails at
            // `permission set`, not at the first connection.
            compile(&expand(source, "u", "v", "c"))?;
            None
        } else {
            Some(Arc::new(compile(source)?))
        };
        Ok(Pattern {
            source: source.to_owned(),
            compiled,
            has_variables,
        })
    }

    /// `.*`: everything.
    pub fn all() -> Pattern {
        Pattern {
            source: ".*".to_owned(),
            compiled: compile(".*").ok().map(Arc::new),
            has_variables: false,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `name` matches, for `who` (whose values fill the variables;
    /// `cache` keeps the compiled expansions).
    pub fn matches(&self, name: &str, who: &Principal, cache: &ExpansionCache) -> bool {
        if self.source.is_empty() {
            return false;
        }
        let regex = match (&self.compiled, self.has_variables) {
            (Some(r), _) => Arc::clone(r),
            (None, true) => {
                let expanded = expand(&self.source, &who.user, &who.vhost, &who.client_id);
                match cache.get(&expanded) {
                    Some(r) => r,
                    None => return false,
                }
            }
            (None, false) => return false,
        };
        // A search past the backtracking bound is an error: no match.
        regex.is_match(name).unwrap_or(false)
    }
}

/// `source` with the variables replaced by the escaped values.
fn expand(source: &str, user: &str, vhost: &str, client_id: &str) -> String {
    source
        .replace("{username}", &fancy_regex::escape(user))
        .replace("{vhost}", &fancy_regex::escape(vhost))
        .replace("{client_id}", &fancy_regex::escape(client_id))
}

/// Most expanded patterns kept compiled; past it the cache starts over.
const MAX_EXPANSIONS: usize = 4096;

/// Compiled expansions of variable patterns, shared by all connections
/// (thousands of devices with one rule each get one entry each).
#[derive(Default)]
pub struct ExpansionCache {
    compiled: parking_lot::Mutex<HashMap<String, Option<Arc<Regex>>>>,
}

impl ExpansionCache {
    /// The compiled `expanded` pattern; None if it does not compile (a
    /// value cannot make a valid pattern invalid once escaped, but a
    /// pattern may only be valid for some values' lengths).
    fn get(&self, expanded: &str) -> Option<Arc<Regex>> {
        if let Some(r) = self.compiled.lock().get(expanded) {
            return r.clone();
        }
        let r = compile(expanded).ok().map(Arc::new);
        let mut map = self.compiled.lock();
        if map.len() >= MAX_EXPANSIONS {
            map.clear();
        }
        map.insert(expanded.to_owned(), r.clone());
        r
    }

    /// Forgets every expansion (the users file changed).
    pub fn clear(&self) {
        self.compiled.lock().clear();
    }
}

/// A user's configure / write / read patterns on one vhost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostPermissions {
    /// Declare and delete.
    pub configure: Pattern,
    /// Publish to, bind to.
    pub write: Pattern,
    /// Consume from, bind from.
    pub read: Pattern,
}

impl VhostPermissions {
    /// `.*` for all three: what `junction user add --vhost` grants.
    pub fn all() -> VhostPermissions {
        VhostPermissions {
            configure: Pattern::all(),
            write: Pattern::all(),
            read: Pattern::all(),
        }
    }

    /// The pattern for `perm`.
    pub fn pattern(&self, perm: Permission) -> &Pattern {
        match perm {
            Permission::Configure => &self.configure,
            Permission::Write => &self.write,
            Permission::Read => &self.read,
        }
    }
}

/// A user's write / read patterns on the routing keys of one topic
/// exchange in one vhost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPermissions {
    /// Routing keys the user may publish with.
    pub write: Pattern,
    /// Binding keys (MQTT filters, STOMP topics) the user may subscribe
    /// with.
    pub read: Pattern,
}

impl TopicPermissions {
    /// The pattern for `perm`; topics have no configure, which is allowed.
    pub fn pattern(&self, perm: Permission) -> Option<&Pattern> {
        match perm {
            Permission::Configure => None,
            Permission::Write => Some(&self.write),
            Permission::Read => Some(&self.read),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: &str, client_id: &str) -> Principal {
        Principal {
            user: user.into(),
            vhost: "/".into(),
            client_id: client_id.into(),
            peer: std::net::IpAddr::from([127, 0, 0, 1]),
            backend: 0,
        }
    }

    #[test]
    fn patterns_search_unless_anchored_and_empty_matches_nothing() {
        let cache = ExpansionCache::default();
        let w = who("u", "");
        let p = Pattern::resource("amq\\.").expect("pattern");
        assert!(p.matches("x.amq.y", &w, &cache));
        let p = Pattern::resource("^amq\\.").expect("pattern");
        assert!(!p.matches("x.amq.y", &w, &cache));
        assert!(p.matches("amq.topic", &w, &cache));
        let p = Pattern::resource("").expect("pattern");
        assert!(!p.matches("", &w, &cache));
        assert!(!p.matches("q", &w, &cache));
    }

    #[test]
    fn lookahead_works() {
        let cache = ExpansionCache::default();
        let p = Pattern::resource("^(?!secret\\.).*").expect("pattern");
        assert!(p.matches("public.a", &who("u", ""), &cache));
        assert!(!p.matches("secret.a", &who("u", ""), &cache));
    }

    #[test]
    fn variables_are_filled_escaped_per_connection() {
        let cache = ExpansionCache::default();
        let p = Pattern::topic("^devices\\.{client_id}\\.").expect("pattern");
        assert!(p.matches("devices.d1.temp", &who("u", "d1"), &cache));
        assert!(!p.matches("devices.d2.temp", &who("u", "d1"), &cache));
        // A client id with regex characters matches only itself.
        assert!(p.matches("devices.a.b.x", &who("u", "a.b"), &cache));
        assert!(!p.matches("devices.aXb.x", &who("u", "a.b"), &cache));
        let p = Pattern::topic("^{username}/{vhost}$").expect("pattern");
        assert!(p.matches("bob//", &who("bob", ""), &cache));
        // Resource patterns do not expand variables (RabbitMQ's rule).
        let p = Pattern::resource("^{username}$").expect("pattern");
        assert!(!p.matches("bob", &who("bob", ""), &cache));
    }

    #[test]
    fn bad_patterns_are_refused_with_their_text() {
        let e = Pattern::resource("(").expect_err("bad");
        assert!(e.starts_with("invalid pattern \"(\""), "{e}");
        assert!(Pattern::topic("^{client_id}(").is_err());
    }

    #[test]
    fn catastrophic_backtracking_is_no_match_not_a_stall() {
        let cache = ExpansionCache::default();
        let p = Pattern::resource("^(a|a)*(?=b)c").expect("pattern");
        let name = "a".repeat(64);
        assert!(!p.matches(&name, &who("u", ""), &cache));
    }
}
