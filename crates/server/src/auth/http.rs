//! The HTTP back-end, in the style of RabbitMQ's `rabbitmq_auth_backend_http`:
//! each question (may this user log in, use this vhost, do this to that
//! resource, use this routing key) is a request to a configured URL, and
//! the answer's body, `allow` (optionally followed by tags) or `deny`,
//! decides. Only a 200 or 201 answer counts: any other status, a timeout or
//! a connection error denies (fail closed) and is logged.
//!
//! Answers, allow and deny alike, are kept for `cache_ttl_secs` (0 keeps
//! none), keyed by a digest of the whole question, so a client publishing
//! in a loop asks once per period and a password is never kept in clear.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HOST};
use junction_core::{Permission, Principal, Resource};

use crate::config::{HttpAuthConfig, HttpMethod};

/// Largest answer body read; `allow` and a few tags fit many times over.
const MAX_ANSWER: usize = 4096;
/// Most answers cached; past it the cache starts over.
const MAX_CACHED: usize = 65_536;

/// Which URL a question goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    User,
    Vhost,
    Resource,
    Topic,
}

/// A URL split for hyper's connection API.
#[derive(Debug, Clone)]
struct Target {
    /// `host:port` to connect to.
    authority: String,
    /// The path (with any query it already has).
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Option<Target>, String> {
        if url.is_empty() {
            return Ok(None);
        }
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("[auth.http] invalid URL {url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "[auth.http] URL {url:?}: only http:// is supported (run the service on loopback or behind a TLS proxy)"
            ));
        }
        let Some(host) = uri.host() else {
            return Err(format!("[auth.http] URL {url:?} has no host"));
        };
        let port = uri.port_u16().unwrap_or(80);
        Ok(Some(Target {
            authority: format!("{host}:{port}"),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        }))
    }
}

/// The HTTP back-end.
pub struct HttpAuth {
    user: Option<Target>,
    vhost: Option<Target>,
    resource: Option<Target>,
    topic: Option<Target>,
    method: HttpMethod,
    ttl: Duration,
    timeout: Duration,
    cache: parking_lot::Mutex<HashMap<[u8; 32], (bool, Instant)>>,
}

