//! Junction's persistence layer: a narrow store over ids and bytes.
//!
//! The store never sees broker types; callers encode keys and values
//! themselves (including the leading version byte of every record, see
//! DESIGN.md "Storage"). Modules:
//!
//! - [`batch`] owns the vocabulary of writes: the column families ([`Cf`]),
//!   single operations ([`Op`]) and atomic groups of them ([`Batch`]).
//! - [`engine`] owns the synchronous [`Engine`] trait both back ends
//!   implement, and the in-memory back end [`MemEngine`].
//! - [`rocks`] owns the RocksDB back end [`RocksEngine`]: options, column
//!   family handles, WAL syncing (default feature `rocksdb`; without it
//!   the crate builds no C++ and offers the in-memory engine alone).
//! - [`committer`] owns the dedicated committer thread and its group-commit
//!   loop, the [`CommitReceipt`] handed back per batch and [`StoreStats`].
//! - [`store`] owns [`Store`], the cloneable front end every broker component
//!   uses, and its [`StoreOptions`] and lifecycle (open, submit, close).
//! - [`error`] owns [`StoreError`].

pub mod batch;
pub mod committer;
pub mod engine;
pub mod error;
#[cfg(feature = "rocksdb")]
pub mod rocks;
pub mod store;

pub use batch::{Batch, Cf, Op};
pub use committer::{CommitReceipt, StoreStats};
pub use engine::{Engine, MemEngine};
pub use error::StoreError;
#[cfg(feature = "rocksdb")]
pub use rocks::RocksEngine;
pub use store::{Store, StoreOptions};
