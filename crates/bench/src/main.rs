//! The `junction-bench` binary: parse the flags, run, print the RESULT line.
//!
//! Exit status: 0 when the run completed (loss is reported, not an error);
//! 1 when it could not start (a connection refused, a subscription denied),
//! with no RESULT line; 2 for bad flags; 3 when something failed mid-run,
//! after printing the RESULT line of what was measured. Reasons go to stderr.

use clap::Parser;
use junction_bench::{Args, BenchError, report};
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("junction-bench: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(junction_bench::run(&args));
    // Client libraries may leave background tasks (socket readers,
    // heartbeats); the run is over, so do not wait long for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(outcome) => {
            match report::result_line(&outcome.report) {
                Ok(line) => println!("{line}"),
                Err(e) => {
                    eprintln!("junction-bench: cannot encode the result: {e}");
                    return ExitCode::from(1);
                }
            }
            match outcome.failure {
                None => ExitCode::SUCCESS,
                Some(e) => {
                    eprintln!("junction-bench: failed during the run: {e}");
                    ExitCode::from(3)
                }
            }
        }
        Err(e @ BenchError::Usage(_)) => {
            eprintln!("junction-bench: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("junction-bench: {e}");
            ExitCode::from(1)
        }
    }
}
