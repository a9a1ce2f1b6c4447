//! The AMQP 0-9-1 adapter at the byte level: frames written by hand over a
//! plain TCP socket, for what a well-behaved client library never sends
//! (a wrong protocol header, oversized or malformed frames, methods on
//! unopened channels, silence past the heartbeat) and for the exact bytes
//! of the broker's answers. After each, a fresh lapin connection must still
//! work: one bad client must not hurt the broker.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPFrame, parse_frame};
use amq_protocol::protocol::{AMQPClass, basic, channel, connection};
use junction_testsupport::InProcessBroker;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on any one step; a login hashes argon2, slow in a debug build.
const STEP: Duration = Duration::from_secs(30);

/// How soon the broker must close the socket once it has nothing more to say.
const PROMPT: Duration = Duration::from_secs(5);

const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// The heartbeat frame: type 8, channel 0, empty payload, frame-end.
const HEARTBEAT: [u8; 8] = [8, 0, 0, 0, 0, 0, 0, 0xCE];

/// What Junction offers in `connection.tune` (AmqpSettings default).
const OFFERED_TUNE: connection::Tune = connection::Tune {
    channel_max: 2047,
    frame_max: 131_072,
    heartbeat: 60,
};

fn short_str(s: &str) -> Vec<u8> {
    let len = u8::try_from(s.len()).expect("short string fits 255 bytes");
    let mut out = vec![len];
    out.extend_from_slice(s.as_bytes());
    out
}

fn long_str(b: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(b.len())
        .expect("long string length")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(b);
    out
}

/// A frame: type, channel, payload size, payload, frame-end 0xCE.
fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(
        &u32::try_from(payload.len())
            .expect("payload size")
            .to_be_bytes(),
    );
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}

/// A method frame: class id, method id, then the arguments as given.
fn method(channel: u16, class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = class.to_be_bytes().to_vec();
    payload.extend_from_slice(&method.to_be_bytes());
    payload.extend_from_slice(args);
    frame(1, channel, &payload)
}

/// connection.start-ok: empty client-properties, PLAIN, `\0guest\0guest`, en_US.
fn start_ok_plain() -> Vec<u8> {
    let mut args = vec![0, 0, 0, 0];
    args.extend(short_str("PLAIN"));
    args.extend(long_str(b"\0guest\0guest"));
    args.extend(short_str("en_US"));
    method(0, 10, 11, &args)
}

fn tune_ok(channel_max: u16, frame_max: u32, heartbeat: u16) -> Vec<u8> {
    let mut args = channel_max.to_be_bytes().to_vec();
    args.extend_from_slice(&frame_max.to_be_bytes());
    args.extend_from_slice(&heartbeat.to_be_bytes());
    method(0, 10, 31, &args)
}

/// connection.open: virtual-host, reserved short string, reserved bit.
fn connection_open(vhost: &str) -> Vec<u8> {
    let mut args = short_str(vhost);
    args.extend(short_str(""));
    args.push(0);
    method(0, 10, 40, &args)
}

fn connection_close(code: u16, text: &str, class: u16, meth: u16) -> Vec<u8> {
    let mut args = code.to_be_bytes().to_vec();
    args.extend(short_str(text));
    args.extend_from_slice(&class.to_be_bytes());
    args.extend_from_slice(&meth.to_be_bytes());
    method(0, 10, 50, &args)
}

fn connection_close_ok() -> Vec<u8> {
    method(0, 10, 51, &[])
}

/// channel.open with its reserved short string.
fn channel_open(channel: u16) -> Vec<u8> {
    method(channel, 20, 10, &short_str(""))
}

/// queue.declare with no flags set and empty arguments.
fn queue_declare(channel: u16, queue: &str) -> Vec<u8> {
    let mut args = vec![0, 0];
    args.extend(short_str(queue));
    args.push(0);
    args.extend_from_slice(&[0, 0, 0, 0]);
    method(channel, 50, 10, &args)
}

