//! Users: the users file and password checks; the `junction user` command
//! lives in the `command` submodule ([`run_user_command`]).
//!
//! The file is TOML, one `[[user]]` table per user, with its permissions
//! (RabbitMQ's model, see `permissions`):
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! tags = ["administrator"]
//!
//! [[user.permissions]]
//! vhost = "/"
//! configure = ".*"
//! write = ".*"
//! read = ".*"
//!
//! [[user.topic_permissions]]
//! vhost = "/"
//! exchange = "amq.topic"
//! write = "^devices\\.{client_id}\\."
//! read = ".*"
//! ```
//!
//! A user may use only the vhosts it has permissions on. An older file's
//! `vhosts = ["/"]` still loads, as `.*` permissions on each vhost listed,
//! and is written back in the new form.
//!
//! Passwords are stored only as argon2id PHC strings. When the file does not
//! exist the database holds just the built-in `guest`/`guest` (`.*` on "/"),
//! which is not written to disk until a command saves the database; from
//! then on `guest` is an ordinary entry of the file (`junction user passwd
//! guest` changes it, `junction user delete guest` removes it for good).
//!
//! Hashing and verifying are deliberately slow (tens of milliseconds of CPU
//! and ~19 MiB of memory each): async callers must run
//! [`UserDb::authenticate`], [`UserDb::add`] and [`UserDb::passwd`] through
//! `tokio::task::spawn_blocking`, never on a runtime worker.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};

mod command;
pub mod permissions;

pub use command::{run_permission_command, run_user_command};
pub use permissions::{ExpansionCache, Pattern, TopicPermissions, VhostPermissions};

/// The built-in user that exists while there is no users file.
pub const GUEST: &str = "guest";

/// Longest user name, vhost name or tag accepted, in bytes (an AMQP
/// short string, the tightest of the three protocols).
const MAX_NAME_LEN: usize = 255;

/// Comment lines at the top of every saved users file.
const FILE_HEADER: &str = "# Junction users. Edit with `junction user add|delete|passwd|list`,\n\
# `junction permission set|clear|list` and `junction topic-permission set|clear|list`.\n\
# password_hash is an argon2id PHC string; passwords are never stored.\n\n";

/// What a user may do once logged in. Never holds the password hash, so it
/// can be logged and passed around freely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name, unique in the database.
    pub name: String,
    /// Free-form roles (e.g. "administrator"); the broker does not interpret
    /// them yet, they are kept for the admin API.
    pub tags: Vec<String>,
    /// Configure / write / read patterns by vhost; a vhost not here cannot
    /// be used.
    pub permissions: BTreeMap<String, VhostPermissions>,
    /// Topic patterns by vhost and exchange; an exchange not here limits
    /// no routing key.
    pub topic_permissions: BTreeMap<(String, String), TopicPermissions>,
}

impl User {
    /// Whether this user may open `vhost`: it has permissions there.
    pub fn may_access(&self, vhost: &str) -> bool {
        self.permissions.contains_key(vhost)
    }

    /// The vhosts this user may open, sorted.
    pub fn vhosts(&self) -> impl Iterator<Item = &str> {
        self.permissions.keys().map(String::as_str)
    }
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Unknown user or wrong password. One variant for both so a client
    /// cannot probe which user names exist.
    #[error("bad user name or password")]
    BadCredentials,
    /// `guest` tried to log in from a non-loopback address while
    /// `guest_loopback_only` is set.
    #[error("user 'guest' may only connect from a loopback address")]
    LoopbackOnly,
}

