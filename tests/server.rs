//! The `junction` binary end to end: ready line, admin HTTP, users
//! subcommand, configuration errors and graceful shutdown.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use junction_testsupport::{ANY_PORTS, BrokerProcess, InProcessBroker, http_get, temp_dir};

const JUNCTION: &str = env!("CARGO_BIN_EXE_junction");

fn bin() -> &'static Path {
    Path::new(JUNCTION)
}

#[test]
fn ready_line_health_metrics_and_sigterm_exit_zero() {
    let dir = temp_dir();
    let mut broker = BrokerProcess::start_on(bin(), dir.path());
    let admin = broker.addr("admin");
    assert!(
        admin.ip().is_loopback(),
        "binds 127.0.0.1 by default: {admin}"
    );
    assert_ne!(admin.port(), 0);
    let (status, body) = http_get(admin, "/api/health");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, metrics) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    for line in [
        "junction_connections{protocol=\"amqp\"} 0",
        "junction_connections{protocol=\"mqtt\"} 0",
        "junction_messages_published_total 0",
        "# TYPE junction_store_commits_total counter",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    broker.signal("TERM");
    let status = broker.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    assert!(
        dir.path().join("store").join("CURRENT").exists(),
        "RocksDB store in the data dir"
    );
}

#[test]
fn no_data_dir_flag_uses_junction_data_in_the_working_directory() {
    let cwd = temp_dir();
    let mut broker = BrokerProcess::start(bin(), &ANY_PORTS, cwd.path());
    assert!(cwd.path().join("junction-data").join("store").is_dir());
    broker.signal("INT");
    assert_eq!(broker.wait_exit(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn in_memory_flag_writes_nothing_to_disk() {
    let cwd = temp_dir();
    let mut args = ANY_PORTS.to_vec();
    args.push("--in-memory");
    let mut broker = BrokerProcess::start(bin(), &args, cwd.path());
    assert!(!cwd.path().join("junction-data").exists());
    broker.signal("TERM");
    assert_eq!(broker.wait_exit(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn config_file_is_read_and_flags_override_it() {
    let dir = temp_dir();
    let conf = dir.path().join("j.toml");
    let data = dir.path().join("from-file");
    std::fs::write(
        &conf,
        format!(
            "[broker]\ndata_dir = {:?}\n[admin]\nport = 1\n",
            data.to_str().expect("utf-8")
        ),
    )
    .expect("write config");
    // The file's port 1 would fail to bind; the flag's 0 wins.
    let mut args = vec!["--config", conf.to_str().expect("utf-8")];
    args.extend(ANY_PORTS);
    let mut broker = BrokerProcess::start(bin(), &args, dir.path());
    assert!(data.join("store").is_dir(), "data_dir from the file");
    broker.signal("TERM");
    assert_eq!(broker.wait_exit(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn bad_config_file_exits_2_naming_the_file() {
    let dir = temp_dir();
    let conf = dir.path().join("bad.toml");
    std::fs::write(&conf, "[broker]\nno_such_option = 1\n").expect("write");
    let out = Command::new(JUNCTION)
        .args(["--config", conf.to_str().expect("utf-8")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "error names the file: {err}");
}

#[test]
fn user_subcommand_manages_the_users_file() {
    let dir = temp_dir();
    let d = dir.path().to_str().expect("utf-8");
    let run = |args: &[&str]| {
        let out = Command::new(JUNCTION)
            .args(args)
            .args(["--data-dir", d])
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    run(&[
        "user",
        "add",
        "alice",
        "--password",
        "s3cret",
        "--vhost",
        "/",
    ]);
    let list = run(&["user", "list"]);
    assert!(
        list.lines().any(|l| l.starts_with("alice")),
        "alice listed: {list}"
    );
    assert!(
        list.lines().any(|l| l.starts_with("guest")),
        "guest kept: {list}"
    );
    let file = std::fs::read_to_string(dir.path().join("users.toml")).expect("users file");
    assert!(file.contains("$argon2id$"), "passwords are argon2id hashes");
    assert!(!file.contains("s3cret"), "never the password itself");
    run(&["user", "delete", "alice"]);
    let list = run(&["user", "list"]);
    assert!(!list.contains("alice"), "alice deleted: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_broker_starts_and_shutdown_is_idempotent() {
    let b = InProcessBroker::start(true).await;
    let admin = b.addr("admin");
    let (status, _) = tokio::task::spawn_blocking(move || http_get(admin, "/api/health"))
        .await
        .expect("join");
    assert_eq!(status, 200);
    b.server.shutdown().await.expect("first shutdown");
    b.server
        .shutdown()
        .await
        .expect("second shutdown is a no-op");
}
