//! Logins and permissions for the protocol adapters: a chain of back-ends
//! (the users file, an HTTP service) behind the core's [`Authenticator`].
//!
//! A login is offered to each back-end in `[auth] backends` order; the
//! first that accepts it is recorded in the connection's
//! [`Principal::backend`] and answers its vhost and permission checks too,
//! as RabbitMQ's `auth_backends` do.

mod file;
mod http;

use std::net::IpAddr;
use std::sync::Arc;

use junction_core::access::BoxFuture;
use junction_core::{Authenticator, Login, Permission, Principal, Resource};

pub use file::FileAuth;
pub use http::HttpAuth;

/// One back-end of the chain.
pub enum Backend {
    /// The users file.
    File(Arc<FileAuth>),
    /// An HTTP service.
    Http(Arc<HttpAuth>),
}

/// The back-ends in the order they are asked.
pub struct Chain {
    backends: Vec<Backend>,
}

fn login(i: usize) -> Login {
    Login {
        backend: u8::try_from(i).unwrap_or(u8::MAX),
    }
}

impl Chain {
    /// The chain of `backends`, asked in order.
    pub fn new(backends: Vec<Backend>) -> Chain {
        Chain { backends }
    }

    fn backend(&self, who: &Principal) -> Option<&Backend> {
        self.backends.get(usize::from(who.backend))
    }

    /// The users file's index in the chain.
    fn file(&self) -> Option<(usize, &FileAuth)> {
        self.backends.iter().enumerate().find_map(|(i, b)| match b {
            Backend::File(f) => Some((i, f.as_ref())),
            Backend::Http(_) => None,
        })
    }
}

impl Authenticator for Chain {
    fn authenticate(&self, user: &str, password: &str, peer: IpAddr) -> Result<Login, String> {
        let mut refusal = "no authentication back-end".to_owned();
        for (i, b) in self.backends.iter().enumerate() {
            let verdict = match b {
                Backend::File(f) => f.authenticate(user, password, peer),
                Backend::Http(h) => {
                    // On a blocking thread (LoginGate), so waiting here is
                    // allowed; the runtime drives the request.
                    let asked = tokio::runtime::Handle::try_current()
                        .map(|rt| rt.block_on(h.authenticate(user, password)));
                    match asked {
                        Ok(true) => Ok(()),
                        Ok(false) => Err("refused by the HTTP back-end".to_owned()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            };
            match verdict {
                Ok(()) => return Ok(login(i)),
                Err(why) => refusal = why,
            }
        }
        Err(refusal)
    }

    fn authenticate_fast(
        &self,
        user: &str,
        password: &str,
        peer: IpAddr,
    ) -> Option<Result<Login, String>> {
        // Only a chain whose every earlier link answers at once can answer
        // at once: a later acceptance must not skip an earlier back-end.
        for (i, b) in self.backends.iter().enumerate() {
            match b {
                Backend::File(f) => match f.authenticate_fast(user, password, peer) {
                    Some(Ok(())) => return Some(Ok(login(i))),
                    Some(Err(why)) if self.backends.len() == 1 => return Some(Err(why)),
                    _ => return None,
                },
                Backend::Http(h) => match h.authenticate_fast(user, password) {
                    Some(true) => return Some(Ok(login(i))),
                    Some(false) if i + 1 == self.backends.len() => {
                        return Some(Err("refused by the HTTP back-end".to_owned()));
                    }
                    Some(false) => continue,
                    None => return None,
                },
            }
        }
        None
    }

    fn knows_user(&self, user: &str) -> bool {
        self.file().is_some_and(|(_, f)| f.knows_user(user))
    }

    fn certificate_login(&self, user: &str, peer: IpAddr) -> Result<Login, String> {
        // Certificate users are the users file's: the HTTP back-end has no
        // question for a login without a password.
        let Some((i, f)) = self.file() else {
            return Err("certificate login needs the users file back-end".to_owned());
        };
        if !f.knows_user(user) {
            return Err(format!("no user '{user}' for the client certificate"));
        }
        if !f.may_connect_from(user, peer) {
            return Err(format!("user '{user}' may not connect from {peer}"));
        }
        Ok(login(i))
    }

    fn may_connect_from(&self, user: &str, peer: IpAddr) -> bool {
        self.file()
            .is_none_or(|(_, f)| f.may_connect_from(user, peer))
    }

    fn vhost_access<'a>(&'a self, who: &'a Principal) -> BoxFuture<'a, bool> {
        match self.backend(who) {
            Some(Backend::File(f)) => Box::pin(std::future::ready(f.vhost_access(who))),
            Some(Backend::Http(h)) => Box::pin(h.vhost_access(who)),
            None => Box::pin(std::future::ready(false)),
        }
    }

    fn authorize_fast(
        &self,
        who: &Principal,
        perm: Permission,
        what: &Resource<'_>,
    ) -> Option<bool> {
        match self.backend(who) {
            Some(Backend::File(f)) => Some(f.authorize(who, perm, what)),
            Some(Backend::Http(h)) => h.authorize_fast(who, perm, what),
            None => Some(false),
        }
    }

    fn authorize<'a>(
        &'a self,
        who: &'a Principal,
        perm: Permission,
        what: Resource<'a>,
    ) -> BoxFuture<'a, bool> {
        match self.backend(who) {
            Some(Backend::File(f)) => Box::pin(std::future::ready(f.authorize(who, perm, &what))),
            Some(Backend::Http(h)) => Box::pin(h.authorize(who, perm, what)),
            None => Box::pin(std::future::ready(false)),
        }
    }

    fn topic_rules(&self, who: &Principal, exchange: &str) -> bool {
        match self.backend(who) {
            Some(Backend::File(f)) => f.topic_rules(who, exchange),
            Some(Backend::Http(h)) => h.topic_rules(),
            None => true,
        }
    }

    fn access_epoch(&self) -> u64 {
        self.file().map_or(0, |(_, f)| f.epoch())
    }
}