/// Why the users file or a `junction user` command failed.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The users file exists but could not be read.
    #[error("cannot read users file {path}: {source}")]
    Read {
        /// The users file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The users file is not valid TOML or does not match the schema.
    #[error("invalid users file {path}: {source}")]
    Parse {
        /// The users file.
        path: PathBuf,
        /// The TOML error, with line and column.
        source: toml::de::Error,
    },
    /// The users file parsed but its content is inconsistent.
    #[error("invalid users file {path}: {reason}")]
    Invalid {
        /// The users file.
        path: PathBuf,
        /// What is wrong (duplicate user, malformed hash...).
        reason: String,
    },
    /// Writing the users file (or its temporary copy) failed.
    #[error("cannot write users file {path}: {source}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The database could not be turned into TOML.
    #[error("cannot encode users file: {0}")]
    Encode(#[from] toml::ser::Error),
    /// `add` of a name that is taken.
    #[error("user '{0}' already exists")]
    UserExists(String),
    /// `delete` or `passwd` of a name that is not there.
    #[error("no user '{0}'")]
    NoSuchUser(String),
    /// The cluster did not take the change (no majority reachable: 503;
    /// a users file over the cluster's entry limit: 400).
    #[error("{0}")]
    Cluster(junction_core::CoreError),
    /// A permission pattern that is not a valid regular expression.
    #[error("{0}")]
    InvalidPattern(String),
    /// A permission for a vhost the broker does not have.
    #[error("no vhost '{0}' (the vhosts are [broker] vhosts in the config)")]
    NoSuchVhost(String),
    /// A user name, vhost or tag that is empty, too long or holds control
    /// characters.
    #[error("invalid {kind} {value:?}: must be 1 to 255 bytes without control characters")]
    InvalidName {
        /// "user name", "vhost" or "tag".
        kind: &'static str,
        /// The rejected value.
        value: String,
    },
    /// An empty password (also: empty line or end of input on stdin).
    #[error("the password must not be empty")]
    EmptyPassword,
    /// Reading the password from stdin failed.
    #[error("cannot read the password from stdin: {0}")]
    ReadPassword(std::io::Error),
    /// argon2 refused to hash (does not happen with valid parameters).
    #[error("cannot hash the password: {0}")]
    Hash(argon2::password_hash::Error),
}

/// One `[[user]]` table of the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserRecord {
    name: String,
    password_hash: String,
    /// The older form: `.*` permissions on each vhost listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    vhosts: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    permissions: Vec<PermissionRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    topic_permissions: Vec<TopicPermissionRecord>,
}

/// One `[[user.permissions]]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PermissionRecord {
    vhost: String,
    configure: String,
    write: String,
    read: String,
}

/// One `[[user.topic_permissions]]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicPermissionRecord {
    vhost: String,
    exchange: String,
    write: String,
    read: String,
}

/// The whole file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default, rename = "user")]
    users: Vec<UserRecord>,
}

/// A user and the hash that proves its password.
#[derive(Clone)]
struct Entry {
    user: User,
    password_hash: String,
}

/// The users database: loaded from the users file, edited in memory,
/// written back by [`UserDb::save`].
#[derive(Clone)]
pub struct UserDb {
    /// The file this database was loaded from and saves to.
    path: PathBuf,
    /// Users by name; a BTreeMap so `list` and the saved file are sorted.
    users: BTreeMap<String, Entry>,
    /// Hashes new passwords and burns the same CPU for unknown users. Always
    /// `Argon2::default()` (argon2id, m=19 MiB, t=2, p=1) outside tests;
    /// verification uses the parameters stored in each hash.
    hasher: Argon2<'static>,
}