impl HttpAuth {
    /// The back-end `config` describes; an error names the bad URL.
    pub fn new(config: &HttpAuthConfig) -> Result<HttpAuth, String> {
        Ok(HttpAuth {
            user: Target::parse(&config.user_path)?,
            vhost: Target::parse(&config.vhost_path)?,
            resource: Target::parse(&config.resource_path)?,
            topic: Target::parse(&config.topic_path)?,
            method: config.method,
            ttl: Duration::from_secs(config.cache_ttl_secs),
            timeout: Duration::from_millis(config.timeout_ms.max(1)),
            cache: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    fn target(&self, path: Path) -> Option<&Target> {
        match path {
            Path::User => self.user.as_ref(),
            Path::Vhost => self.vhost.as_ref(),
            Path::Resource => self.resource.as_ref(),
            Path::Topic => self.topic.as_ref(),
        }
    }

    /// The cache key of a question.
    fn key(path: Path, params: &[(&str, &str)]) -> [u8; 32] {
        use blake2::Digest;
        let mut h = blake2::Blake2s256::new();
        h.update([path as u8]);
        for (k, v) in params {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        h.finalize().into()
    }

    /// A cached answer still in force.
    fn cached(&self, path: Path, params: &[(&str, &str)]) -> Option<bool> {
        if self.ttl.is_zero() {
            return None;
        }
        let key = HttpAuth::key(path, params);
        let cache = self.cache.lock();
        let (allow, at) = cache.get(&key)?;
        (at.elapsed() < self.ttl).then_some(*allow)
    }

    fn remember(&self, path: Path, params: &[(&str, &str)], allow: bool) {
        if self.ttl.is_zero() {
            return;
        }
        let mut cache = self.cache.lock();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(HttpAuth::key(path, params), (allow, Instant::now()));
    }

    /// Asks the service (or the cache): allow or not. A path not
    /// configured denies.
    async fn ask(&self, path: Path, params: &[(&str, &str)]) -> bool {
        if let Some(allow) = self.cached(path, params) {
            return allow;
        }
        let Some(target) = self.target(path) else {
            return false;
        };
        match tokio::time::timeout(self.timeout, self.request(target, params)).await {
            Ok(Ok(allow)) => {
                self.remember(path, params, allow);
                allow
            }
            Ok(Err(why)) => {
                tracing::warn!(url = %target.path, error = %why, "HTTP auth back-end failed; denied");
                false
            }
            Err(_) => {
                tracing::warn!(url = %target.path, "HTTP auth back-end timed out; denied");
                false
            }
        }
    }

    /// One request on its own connection (answers are cached, so
    /// connections are few).
    async fn request(&self, target: &Target, params: &[(&str, &str)]) -> Result<bool, String> {
        let form = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let request = match self.method {
            HttpMethod::Get => {
                let sep = if target.path.contains('?') { '&' } else { '?' };
                Request::get(format!("{}{sep}{form}", target.path))
                    .header(HOST, &target.authority)
                    .body(Full::new(Bytes::new()))
            }
            HttpMethod::Post => Request::post(&target.path)
                .header(HOST, &target.authority)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(form))),
        }
        .map_err(|e| e.to_string())?;
        let (status, body) =
            crate::http_client::send(&target.authority, request, MAX_ANSWER).await?;
        if status != 200 && status != 201 {
            return Err(format!("status {status}"));
        }
        let text = String::from_utf8_lossy(&body);
        let word = text.split_whitespace().next().unwrap_or("");
        Ok(word.eq_ignore_ascii_case("allow"))
    }

    /// A login answered from the cache, when it can be.
    pub fn authenticate_fast(&self, user: &str, password: &str) -> Option<bool> {
        self.cached(Path::User, &[("username", user), ("password", password)])
    }

    /// A login: asks `user_path` with `username` and `password`.
    pub async fn authenticate(&self, user: &str, password: &str) -> bool {
        self.ask(Path::User, &[("username", user), ("password", password)])
            .await
    }

    /// Asks `vhost_path` with `username`, `vhost` and `ip`.
    pub async fn vhost_access(&self, who: &Principal) -> bool {
        let ip = ip_text(who.peer);
        self.ask(
            Path::Vhost,
            &[("username", &who.user), ("vhost", &who.vhost), ("ip", &ip)],
        )
        .await
    }

    fn params<'a>(
        who: &'a Principal,
        perm: Permission,
        what: &'a Resource<'a>,
    ) -> (Path, Vec<(&'static str, &'a str)>) {
        let mut params = vec![
            ("username", who.user.as_str()),
            ("vhost", who.vhost.as_str()),
            ("resource", what.kind()),
            ("permission", perm.as_str()),
        ];
        match what {
            Resource::Topic {
                exchange,
                routing_key,
            } => {
                params.push(("name", exchange));
                params.push(("routing_key", routing_key));
                params.push(("variable_map.username", who.user.as_str()));
                params.push(("variable_map.vhost", who.vhost.as_str()));
                params.push(("variable_map.client_id", who.client_id.as_str()));
                (Path::Topic, params)
            }
            _ => {
                params.push(("name", what.name()));
                (Path::Resource, params)
            }
        }
    }

    /// A permission answered from the cache, when it can be.
    pub fn authorize_fast(
        &self,
        who: &Principal,
        perm: Permission,
        what: &Resource<'_>,
    ) -> Option<bool> {
        let (path, params) = HttpAuth::params(who, perm, what);
        self.cached(path, &params)
    }

    /// Asks `resource_path` (`username`, `vhost`, `resource`, `name`,
    /// `permission`) or `topic_path` (the same with `routing_key` and
    /// `variable_map.*`).
    pub async fn authorize(&self, who: &Principal, perm: Permission, what: Resource<'_>) -> bool {
        let (path, params) = HttpAuth::params(who, perm, &what);
        self.ask(path, &params).await
    }

    /// Topic checks are asked only when `topic_path` is set.
    pub fn topic_rules(&self) -> bool {
        self.topic.is_some()
    }
}

/// An address as the service sees it (IPv4-mapped IPv6 as IPv4).
fn ip_text(ip: IpAddr) -> String {
    ip.to_canonical().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_with_a_host() {
        assert!(Target::parse("").expect("empty").is_none());
        let t = Target::parse("http://127.0.0.1:8000/auth/user")
            .expect("ok")
            .expect("some");
        assert_eq!(t.authority, "127.0.0.1:8000");
        assert_eq!(t.path, "/auth/user");
        assert!(Target::parse("https://auth.example/user").is_err());
        assert!(Target::parse("not a url").is_err());
    }
}