/// basic.publish; `bits` is mandatory (bit 0) and immediate (bit 1).
fn basic_publish(channel: u16, exchange: &str, key: &str, bits: u8) -> Vec<u8> {
    let mut args = vec![0, 0];
    args.extend(short_str(exchange));
    args.extend(short_str(key));
    args.push(bits);
    method(channel, 60, 40, &args)
}

/// basic.get with no-ack set.
fn basic_get_no_ack(channel: u16, queue: &str) -> Vec<u8> {
    let mut args = vec![0, 0];
    args.extend(short_str(queue));
    args.push(1);
    method(channel, 60, 70, &args)
}

/// A basic content header with no properties.
fn content_header(channel: u16, body_size: u64) -> Vec<u8> {
    let mut payload = vec![0, 60, 0, 0];
    payload.extend_from_slice(&body_size.to_be_bytes());
    payload.extend_from_slice(&[0, 0]);
    frame(2, channel, &payload)
}

/// A raw AMQP socket.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let stream = tokio::time::timeout(STEP, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STEP, self.stream.write_all(bytes))
            .await
            .expect("write in time")
            .expect("write");
    }

    /// Reads more bytes; false at EOF. A reset fails the test: the broker
    /// reads everything these tests send before it closes.
    async fn fill(&mut self, bound: Duration) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        let n = tokio::time::timeout(bound, self.stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("nothing read within {bound:?}; have {:?}", self.buf))
            .expect("read");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next whole frame's bytes, or None when the socket ends cleanly.
    async fn raw_frame(&mut self, bound: Duration) -> Option<Vec<u8>> {
        loop {
            if self.buf.len() >= 7 {
                let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]);
                let total = size as usize + 8;
                if self.buf.len() >= total {
                    return Some(self.buf.drain(..total).collect());
                }
            }
            if !self.fill(bound).await {
                assert!(
                    self.buf.is_empty(),
                    "socket closed inside a frame: {:?}",
                    self.buf
                );
                return None;
            }
        }
    }

    /// The next frame, decoded.
    async fn frame(&mut self) -> AMQPFrame {
        let bytes = self
            .raw_frame(STEP)
            .await
            .expect("a frame, not the end of the connection");
        let (rest, f) = parse_frame(&bytes[..]).unwrap_or_else(|e| panic!("{e:?}: {bytes:?}"));
        assert!(rest.is_empty(), "frame parsed short: {bytes:?}");
        f
    }

    /// The next frame, which must be a method on `channel`.
    async fn method(&mut self, channel: u16) -> AMQPClass {
        match self.frame().await {
            AMQPFrame::Method(c, m) if c == channel => m,
            other => panic!("expected a method on channel {channel}, got {other:?}"),
        }
    }

    /// The broker closes the socket within `bound`, sending nothing more.
    async fn expect_eof(&mut self, bound: Duration) {
        assert_eq!(self.raw_frame(bound).await, None);
    }
}

/// Protocol header, start/start-ok (PLAIN guest), tune/tune-ok with the
/// given frame_max and heartbeat, open "/" and open-ok, all by hand.
async fn handshake(addr: SocketAddr, frame_max: u32, heartbeat: u16) -> Raw {
    let mut raw = Raw::connect(addr).await;
    raw.send(PROTOCOL_HEADER).await;
    match raw.method(0).await {
        AMQPClass::Connection(connection::AMQPMethod::Start(s)) => {
            assert_eq!((s.version_major, s.version_minor), (0, 9));
            assert_eq!(s.mechanisms.as_bytes(), b"PLAIN AMQPLAIN");
            assert_eq!(s.locales.as_bytes(), b"en_US");
        }
        other => panic!("expected connection.start, got {other:?}"),
    }
    raw.send(&start_ok_plain()).await;
    assert_eq!(
        raw.method(0).await,
        AMQPClass::Connection(connection::AMQPMethod::Tune(OFFERED_TUNE))
    );
    raw.send(&tune_ok(2047, frame_max, heartbeat)).await;
    raw.send(&connection_open("/")).await;
    assert_eq!(
        raw.method(0).await,
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {}))
    );
    raw
}

/// Opens `channel` and waits for open-ok.
async fn open(raw: &mut Raw, channel: u16) {
    raw.send(&channel_open(channel)).await;
    assert_eq!(
        raw.method(channel).await,
        AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {}))
    );
}