impl fmt::Debug for UserDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserDb")
            .field("path", &self.path)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl UserDb {
    /// Loads the users file at `path`. An absent file gives a database
    /// holding only `guest`/`guest` with vhost "/" (nothing is written).
    ///
    /// Slow when the file is absent (hashes the guest password): call it
    /// before starting the runtime or via `spawn_blocking`.
    pub fn load(path: &Path) -> Result<UserDb, UsersError> {
        UserDb::load_with(path, Argon2::default())
    }

    /// [`UserDb::load`] with a chosen hasher (tests use cheap parameters).
    fn load_with(path: &Path, hasher: Argon2<'static>) -> Result<UserDb, UsersError> {
        let mut db = UserDb {
            path: path.to_owned(),
            users: BTreeMap::new(),
            hasher,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => UserDb::parse_with(path, &text, db.hasher),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // As RabbitMQ's guest: an administrator (management API).
                db.add(
                    GUEST,
                    GUEST,
                    vec!["/".to_owned()],
                    vec!["administrator".to_owned()],
                )?;
                Ok(db)
            }
            Err(source) => Err(UsersError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// The users of a users file's `text` (the cluster's copy), saving to
    /// `path`.
    pub fn parse(path: &Path, text: &str) -> Result<UserDb, UsersError> {
        UserDb::parse_with(path, text, Argon2::default())
    }

    fn parse_with(path: &Path, text: &str, hasher: Argon2<'static>) -> Result<UserDb, UsersError> {
        let mut db = UserDb {
            path: path.to_owned(),
            users: BTreeMap::new(),
            hasher,
        };
        let file: UsersFile = toml::from_str(text).map_err(|source| UsersError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |reason: String| UsersError::Invalid {
            path: path.to_owned(),
            reason,
        };
        for record in file.users {
            check_label("user name", &record.name).map_err(|e| invalid(e.to_string()))?;
            let mut permissions = BTreeMap::new();
            for vhost in &record.vhosts {
                check_label("vhost", vhost).map_err(|e| invalid(e.to_string()))?;
                permissions.insert(vhost.clone(), VhostPermissions::all());
            }
            let in_user = |e: String| invalid(format!("user '{}': {e}", record.name));
            for p in &record.permissions {
                check_label("vhost", &p.vhost).map_err(|e| in_user(e.to_string()))?;
                permissions.insert(
                    p.vhost.clone(),
                    VhostPermissions {
                        configure: Pattern::resource(&p.configure).map_err(in_user)?,
                        write: Pattern::resource(&p.write).map_err(in_user)?,
                        read: Pattern::resource(&p.read).map_err(in_user)?,
                    },
                );
            }
            let mut topic_permissions = BTreeMap::new();
            for t in &record.topic_permissions {
                check_label("vhost", &t.vhost).map_err(|e| in_user(e.to_string()))?;
                check_label("exchange", &t.exchange).map_err(|e| in_user(e.to_string()))?;
                topic_permissions.insert(
                    (t.vhost.clone(), t.exchange.clone()),
                    TopicPermissions {
                        write: Pattern::topic(&t.write).map_err(in_user)?,
                        read: Pattern::topic(&t.read).map_err(in_user)?,
                    },
                );
            }
            for tag in &record.tags {
                check_label("tag", tag).map_err(|e| invalid(e.to_string()))?;
            }
            if let Err(e) = check_hash(&record.password_hash) {
                return Err(invalid(format!(
                    "user '{}' has a malformed password_hash: {e}",
                    record.name
                )));
            }
            if db.users.contains_key(&record.name) {
                return Err(invalid(format!("user '{}' appears twice", record.name)));
            }
            db.users.insert(
                record.name.clone(),
                Entry {
                    user: User {
                        name: record.name,
                        tags: record.tags,
                        permissions,
                        topic_permissions,
                    },
                    password_hash: record.password_hash,
                },
            );
        }
        Ok(db)
    }

    /// The file this database saves to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every user, sorted by name.
    pub fn list(&self) -> impl Iterator<Item = &User> {
        self.users.values().map(|e| &e.user)
    }

    /// The stored hash of `name`'s password (to tell whether it changed).
    pub(crate) fn password_hash(&self, name: &str) -> Option<&str> {
        self.users.get(name).map(|e| e.password_hash.as_str())
    }

    /// The user called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.get(name).map(|e| &e.user)
    }

    /// Adds a user (in memory; call [`UserDb::save`] to keep it), with
    /// `.*` permissions on each of `vhosts`. Slow: hashes the password.
    pub fn add(
        &mut self,
        name: &str,
        password: &str,
        vhosts: Vec<String>,
        tags: Vec<String>,
    ) -> Result<(), UsersError> {
        check_label("user name", name)?;
        for vhost in &vhosts {
            check_label("vhost", vhost)?;
        }
        for tag in &tags {
            check_label("tag", tag)?;
        }
        if self.users.contains_key(name) {
            return Err(UsersError::UserExists(name.to_owned()));
        }
        let password_hash = self.hash(password)?;
        self.users.insert(
            name.to_owned(),
            Entry {
                user: User {
                    name: name.to_owned(),
                    tags,
                    permissions: vhosts
                        .into_iter()
                        .map(|v| (v, VhostPermissions::all()))
                        .collect(),
                    topic_permissions: BTreeMap::new(),
                },
                password_hash,
            },
        );
        Ok(())
    }

    /// Creates or changes user `name` (in memory): the password is
    /// `password` (hashed here, slow), else the argon2id PHC string
    /// `password_hash`, else, for a user that exists, unchanged; the tags
    /// are replaced. A new user gets no permissions. Whether it was made.
    pub fn put(
        &mut self,
        name: &str,
        password: Option<&str>,
        password_hash: Option<&str>,
        tags: Vec<String>,
    ) -> Result<bool, UsersError> {
        check_label("user name", name)?;
        for tag in &tags {
            check_label("tag", tag)?;
        }
        let hash = match (password, password_hash) {
            (Some(p), _) => Some(self.hash(p)?),
            (None, Some(h)) => {
                check_hash(h).map_err(|e| UsersError::Invalid {
                    path: self.path.clone(),
                    reason: format!("bad password_hash: {e}"),
                })?;
                Some(h.to_owned())
            }
            (None, None) => None,
        };
        if let Some(entry) = self.users.get_mut(name) {
            entry.user.tags = tags;
            if let Some(h) = hash {
                entry.password_hash = h;
            }
            return Ok(false);
        }
        let Some(password_hash) = hash else {
            return Err(UsersError::EmptyPassword);
        };
        self.users.insert(
            name.to_owned(),
            Entry {
                user: User {
                    name: name.to_owned(),
                    tags,
                    permissions: BTreeMap::new(),
                    topic_permissions: BTreeMap::new(),
                },
                password_hash,
            },
        );
        Ok(true)
    }

    /// Removes a user (in memory; call [`UserDb::save`] to keep it).
    pub fn delete(&mut self, name: &str) -> Result<(), UsersError> {
        match self.users.remove(name) {
            Some(_) => Ok(()),
            None => Err(UsersError::NoSuchUser(name.to_owned())),
        }
    }

    /// Replaces a user's password (in memory; call [`UserDb::save`] to keep
    /// it). Slow: hashes the password.
    pub fn passwd(&mut self, name: &str, password: &str) -> Result<(), UsersError> {
        if !self.users.contains_key(name) {
            return Err(UsersError::NoSuchUser(name.to_owned()));
        }
        let hash = self.hash(password)?;
        match self.users.get_mut(name) {
            Some(entry) => {
                entry.password_hash = hash;
                Ok(())
            }
            None => Err(UsersError::NoSuchUser(name.to_owned())),
        }
    }

    /// Sets `user`'s configure / write / read patterns on `vhost`, replacing
    /// any (in memory; call [`UserDb::save`] to keep it).
    pub fn set_permissions(
        &mut self,
        user: &str,
        vhost: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), UsersError> {
        check_label("vhost", vhost)?;
        let perms = VhostPermissions {
            configure: Pattern::resource(configure).map_err(UsersError::InvalidPattern)?,
            write: Pattern::resource(write).map_err(UsersError::InvalidPattern)?,
            read: Pattern::resource(read).map_err(UsersError::InvalidPattern)?,
        };
        self.user_mut(user)?
            .permissions
            .insert(vhost.to_owned(), perms);
        Ok(())
    }

    /// Takes `user`'s permissions on `vhost` away (the vhost can no longer
    /// be used); whether there were any.
    pub fn clear_permissions(&mut self, user: &str, vhost: &str) -> Result<bool, UsersError> {
        Ok(self.user_mut(user)?.permissions.remove(vhost).is_some())
    }

    /// Takes every user's permissions and topic permissions on `vhost`
    /// away (the vhost is deleted); how many users had some.
    pub fn forget_vhost(&mut self, vhost: &str) -> usize {
        let mut touched = 0;
        for entry in self.users.values_mut() {
            let u = &mut entry.user;
            let before = u.permissions.len() + u.topic_permissions.len();
            u.permissions.remove(vhost);
            u.topic_permissions.retain(|(v, _), _| v != vhost);
            if u.permissions.len() + u.topic_permissions.len() != before {
                touched += 1;
            }
        }
        touched
    }

    /// Sets `user`'s topic patterns on `exchange` in `vhost`, replacing any.
    pub fn set_topic_permissions(
        &mut self,
        user: &str,
        vhost: &str,
        exchange: &str,
        write: &str,
        read: &str,
    ) -> Result<(), UsersError> {
        check_label("vhost", vhost)?;
        check_label("exchange", exchange)?;
        let perms = TopicPermissions {
            write: Pattern::topic(write).map_err(UsersError::InvalidPattern)?,
            read: Pattern::topic(read).map_err(UsersError::InvalidPattern)?,
        };
        self.user_mut(user)?
            .topic_permissions
            .insert((vhost.to_owned(), exchange.to_owned()), perms);
        Ok(())
    }

    /// Removes `user`'s topic patterns in `vhost`, on `exchange` or on every
    /// exchange; how many were removed.
    pub fn clear_topic_permissions(
        &mut self,
        user: &str,
        vhost: &str,
        exchange: Option<&str>,
    ) -> Result<usize, UsersError> {
        let topics = &mut self.user_mut(user)?.topic_permissions;
        let before = topics.len();
        topics.retain(|(v, x), _| !(v == vhost && exchange.is_none_or(|e| e == x)));
        Ok(before - topics.len())
    }

    fn user_mut(&mut self, name: &str) -> Result<&mut User, UsersError> {
        self.users
            .get_mut(name)
            .map(|e| &mut e.user)
            .ok_or_else(|| UsersError::NoSuchUser(name.to_owned()))
    }

    /// The users file's text for these users.
    pub fn to_text(&self) -> Result<String, UsersError> {
        let file = UsersFile {
            users: self
                .users
                .values()
                .map(|e| UserRecord {
                    name: e.user.name.clone(),
                    password_hash: e.password_hash.clone(),
                    vhosts: Vec::new(),
                    tags: e.user.tags.clone(),
                    permissions: e
                        .user
                        .permissions
                        .iter()
                        .map(|(vhost, p)| PermissionRecord {
                            vhost: vhost.clone(),
                            configure: p.configure.to_string(),
                            write: p.write.to_string(),
                            read: p.read.to_string(),
                        })
                        .collect(),
                    topic_permissions: e
                        .user
                        .topic_permissions
                        .iter()
                        .map(|((vhost, exchange), t)| TopicPermissionRecord {
                            vhost: vhost.clone(),
                            exchange: exchange.clone(),
                            write: t.write.to_string(),
                            read: t.read.to_string(),
                        })
                        .collect(),
                })
                .collect(),
        };
        Ok(format!("{FILE_HEADER}{}", toml::to_string(&file)?))
    }

    /// Writes the database to its file atomically: a temporary file in the
    /// same directory (mode 0600: it holds password hashes), synced, then
    /// renamed over the old one, then the directory synced. A crash leaves
    /// either the old or the new file, never a torn one. Creates the
    /// directory if needed (`junction user add` may run before the first
    /// start). Two `junction user` commands racing each other may lose one
    /// update; that is accepted for an offline admin tool.
    pub fn save(&self) -> Result<(), UsersError> {
        let text = self.to_text()?;
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "users.toml".to_owned());
        let tmp = dir.join(format!(".{file_name}.tmp"));
        let write_err = |path: &Path| {
            let path = path.to_owned();
            move |source| UsersError::Write { path, source }
        };

        std::fs::create_dir_all(&dir).map_err(write_err(&dir))?;
        let mut out = open_private(&tmp).map_err(write_err(&tmp))?;
        out.write_all(text.as_bytes()).map_err(write_err(&tmp))?;
        out.sync_all().map_err(write_err(&tmp))?;
        drop(out);
        std::fs::rename(&tmp, &self.path).map_err(write_err(&self.path))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err(&dir))?;
        Ok(())
    }

    /// Checks a login. `peer` is the client's address; with
    /// `guest_loopback_only`, `guest` is refused from any non-loopback peer
    /// (IPv4-mapped IPv6 loopback counts as loopback).
    ///
    /// The loopback rule is checked first, so a remote `guest` attempt costs
    /// no hashing.
    ///
    /// Slow by design (argon2): run it via `tokio::task::spawn_blocking`.
    /// An unknown user costs the same work as a known one, so timing does
    /// not reveal which names exist.
    pub fn authenticate(
        &self,
        name: &str,
        password: &str,
        peer: IpAddr,
        guest_loopback_only: bool,
    ) -> Result<User, AuthError> {
        if name == GUEST && guest_loopback_only && !peer.to_canonical().is_loopback() {
            return Err(AuthError::LoopbackOnly);
        }
        let Some(entry) = self.users.get(name) else {
            self.burn_one_hash(password);
            return Err(AuthError::BadCredentials);
        };
        if let Some(b64) = entry.password_hash.strip_prefix(RABBIT_SHA256) {
            // Imported from RabbitMQ: fast to check, kept as it came.
            return if rabbit_sha256_matches(b64, password) {
                Ok(entry.user.clone())
            } else {
                Err(AuthError::BadCredentials)
            };
        }
        let Ok(hash) = PasswordHash::new(&entry.password_hash) else {
            // Checked at load and produced by `hash`; unreachable in practice.
            return Err(AuthError::BadCredentials);
        };
        match self.hasher.verify_password(password.as_bytes(), &hash) {
            Ok(()) => Ok(entry.user.clone()),
            Err(_) => Err(AuthError::BadCredentials),
        }
    }

    /// Hashes `password` with a fresh random salt into a PHC string.
    fn hash(&self, password: &str) -> Result<String, UsersError> {
        if password.is_empty() {
            return Err(UsersError::EmptyPassword);
        }
        let salt = SaltString::generate(&mut OsRng);
        self.hasher
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(UsersError::Hash)
    }

    /// Does the work of one verification and throws the result away, so a
    /// refusal for an unknown user takes as long as a wrong password.
    fn burn_one_hash(&self, password: &str) {
        if let Ok(salt) = SaltString::from_b64("anVuY3Rpb24tdW5rbm93bi11c2Vy") {
            let _ = self.hasher.hash_password(password.as_bytes(), &salt);
        }
    }
}

