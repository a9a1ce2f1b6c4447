//! The `junction` command: parse flags, then either run a subcommand (`user`,
//! `permission`, an operator command) or the broker until SIGTERM/SIGINT.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};
use crate::config::Config;
use crate::run::{Server, ShutdownSignals};
use crate::users::{run_permission_command, run_user_command};

fn init_tracing(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the `junction` command line; the binary's `main` calls this.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("junction: {e}");
            return ExitCode::from(2);
        }
    };
    config.apply_cli(&cli);
    if let Some(cmd) = &cli.command {
        let done = match cmd {
            Command::User(cmd) => {
                run_user_command(cmd, &config.users_path()).map_err(|e| e.to_string())
            }
            Command::Permission(_) | Command::TopicPermission(_) => {
                run_permission_command(cmd, &config.users_path(), &config.broker.vhosts)
                    .map_err(|e| e.to_string())
            }
            ops => crate::ops::run_ops_command(ops, &config).map_err(|e| e.to_string()),
        };
        return match done {
            Ok(out) => {
                println!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("junction: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_tracing(&config.broker.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("junction-worker")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("junction: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let mut signals = match ShutdownSignals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("junction: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let server = match Server::start(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("junction: {e}");
                return ExitCode::FAILURE;
            }
        };
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", server.ready_line());
            let _ = out.flush();
        }
        // SIGHUP reloads the TLS files and the users file; SIGTERM or
        // SIGINT stops.
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "no SIGHUP handler: TLS reloads by the admin call only");
                    None
                }
            };
        loop {
            tokio::select! {
                _ = signals.recv() => break,
                Some(()) = async { match hangups.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    let _ = server.reload_tls();
                    server.reload_users().await;
                }
            }
        }
        match server.shutdown().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("junction: shutdown failed: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
