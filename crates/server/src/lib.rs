//! `junction-server`: everything the `junction` binary needs besides the
//! broker core and the store.
//!
//! - [`cli`]: the command line (flags and the `user` subcommand).
//! - [`config`]: the TOML configuration, its defaults and CLI overrides.
//! - [`users`]: the users file, password checks, `junction user ...`.
//! - [`metrics`]: the metrics snapshot and its Prometheus rendering.
//! - [`admin`]: the admin HTTP endpoint (`/api/health`, `/metrics`).
//! - [`admission`]: connection caps at accept (total and per address).
//! - [`tls`]: TLS for the protocol listeners (rustls, ring), reloadable.
//! - [`run`]: starting the broker (store, core, listeners) and shutting it down.
//! - [`entry`]: the `junction` command's `main`.
//! - [`http_client`]: one HTTP/1 request (the HTTP auth back-end, the
//!   operator commands).

pub mod admin;
pub mod admission;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod console;
pub mod metrics;
pub mod mgmt;
pub mod ops;
pub mod quorum;
pub mod tls;
pub mod users;
pub mod ws;

pub mod entry;
pub mod http_client;
pub mod run;