/// The prefix of a password hash imported from RabbitMQ
/// (`rabbit_password_hashing_sha256`): base64 of a 4-byte salt and
/// SHA-256(salt ‖ password) follows.
pub const RABBIT_SHA256: &str = "$rabbit-sha256$";

/// A stored hash is an argon2 PHC string or an imported RabbitMQ SHA-256
/// one.
fn check_hash(h: &str) -> Result<(), String> {
    if let Some(b64) = h.strip_prefix(RABBIT_SHA256) {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("not base64: {e}"))?;
        if raw.len() != 4 + 32 {
            return Err(format!(
                "{} bytes, not a 4-byte salt and a SHA-256",
                raw.len()
            ));
        }
        return Ok(());
    }
    PasswordHash::new(h).map(|_| ()).map_err(|e| e.to_string())
}

/// RabbitMQ's `rabbit_password_hashing_sha256` check: base64 of salt ‖
/// SHA-256(salt ‖ password).
fn rabbit_sha256_matches(b64: &str, password: &str) -> bool {
    use base64::Engine as _;
    use sha2::Digest;
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return false;
    };
    if raw.len() != 36 {
        return false;
    }
    let (salt, want) = raw.split_at(4);
    let mut h = sha2::Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let got = h.finalize();
    got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Opens `path` for writing, truncated, readable by its owner only.
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path)?;
        // `mode` applies only on creation; a stale temporary file may have
        // other permissions.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    {
        options.open(path)
    }
}

