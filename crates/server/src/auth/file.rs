//! The users-file back-end: logins against argon2 hashes, permissions
//! from the file's patterns, and the file read again when it changes.
//!
//! Argon2 is slow and takes 19 MiB per verification on purpose, which is
//! right for a password file but wrong for a broker that a fleet of devices
//! reconnects to at once. So a login verified once is remembered as a keyed
//! digest (BLAKE2b, key random per process) and later logins with the same
//! password are checked against that; and at most two argon2 checks run at
//! a time, so a storm of (possibly wrong) logins cannot exhaust memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use junction_core::{Permission, Principal, Resource};

use crate::users::{AuthError, ExpansionCache, GUEST, UserDb, UsersError};

/// Most argon2 verifications at once.
const MAX_HASHING: usize = 2;

/// What identifies one version of the users file on disk: a save renames
/// a new file in, so the inode changes even within one mtime tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

/// The users file as the broker uses it.
pub struct FileAuth {
    path: PathBuf,
    db: parking_lot::RwLock<Arc<UserDb>>,
    /// The file version `db` was read from (None: there was no file).
    stamp: parking_lot::Mutex<Option<Stamp>>,
    /// Moves at every reload.
    epoch: AtomicU64,
    guest_loopback_only: bool,
    verified: parking_lot::Mutex<HashMap<String, [u8; 32]>>,
    credentials: junction_core::CredentialDigest,
    /// Argon2 checks running now, bounded by [`MAX_HASHING`].
    hashing: (parking_lot::Mutex<usize>, parking_lot::Condvar),
    expansions: ExpansionCache,
    /// Held by [`FileAuth::edit`]: one edit at a time.
    editing: parking_lot::Mutex<()>,
    /// In a cluster: commits the users file's text to the metadata group,
    /// whose observer puts it in force on every node
    /// ([`FileAuth::install_shared`]).
    share: std::sync::OnceLock<crate::cluster::Share>,
    /// The text of the cluster's version last put in force here.
    shared_text: parking_lot::Mutex<Option<String>>,
}

impl FileAuth {
    /// Serves `db`, which was just loaded from its file.
    pub fn new(db: UserDb, guest_loopback_only: bool) -> FileAuth {
        use argon2::password_hash::rand_core::{OsRng, RngCore};
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        let path = db.path().to_owned();
        FileAuth {
            stamp: parking_lot::Mutex::new(stamp(&path)),
            path,
            db: parking_lot::RwLock::new(Arc::new(db)),
            epoch: AtomicU64::new(0),
            guest_loopback_only,
            verified: parking_lot::Mutex::new(HashMap::new()),
            credentials: junction_core::CredentialDigest::from_key(key),
            hashing: (parking_lot::Mutex::new(0), parking_lot::Condvar::new()),
            expansions: ExpansionCache::default(),
            editing: parking_lot::Mutex::new(()),
            share: std::sync::OnceLock::new(),
            shared_text: parking_lot::Mutex::new(None),
        }
    }

    /// From now on, edits go to the cluster through `share` (see
    /// docs/cluster.md "Users, permissions and policies").
    pub fn share_through(&self, share: crate::cluster::Share) {
        let _ = self.share.set(share);
    }

    /// Puts the cluster's users file `text` in force here: saved to this
    /// node's file and used at once. Blocking (file I/O).
    pub fn install_shared(&self, text: &[u8]) -> Result<(), UsersError> {
        let text = String::from_utf8_lossy(text).into_owned();
        let db = UserDb::parse(&self.path, &text)?;
        // Not under `editing`: an edit here waits for this (its commit
        // returns once this node applied it). Known before the file is
        // written, so that a look at the file meanwhile does not take
        // this version for a change made here.
        *self.shared_text.lock() = Some(db.to_text()?);
        // In force first: a file that cannot be written here (a read-only
        // users_file) must not keep this node on the old users.
        let saved = db.save();
        *self.stamp.lock() = stamp(&self.path);
        self.install(db);
        saved
    }

    /// The users as they are now.
    pub fn db(&self) -> Arc<UserDb> {
        Arc::clone(&self.db.read())
    }

    /// Moves whenever the users or their permissions change.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Reads the file again if it changed since the last read (or
    /// always, with `force`); Ok(true) when the users were replaced (in a
    /// cluster: on every node). A file
    /// that does not parse leaves the users in force, and is not tried
    /// again until it changes (the caller logs why, once). Blocking (file
    /// I/O, and the built-in guest's hash when the file was removed).
    pub fn reload(&self, force: bool) -> Result<bool, UsersError> {
        let now = stamp(&self.path);
        {
            let mut seen = self.stamp.lock();
            if now == *seen && !force {
                return Ok(false);
            }
            *seen = now;
        }
        if let Some(share) = self.share.get() {
            return self.share_file(share);
        }
        let db = UserDb::load(&self.path)?;
        self.install(db);
        Ok(true)
    }

    /// In a cluster, the file changed here (`junction user`, an editor)
    /// is the cluster's from now on, on every node: committed when it
    /// differs from the version in force. A missing file, or one without
    /// users (removed, or caught half written), is not: it would lock every
    /// node out.
    fn share_file(&self, share: &crate::cluster::Share) -> Result<bool, UsersError> {
        let _one_at_a_time = self.editing.lock();
        if !self.path.exists() {
            tracing::warn!(file = %self.path.display(), "the users file is gone: the cluster's users stay in force");
            return Ok(false);
        }
        let db = UserDb::load(&self.path)?;
        if db.list().next().is_none() {
            tracing::warn!(file = %self.path.display(), "the users file holds no user: not made the cluster's");
            return Ok(false);
        }
        let text = db.to_text()?;
        if self.shared_text.lock().as_deref() == Some(text.as_str()) || self.db().to_text()? == text
        {
            return Ok(false);
        }
        match tokio::runtime::Handle::current().block_on(share(text.into_bytes())) {
            Ok(()) => Ok(true),
            Err(e) => {
                if matches!(e, junction_core::CoreError::Unavailable(_)) {
                    // Tried again at the next look.
                    *self.stamp.lock() = None;
                }
                Err(UsersError::Cluster(e))
            }
        }
    }

