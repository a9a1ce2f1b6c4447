//! Crash safety with a real process: a child publishes persistent messages
//! through the core, waiting for each receipt; the test kills it (SIGKILL or
//! SIGTERM) at a random moment, restarts on the same data directory, and
//! checks that every confirmed message is there exactly once, in order.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use junction_testsupport::{send_signal, temp_dir, wait_exit};

const TESTKIT: &str = env!("CARGO_BIN_EXE_junction-testkit");
const MESSAGES: u64 = 10_000;

/// A pseudo-random number in `lo..hi`, different on every run.
fn random_between(lo: u64, hi: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos() as u64;
    lo + (nanos.wrapping_mul(6364136223846793005) >> 11) % (hi - lo)
}

/// Runs `testkit publish`, stops it with `signal` after `stop_after`
/// confirmations, and returns every sequence number it confirmed and its
/// exit status.
fn publish_until(
    dir: &Path,
    stop_after: u64,
    signal: &str,
) -> (Vec<u64>, std::process::ExitStatus) {
    let mut child = Command::new(TESTKIT)
        .args([
            "publish",
            dir.to_str().expect("utf-8"),
            &MESSAGES.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn testkit");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut confirmed = Vec::new();
    let mut signalled = false;
    for line in lines.by_ref() {
        let line = line.expect("read");
        if let Some(n) = line.strip_prefix("confirmed ") {
            confirmed.push(n.parse::<u64>().expect("number"));
        }
        if !signalled && confirmed.len() as u64 >= stop_after {
            send_signal(&child, signal);
            signalled = true;
        }
    }
    // EOF: the process is gone; every line it wrote was read above.
    assert!(signalled, "publisher finished before it could be stopped");
    let status = wait_exit(&mut child, Duration::from_secs(60));
    (confirmed, status)
}

/// Restarts on `dir` and returns (queue name → ready count, bodies of `crash`).
fn inspect(dir: &Path) -> (Vec<(String, u64)>, Vec<u64>) {
    let out = Command::new(TESTKIT)
        .args(["inspect", dir.to_str().expect("utf-8")])
        .stderr(Stdio::inherit())
        .output()
        .expect("run inspect");
    assert!(out.status.success(), "inspect failed: {:?}", out.status);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut queues = Vec::new();
    let mut bodies = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("queue ") {
            let (name, n) = rest.rsplit_once(' ').expect("queue line");
            queues.push((name.to_string(), n.parse().expect("count")));
        } else if let Some(b) = line.strip_prefix("body ") {
            bodies.push(b.parse().expect("body is a number"));
        }
    }
    (queues, bodies)
}

/// Every confirmed message is present once and in order; beyond the last
/// confirmed one, at most the messages that were in flight may follow.
fn assert_all_confirmed_present(confirmed: &[u64], bodies: &[u64]) {
    let last = *confirmed.last().expect("something was confirmed");
    assert_eq!(
        confirmed,
        (0..=last).collect::<Vec<_>>(),
        "confirmations in order"
    );
    let expected: Vec<u64> = (0..bodies.len() as u64).collect();
    assert_eq!(
        bodies,
        expected.as_slice(),
        "recovered messages are 0..n in order, no gaps or duplicates"
    );
    assert!(
        bodies.len() as u64 > last,
        "confirmed message {last} lost: only {} recovered",
        bodies.len()
    );
    assert!(
        bodies.len() as u64 <= last + 2,
        "{} recovered but only {} confirmed: one publish at a time can be in flight",
        bodies.len(),
        last + 1
    );
}

#[test]
fn sigkill_loses_no_confirmed_message_and_transient_state_is_gone() {
    let dir = temp_dir();
    let stop_after = random_between(200, 5_000);
    let (confirmed, status) = publish_until(dir.path(), stop_after, "KILL");
    assert!(!status.success(), "SIGKILL ends the process abnormally");
    let (queues, bodies) = inspect(dir.path());
    assert_all_confirmed_present(&confirmed, &bodies);
    let names: Vec<&str> = queues.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["crash", "durable-nonpersistent"],
        "the transient queue is gone"
    );
    assert_eq!(
        queues[1],
        ("durable-nonpersistent".to_string(), 0),
        "a non-persistent message does not survive"
    );
}

#[test]
fn sigterm_shuts_down_cleanly_and_loses_nothing_confirmed() {
    let dir = temp_dir();
    let stop_after = random_between(200, 5_000);
    let (confirmed, status) = publish_until(dir.path(), stop_after, "TERM");
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");
    let (_, bodies) = inspect(dir.path());
    assert_all_confirmed_present(&confirmed, &bodies);
    // And a second restart finds the same (recovery wrote nothing wrong).
    let (_, again) = inspect(dir.path());
    assert_eq!(again, bodies);
}