/// Rejects names that would break the file, the `list` output or the wire.
fn check_label(kind: &'static str, value: &str) -> Result<(), UsersError> {
    if value.is_empty() || value.len() > MAX_NAME_LEN || value.chars().any(char::is_control) {
        return Err(UsersError::InvalidName {
            kind,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// Minimum-cost argon2id for tests: they check logic, not hash strength,
/// and the default parameters are slow in unoptimised builds.
#[cfg(test)]
fn cheap_hasher() -> Argon2<'static> {
    use argon2::{Algorithm, Params, Version};
    match Params::new(Params::MIN_M_COST, 1, 1, None) {
        Ok(params) => Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
        Err(e) => panic!("minimum argon2 parameters rejected: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users_path() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        (dir, path)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn absent_file_admits_guest_from_ipv4_and_ipv6_loopback() {
        let (_dir, path) = users_path();
        let db = UserDb::load(&path).expect("load");
        let guest = User {
            name: "guest".into(),
            tags: vec!["administrator".into()],
            permissions: BTreeMap::from([("/".to_owned(), VhostPermissions::all())]),
            topic_permissions: BTreeMap::new(),
        };
        assert_eq!(
            db.authenticate("guest", "guest", ip("127.0.0.1"), true),
            Ok(guest.clone())
        );
        assert_eq!(
            db.authenticate("guest", "guest", ip("::1"), true),
            Ok(guest.clone())
        );
        assert_eq!(
            db.authenticate("guest", "guest", ip("::ffff:127.0.0.1"), true),
            Ok(guest)
        );
        assert!(!path.exists(), "the built-in guest is not written to disk");
    }

    #[test]
    fn guest_is_refused_from_a_remote_peer_when_loopback_only() {
        let (_dir, path) = users_path();
        let db = UserDb::load_with(&path, cheap_hasher()).expect("load");
        assert_eq!(
            db.authenticate("guest", "guest", ip("10.0.0.1"), true),
            Err(AuthError::LoopbackOnly)
        );
        assert!(
            db.authenticate("guest", "guest", ip("10.0.0.1"), false)
                .is_ok()
        );
    }

    #[test]
    fn wrong_password_and_unknown_user_get_the_same_refusal() {
        let (_dir, path) = users_path();
        let db = UserDb::load_with(&path, cheap_hasher()).expect("load");
        let local = ip("127.0.0.1");
        assert_eq!(
            db.authenticate("guest", "nope", local, true),
            Err(AuthError::BadCredentials)
        );
        assert_eq!(
            db.authenticate("nobody", "guest", local, true),
            Err(AuthError::BadCredentials)
        );
    }

    #[test]
    fn saved_file_is_owner_only_and_holds_argon2id_hashes_not_passwords() {
        let (_dir, path) = users_path();
        let mut db = UserDb::load_with(&path, cheap_hasher()).expect("load");
        db.add("alice", "plaintext-secret", vec!["/".into()], vec![])
            .expect("add");
        db.save().expect("save");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("plaintext-secret"));
        assert!(text.contains("password_hash = \"$argon2id$"), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!path.with_file_name(".users.toml.tmp").exists());
    }

    #[test]
    fn saved_file_loads_back_to_the_same_users() {
        let (_dir, path) = users_path();
        let mut db = UserDb::load_with(&path, cheap_hasher()).expect("load");
        db.add(
            "bob",
            "pw",
            vec!["/".into(), "iot".into()],
            vec!["ops".into()],
        )
        .expect("add");
        db.save().expect("save");
        let again = UserDb::load_with(&path, cheap_hasher()).expect("reload");
        assert_eq!(
            again.list().collect::<Vec<_>>(),
            db.list().collect::<Vec<_>>()
        );
        assert!(
            again
                .authenticate("bob", "pw", ip("127.0.0.1"), true)
                .is_ok()
        );
    }

    #[test]
    fn save_creates_the_missing_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("not").join("yet").join("users.toml");
        let db = UserDb::load_with(&path, cheap_hasher()).expect("load");
        db.save().expect("save");
        assert!(
            UserDb::load_with(&path, cheap_hasher())
                .expect("reload")
                .get(GUEST)
                .is_some()
        );
    }

    #[test]
    fn duplicate_user_in_the_file_is_an_error_naming_the_file() {
        let (_dir, path) = users_path();
        let salt = SaltString::generate(&mut OsRng);
        let hash = cheap_hasher()
            .hash_password(b"pw", &salt)
            .expect("hash")
            .to_string();
        let table =
            format!("[[user]]\nname = \"alice\"\npassword_hash = \"{hash}\"\nvhosts = [\"/\"]\n");
        std::fs::write(&path, format!("{table}{table}")).expect("write");
        let err = UserDb::load_with(&path, cheap_hasher()).expect_err("duplicate");
        assert_eq!(
            err.to_string(),
            format!(
                "invalid users file {}: user 'alice' appears twice",
                path.display()
            )
        );
    }

    #[test]
    fn rabbitmq_sha256_hashes_log_in() {
        use base64::Engine as _;
        use sha2::Digest;
        let (_dir, path) = users_path();
        let mut db = UserDb::load_with(&path, cheap_hasher()).expect("load");
        let salt = [1u8, 2, 3, 4];
        let mut h = sha2::Sha256::new();
        h.update(salt);
        h.update(b"from-rabbit");
        let mut raw = salt.to_vec();
        raw.extend_from_slice(&h.finalize());
        let stored = format!(
            "{RABBIT_SHA256}{}",
            base64::engine::general_purpose::STANDARD.encode(&raw)
        );
        db.put("r", None, Some(&stored), vec![]).expect("put");
        db.save().expect("save");
        let db = UserDb::load_with(&path, cheap_hasher()).expect("reload");
        assert!(
            db.authenticate("r", "from-rabbit", ip("127.0.0.1"), true)
                .is_ok()
        );
        assert_eq!(
            db.authenticate("r", "wrong", ip("127.0.0.1"), true),
            Err(AuthError::BadCredentials)
        );
        assert!(check_hash(&format!("{RABBIT_SHA256}AAAA")).is_err());
    }

    #[test]
    fn malformed_hash_in_the_file_is_an_error() {
        let (_dir, path) = users_path();
        std::fs::write(
            &path,
            "[[user]]\nname = \"x\"\npassword_hash = \"plain\"\nvhosts = [\"/\"]\n",
        )
        .expect("write");
        assert!(matches!(
            UserDb::load_with(&path, cheap_hasher()),
            Err(UsersError::Invalid { .. })
        ));
    }
}