/// The broker closes the connection with exactly this `connection.close`;
/// we answer close-ok and the socket ends.
async fn expect_connection_close(raw: &mut Raw, code: u16, text: &str, class: u16, meth: u16) {
    let got = raw.raw_frame(STEP).await.expect("connection.close");
    assert_eq!(
        got,
        connection_close(code, text, class, meth),
        "expected connection.close {code} {text:?}; decoded: {:?}",
        parse_frame(&got[..]).map(|(_, f)| f)
    );
    raw.send(&connection_close_ok()).await;
    raw.expect_eof(PROMPT).await;
}

/// A new client (lapin) can still log in and move a message.
async fn assert_broker_still_serves(addr: SocketAddr) {
    let step = async {
        let conn = Connection::connect(
            &format!("amqp://guest:guest@{addr}/%2f"),
            ConnectionProperties::default(),
        )
        .await
        .expect("lapin connect after the raw client");
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_declare(
            "still-alive".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
        ch.basic_publish(
            "".into(),
            "still-alive".into(),
            BasicPublishOptions::default(),
            b"ping",
            BasicProperties::default(),
        )
        .await
        .expect("basic.publish");
        let got = ch
            .basic_get("still-alive".into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
            .expect("the message");
        assert_eq!(got.delivery.data, b"ping");
        conn.close(200, "bye".into()).await.expect("close");
    };
    tokio::time::timeout(STEP, step)
        .await
        .expect("lapin round trip in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_protocol_header_is_answered_with_ours_then_closed() {
    let broker = InProcessBroker::start(false).await;
    let addr = broker.addr("amqp");
    for header in [&b"AMQP\x01\x01\x00\x0a"[..], &b"GET / HTTP/1.1\r\n\r\n"[..]] {
        let mut raw = Raw::connect(addr).await;
        raw.send(header).await;
        let mut got = Vec::new();
        tokio::time::timeout(PROMPT, raw.stream.read_to_end(&mut got))
            .await
            .expect("closed in time")
            .expect("read to the end");
        assert_eq!(got, PROTOCOL_HEADER, "answer to {header:?}");
    }
    assert_broker_still_serves(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_of_exactly_the_negotiated_frame_max_is_accepted() {
    let broker = InProcessBroker::start(false).await;
    let addr = broker.addr("amqp");
    let mut raw = handshake(addr, 4096, 0).await;
    open(&mut raw, 1).await;
    raw.send(&queue_declare(1, "edge")).await;
    assert!(matches!(
        raw.method(1).await,
        AMQPClass::Queue(amq_protocol::protocol::queue::AMQPMethod::DeclareOk(_))
    ));
    // 4088 payload bytes + 8 bytes of framing = 4096, the limit itself.
    let body: Vec<u8> = (0..4088u32).map(|i| (i % 253) as u8).collect();
    let mut publish = basic_publish(1, "", "edge", 0);
    publish.extend(content_header(1, body.len() as u64));
    publish.extend(frame(3, 1, &body));
    raw.send(&publish).await;
    raw.send(&basic_get_no_ack(1, "edge")).await;
    match raw.method(1).await {
        AMQPClass::Basic(basic::AMQPMethod::GetOk(ok)) => {
            assert_eq!((ok.message_count, ok.routing_key.as_str()), (0, "edge"));
        }
        other => panic!("expected get-ok, got {other:?}"),
    }
    match raw.frame().await {
        AMQPFrame::Header(1, h) => assert_eq!(h.body_size, 4088),
        other => panic!("expected the content header, got {other:?}"),
    }
    assert_eq!(
        raw.raw_frame(STEP).await.expect("body frame"),
        frame(3, 1, &body),
        "one body frame of exactly frame_max"
    );
    raw.send(&connection_close(200, "bye", 0, 0)).await;
    assert_eq!(
        raw.raw_frame(STEP).await.expect("close-ok"),
        connection_close_ok()
    );
    raw.expect_eof(PROMPT).await;
    assert_broker_still_serves(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_larger_than_the_negotiated_frame_max_is_connection_error_501() {
    let broker = InProcessBroker::start(false).await;
    let addr = broker.addr("amqp");
    let mut raw = handshake(addr, 4096, 0).await;
    // A body frame of 5000 payload bytes: 5008 on the wire, over 4096.
    raw.send(&frame(3, 1, &[0x55; 5000])).await;
    expect_connection_close(
        &mut raw,
        501,
        "FRAME_ERROR - frame of 5008 bytes exceeds frame_max 4096",
        0,
        0,
    )
    .await;
    assert_broker_still_serves(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_with_a_wrong_frame_end_octet_is_connection_error_501() {
    let broker = InProcessBroker::start(false).await;
    let addr = broker.addr("amqp");
    let mut raw = handshake(addr, 4096, 0).await;
    let mut garbage = channel_open(1);
    *garbage.last_mut().expect("frame-end") = 0x00;
    raw.send(&garbage).await;
    expect_connection_close(
        &mut raw,
        501,
        "FRAME_ERROR - malformed frame: missing frame-end octet",
        0,
        0,
    )
    .await;
    assert_broker_still_serves(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_on_an_unopened_channel_is_connection_error_504() {
    let broker = InProcessBroker::start(false).await;
    let addr = broker.addr("amqp");
    let mut raw = handshake(addr, 131_072, 0).await;
    raw.send(&queue_declare(7, "never")).await;
    expect_connection_close(
        &mut raw,
        504,
        "CHANNEL_ERROR - channel 7 is not open",
        50,
        10,
    )
    .await;
    assert_broker_still_serves(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_with_a_1s_heartbeat_is_disconnected_within_4s() {
    let broker = InProcessBroker::start(false).await;
    let addr = broker.addr("amqp");
    let mut raw = handshake(addr, 131_072, 1).await;
    let opened = Instant::now();
    let mut heartbeats = 0;
    while let Some(f) = raw.raw_frame(Duration::from_secs(4)).await {
        assert_eq!(f, HEARTBEAT, "only heartbeats while we are silent");
        heartbeats += 1;
    }
    let silent_for = opened.elapsed();
    assert!(
        silent_for >= Duration::from_millis(1500) && silent_for <= Duration::from_secs(4),
        "closed after {silent_for:?} of silence; two missed 1 s heartbeats is the rule"
    );
    assert!(heartbeats >= 1, "the broker sends heartbeats at 1 s");
    assert_broker_still_serves(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_heartbeats_keep_a_1s_heartbeat_connection_open() {
    let broker = InProcessBroker::start(false).await;
    let addr = broker.addr("amqp");
    let mut raw = handshake(addr, 131_072, 1).await;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        raw.send(&HEARTBEAT).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    raw.send(&connection_close(200, "bye", 0, 0)).await;
    loop {
        let f = raw
            .raw_frame(STEP)
            .await
            .expect("close-ok, still connected");
        if f != HEARTBEAT {
            assert_eq!(f, connection_close_ok());
            break;
        }
    }
    raw.expect_eof(PROMPT).await;
    assert_broker_still_serves(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_immediate_is_connection_error_540() {
    let broker = InProcessBroker::start(false).await;
    let addr = broker.addr("amqp");
    let mut raw = handshake(addr, 131_072, 0).await;
    open(&mut raw, 1).await;
    raw.send(&basic_publish(1, "", "anything", 0b10)).await;
    expect_connection_close(&mut raw, 540, "NOT_IMPLEMENTED - immediate=true", 60, 40).await;
    assert_broker_still_serves(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_from_the_client_is_answered_with_close_ok() {
    let broker = InProcessBroker::start(false).await;
    let addr = broker.addr("amqp");
    let mut raw = handshake(addr, 131_072, 0).await;
    open(&mut raw, 1).await;
    raw.send(&connection_close(200, "client done", 0, 0)).await;
    assert_eq!(
        raw.raw_frame(STEP).await.expect("close-ok"),
        connection_close_ok(),
        "close-ok: 01 0000 00000004 000a 0033 ce"
    );
    raw.expect_eof(PROMPT).await;
    assert_broker_still_serves(addr).await;
}
