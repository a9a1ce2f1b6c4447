//! junction-testsupport: what the end-to-end tests in `tests/` share.
//! Starts a real broker, as a child process (so a test can kill it) or
//! in-process, on ports the OS picks and a temporary data directory, and
//! finds its listeners from the ready line. Not part of the product.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a broker may take to print its ready line (it may be recovering).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The listeners named on a `junction ready k=HOST:PORT ...` line.
pub fn parse_ready_line(line: &str) -> Option<HashMap<String, SocketAddr>> {
    let rest = line.trim().strip_prefix("junction ready")?;
    let mut out = HashMap::new();
    for part in rest.split_whitespace() {
        let (k, v) = part.split_once('=')?;
        out.insert(k.to_string(), v.parse().ok()?);
    }
    Some(out)
}

/// A `junction` process started by a test.
pub struct BrokerProcess {
    pub child: Child,
    pub listeners: HashMap<String, SocketAddr>,
    /// The rest of stdout, for tests that read more.
    pub stdout: BufReader<ChildStdout>,
}

/// Reads one line from `stdout` within `timeout` (on a helper thread, so a
/// hung child cannot hang the test).
fn read_line_within(
    stdout: BufReader<ChildStdout>,
    timeout: Duration,
) -> (Option<String>, Option<BufReader<ChildStdout>>) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut stdout = stdout;
        let mut line = String::new();
        let n = stdout.read_line(&mut line);
        let _ = tx.send((n, line, stdout));
    });
    match rx.recv_timeout(timeout) {
        Ok((Ok(n), line, stdout)) if n > 0 => (Some(line), Some(stdout)),
        Ok((_, _, stdout)) => (None, Some(stdout)),
        Err(_) => (None, None),
    }
}

/// Flags that put every listener of the broker on a port the OS picks, so
/// tests running at once never compete for the default ports.
pub const ANY_PORTS: [&str; 12] = [
    "--admin-port",
    "0",
    "--amqp-port",
    "0",
    "--mqtt-port",
    "0",
    "--stomp-port",
    "0",
    "--mqtt-ws-port",
    "0",
    "--stomp-ws-port",
    "0",
];

impl BrokerProcess {
    /// Starts the `junction` binary `bin` (a test passes
    /// `env!("CARGO_BIN_EXE_junction")`) with `args` (add `--data-dir` and
    /// port flags yourself) in `cwd`, and waits for its ready line.
    pub fn start(bin: &Path, args: &[&str], cwd: &Path) -> BrokerProcess {
        let mut child = Command::new(bin)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn junction");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let (line, stdout) = read_line_within(stdout, READY_TIMEOUT);
        let Some(line) = line else {
            let _ = child.kill();
            panic!("junction printed no ready line within {READY_TIMEOUT:?}");
        };
        let listeners =
            parse_ready_line(&line).unwrap_or_else(|| panic!("not a ready line: {line:?}"));
        BrokerProcess {
            child,
            listeners,
            stdout: stdout.expect("stdout"),
        }
    }

    /// Starts a broker on a data directory with every port picked by the OS.
    pub fn start_on(bin: &Path, data_dir: &Path) -> BrokerProcess {
        let dir = data_dir.to_str().expect("utf-8 path");
        let mut args = vec!["--data-dir", dir];
        args.extend(ANY_PORTS);
        Self::start(bin, &args, data_dir)
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        *self
            .listeners
            .get(listener)
            .unwrap_or_else(|| panic!("no {listener} listener in {:?}", self.listeners))
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the process.
    pub fn signal(&self, signal: &str) {
        send_signal(&self.child, signal);
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_exit(&mut self.child, timeout)
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal with the system's `kill` command.
pub fn send_signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} failed");
}

/// Waits for `child` to exit within `timeout`, killing it (and failing) if not.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal HTTP/1.1 GET: returns (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A temporary directory that is removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A broker running inside the test process, on a temporary data directory
/// (or in memory) with OS-picked ports.
pub struct InProcessBroker {
    pub server: junction_server::run::Server,
    pub listeners: HashMap<String, SocketAddr>,
    /// Kept so the directory outlives the broker.
    pub data_dir: Option<tempfile::TempDir>,
}

impl InProcessBroker {
    /// Starts a broker in the current tokio runtime. `persistent` picks
    /// RocksDB in a temporary directory over the in-memory store.
    pub async fn start(persistent: bool) -> InProcessBroker {
        let mut config = junction_server::config::Config::default();
        config.admin.port = 0;
        config.mqtt.port = 0;
        config.amqp.port = 0;
        config.stomp.port = 0;
        config.websocket.mqtt_port = 0;
        config.websocket.stomp_port = 0;
        let data_dir = if persistent {
            let d = temp_dir();
            config.broker.data_dir = d.path().to_path_buf();
            Some(d)
        } else {
            config.broker.in_memory = true;
            None
        };
        let server = junction_server::run::Server::start(config)
            .await
            .expect("start broker");
        let listeners = parse_ready_line(&server.ready_line()).expect("ready line");
        InProcessBroker {
            server,
            listeners,
            data_dir,
        }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.listeners[listener]
    }
}