    /// Changes the users file: `f` edits a copy of the users in force,
    /// which is saved and put in force at once (the management API).
    /// Blocking (file I/O, and hashing if `f` hashes).
    pub fn edit<T>(
        &self,
        f: impl FnOnce(&mut UserDb) -> Result<T, UsersError>,
    ) -> Result<T, UsersError> {
        let _one_at_a_time = self.editing.lock();
        let mut db = UserDb::clone(&self.db());
        let out = f(&mut db)?;
        if let Some(share) = self.share.get() {
            // In force on every node, this one included, once committed
            // (the commit returns after this node applied it).
            let text = db.to_text()?;
            tokio::runtime::Handle::current()
                .block_on(share(text.into_bytes()))
                .map_err(UsersError::Cluster)?;
            return Ok(out);
        }
        db.save()?;
        *self.stamp.lock() = stamp(&self.path);
        self.install(db);
        Ok(out)
    }

    /// Puts `db` in force: open connections see it at their next check.
    fn install(&self, db: UserDb) {
        // Remembered logins stay only for users whose hash is unchanged.
        self.verified
            .lock()
            .retain(|user, _| db.password_hash(user) == self.db.read().password_hash(user));
        *self.db.write() = Arc::new(db);
        self.expansions.clear();
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn digest(&self, user: &str, password: &str) -> [u8; 32] {
        self.credentials.digest(user, password)
    }

    /// Whether `user` logged in before with the password of `digest`.
    fn is_verified(&self, user: &str, digest: &[u8; 32]) -> bool {
        self.verified
            .lock()
            .get(user)
            .is_some_and(|d| same_digest(d, digest))
    }

    fn verify_slowly(
        &self,
        user: &str,
        password: &str,
        peer: IpAddr,
        digest: &[u8; 32],
    ) -> Result<(), String> {
        let (count, cv) = &self.hashing;
        {
            let mut n = count.lock();
            while *n >= MAX_HASHING {
                cv.wait(&mut n);
            }
            *n += 1;
        }
        // Many clients often log in with the same credentials at once (a
        // fleet reconnecting): the first check's result serves the rest.
        let result = if self.is_verified(user, digest) {
            Ok(())
        } else {
            self.db()
                .authenticate(user, password, peer, self.guest_loopback_only)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        *count.lock() -= 1;
        cv.notify_one();
        result
    }

    /// A login answered without hashing, when it can be.
    pub fn authenticate_fast(
        &self,
        user: &str,
        password: &str,
        peer: IpAddr,
    ) -> Option<Result<(), String>> {
        if !self.may_connect_from(user, peer) {
            return Some(Err(AuthError::LoopbackOnly.to_string()));
        }
        self.is_verified(user, &self.digest(user, password))
            .then_some(Ok(()))
    }

    /// A login; slow (argon2) unless verified before.
    pub fn authenticate(&self, user: &str, password: &str, peer: IpAddr) -> Result<(), String> {
        if !self.may_connect_from(user, peer) {
            return Err(AuthError::LoopbackOnly.to_string());
        }
        let digest = self.digest(user, password);
        if self.is_verified(user, &digest) {
            return Ok(());
        }
        self.verify_slowly(user, password, peer, &digest)?;
        self.verified.lock().insert(user.to_string(), digest);
        Ok(())
    }

    /// `guest` only from loopback when so configured.
    pub fn may_connect_from(&self, user: &str, peer: IpAddr) -> bool {
        !(user == GUEST && self.guest_loopback_only && !peer.to_canonical().is_loopback())
    }

    /// Whether the file has `user`.
    pub fn knows_user(&self, user: &str) -> bool {
        self.db.read().get(user).is_some()
    }

    /// Whether `who` has permissions on its vhost.
    pub fn vhost_access(&self, who: &Principal) -> bool {
        self.db
            .read()
            .get(&who.user)
            .is_some_and(|u| u.may_access(&who.vhost))
    }

    /// `perm` on `what` by the file's patterns: resources need a matching
    /// pattern on the vhost; a topic needs one only where the user has
    /// topic permissions for that exchange.
    pub fn authorize(&self, who: &Principal, perm: Permission, what: &Resource<'_>) -> bool {
        let db = self.db.read();
        let Some(user) = db.get(&who.user) else {
            return false;
        };
        match what {
            Resource::Topic {
                exchange,
                routing_key,
            } => {
                let key = (who.vhost.clone(), (*exchange).to_owned());
                match user.topic_permissions.get(&key) {
                    None => true,
                    Some(t) => t
                        .pattern(perm)
                        .is_none_or(|p| p.matches(routing_key, who, &self.expansions)),
                }
            }
            _ => user
                .permissions
                .get(&who.vhost)
                .is_some_and(|p| p.pattern(perm).matches(what.name(), who, &self.expansions)),
        }
    }

    /// Whether `who` has topic permissions on `exchange`.
    pub fn topic_rules(&self, who: &Principal, exchange: &str) -> bool {
        self.db.read().get(&who.user).is_some_and(|u| {
            u.topic_permissions
                .keys()
                .any(|(v, x)| *v == who.vhost && x == exchange)
        })
    }
}

/// Equality that takes the same time wherever the first difference is.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
