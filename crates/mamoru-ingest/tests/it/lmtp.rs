//! The LMTP server over loopback, driven by independent clients: Python's
//! `smtplib.LMTP` (tests/it/lmtp_client.py), swaks, and a raw socket for the
//! cases those clients cannot provoke (shutdown mid-DATA, timeouts, panics).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mamoru_core::conn_limit::ConnectionLimits;
use mamoru_ingest::lmtp::{LmtpConfig, run};
use mamoru_ingest::{Deliver, Outcome};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generous bound for anything a test waits on; a hang fails, it never blocks.
const WAIT: Duration = Duration::from_secs(30);
const MAX_BYTES: u64 = 4096;

/// One call of [`Deliver::deliver`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Delivery {
    sender: String,
    recipient: String,
    message: Vec<u8>,
}

/// A real [`Deliver`] that keeps messages in memory. The local part picks the
/// behaviour: `unknown*` is rejected at RCPT, `transient*` fails
/// transiently, `drop*` is dropped on purpose, `panic*` panics; anything
/// else is stored.
#[derive(Default)]
struct RecordingDeliver {
    deliveries: Mutex<Vec<Delivery>>,
}

impl RecordingDeliver {
    fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().expect("lock").clone()
    }
}

impl Deliver for RecordingDeliver {
    fn accepts_recipient(&self, recipient: &str) -> bool {
        if recipient.starts_with("panic-at-rcpt") {
            panic!("RecordingDeliver: provoked panic at RCPT");
        }
        !recipient.starts_with("unknown")
    }

    fn deliver(&self, sender: &str, recipient: &str, message: &[u8]) -> Outcome {
        if recipient.starts_with("panic") {
            panic!("RecordingDeliver: provoked panic");
        }
        self.deliveries.lock().expect("lock").push(Delivery {
            sender: sender.to_owned(),
            recipient: recipient.to_owned(),
            message: message.to_vec(),
        });
        if recipient.starts_with("transient") {
            Outcome::Transient("provoked".into())
        } else if recipient.starts_with("drop") {
            Outcome::Dropped("provoked".into())
        } else {
            Outcome::Stored
        }
    }
}

struct Server {
    addr: SocketAddr,
    deliver: Arc<RecordingDeliver>,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

fn config() -> LmtpConfig {
    LmtpConfig {
        hostname: "lmtp.mamoru.test".into(),
        max_message_bytes: MAX_BYTES,
        max_recipients: 100,
        idle_timeout: WAIT,
        transaction_timeout: WAIT,
        connections: ConnectionLimits::new(100, 50),
    }
}

async fn start(cfg: LmtpConfig) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let deliver = Arc::new(RecordingDeliver::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(listener, cfg, deliver.clone(), shutdown.clone()));
    Server { addr, deliver, shutdown, task }
}

impl Server {
    /// Cancels and waits for `run` to return.
    async fn stop(self) {
        self.shutdown.cancel();
        self.join().await;
    }

    async fn join(self) {
        let result = tokio::time::timeout(WAIT, self.task).await.expect("run returns after shutdown");
        result.expect("run task").expect("run result");
    }
}

/// Runs a program to completion (bounded by [`WAIT`]) and returns its stdout.
async fn run_client(program: &str, args: &[String]) -> (Option<i32>, String) {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} did not finish"))
        .expect("wait");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.trim().is_empty() {
        eprintln!("{program} stderr:\n{stderr}");
    }
    (output.status.code(), stdout)
}

async fn python(server: &Server, scenario: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/lmtp_client.py");
    let args = [script.display().to_string(), server.addr.port().to_string(), scenario.to_owned()];
    let (code, stdout) = run_client("python3", &args).await;
    assert_eq!(code, Some(0), "python {scenario} failed; transcript:\n{stdout}");
    stdout
}

/// The reply lines of a transcript whose step is `step`, as "code text".
fn step<'a>(transcript: &'a str, step: &str) -> Vec<&'a str> {
    transcript.lines().filter_map(|l| l.strip_prefix(step)?.strip_prefix(' ')).collect()
}

// ---------------------------------------------------------------------------
// Python smtplib.LMTP
// ---------------------------------------------------------------------------

#[tokio::test]
async fn python_per_recipient_replies_in_order() {
    let server = start(config()).await;
    let t = python(&server, "multi").await;
    assert_eq!(step(&t, "lhlo"), ["250 lmtp.mamoru.test"]);
    for feature in ["pipelining", "enhancedstatuscodes", "8bitmime", "size 4096"] {
        assert!(t.lines().any(|l| l == format!("feature {feature}")), "{feature} announced:\n{t}");
    }
    assert_eq!(step(&t, "mail"), ["250 2.1.0 OK"]);
    assert_eq!(
        step(&t, "rcpt"),
        [
            "250 2.1.5 <stored@mamoru.test> OK",
            "550 5.1.1 <unknown@mamoru.test>: recipient unknown",
            "250 2.1.5 <transient@mamoru.test> OK",
        ]
    );
    // One reply per accepted RCPT, in RCPT order.
    assert_eq!(
        step(&t, "data"),
        [
            "250 2.0.0 <stored@mamoru.test> OK",
            "451 4.3.0 <transient@mamoru.test> temporary failure, try again later",
        ]
    );
    assert_eq!(step(&t, "quit"), ["221 2.0.0 lmtp.mamoru.test closing connection"]);

    let got = server.deliver.deliveries();
    let rcpts: Vec<&str> = got.iter().map(|d| d.recipient.as_str()).collect();
    assert_eq!(rcpts, ["stored@mamoru.test", "transient@mamoru.test"]);
    let message = String::from_utf8(got[0].message.clone()).expect("utf-8 body");
    assert_eq!(got[0].sender, "parent@example.org");
    assert!(message.contains("\r\n\r\nよろしくお願いします\r\n"), "8-bit body intact: {message:?}");
    assert!(message.ends_with(".a line that starts with a dot\r\n.\r\nend\r\n"), "dot-unstuffed: {message:?}");
    assert_eq!(got[0].message, got[1].message);
    server.stop().await;
}

#[tokio::test]
async fn python_size_announced_and_enforced() {
    let server = start(config()).await;
    let t = python(&server, "size").await;
    assert_eq!(step(&t, "mail-declared"), ["552 5.3.4 message size exceeds fixed limit"]);
    assert_eq!(step(&t, "mail"), ["250 2.1.0 OK"]);
    assert_eq!(step(&t, "rcpt").len(), 2);
    assert_eq!(
        step(&t, "data"),
        [
            "552 5.3.4 <stored@mamoru.test> message size exceeds fixed limit",
            "552 5.3.4 <drop@mamoru.test> message size exceeds fixed limit",
        ]
    );
    assert_eq!(step(&t, "noop"), ["250 2.0.0 OK"]);
    assert_eq!(step(&t, "mail-fits"), ["250 2.1.0 OK"]);
    assert!(server.deliver.deliveries().is_empty(), "nothing oversize is delivered");
    server.stop().await;
}

#[tokio::test]
async fn python_null_sender() {
    let server = start(config()).await;
    let t = python(&server, "null_sender").await;
    assert_eq!(step(&t, "mail"), ["250 2.1.0 OK"]);
    assert_eq!(step(&t, "data"), ["250 2.0.0 <stored@mamoru.test> OK"]);
    let got = server.deliver.deliveries();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].sender, "");
    assert_eq!(got[0].message, b"Subject: bounce\r\n\r\nundeliverable\r\n");
    server.stop().await;
}

#[tokio::test]
async fn python_pipelined_commands() {
    let server = start(config()).await;
    let t = python(&server, "pipelined").await;
    assert_eq!(step(&t, "greeting"), ["220 lmtp.mamoru.test LMTP ready"]);
    assert_eq!(step(&t, "lhlo").len(), 5, "multi-line LHLO reply:\n{t}");
    assert_eq!(
        step(&t, "rcpt"),
        [
            "250 2.1.5 <stored@mamoru.test> OK",
            "550 5.1.1 <unknown@mamoru.test>: recipient unknown",
            "250 2.1.5 <transient@mamoru.test> OK",
        ]
    );
    assert_eq!(step(&t, "data"), ["354 start mail input; end with <CRLF>.<CRLF>"]);
    assert_eq!(
        step(&t, "dot"),
        [
            "250 2.0.0 <stored@mamoru.test> OK",
            "451 4.3.0 <transient@mamoru.test> temporary failure, try again later",
        ]
    );
    // Commands pipelined right after the final dot are answered in order.
    assert_eq!(step(&t, "mail"), ["250 2.1.0 OK", "250 2.1.0 OK"]);
    assert_eq!(step(&t, "rset"), ["250 2.0.0 OK"]);
    assert_eq!(step(&t, "quit"), ["221 2.0.0 lmtp.mamoru.test closing connection"]);
    server.stop().await;
}

// ---------------------------------------------------------------------------
// swaks
// ---------------------------------------------------------------------------

/// Runs swaks against the server; returns its transcript. swaks prints what
/// the server said as `<-  ` (success) or `<** ` (error) lines.
async fn swaks(server: &Server, extra: &[&str]) -> String {
    let mut args: Vec<String> = ["--protocol", "LMTP", "--server", &server.addr.to_string(), "--helo", "client.test"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--timeout".to_owned(), "20".to_owned()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let (_, stdout) = run_client("swaks", &args).await;
    stdout
}

/// Server replies from a swaks transcript, markers stripped.
fn swaks_replies(transcript: &str) -> Vec<&str> {
    transcript
        .lines()
        .filter_map(|l| l.strip_prefix("<-  ").or_else(|| l.strip_prefix("<** ")))
        .collect()
}

#[tokio::test]
async fn swaks_per_recipient_replies_and_unknown_recipient() {
    let server = start(config()).await;
    let t = swaks(
        &server,
        &[
            "--from",
            "parent@example.org",
            "--to",
            "stored@mamoru.test,unknown@mamoru.test,transient@mamoru.test",
            "--body",
            "hello from swaks",
        ],
    )
    .await;
    let replies = swaks_replies(&t);
    let rcpt_and_after: Vec<&str> = replies.iter().copied().skip_while(|r| !r.contains("2.1.0")).skip(1).collect();
    assert_eq!(
        rcpt_and_after,
        [
            "250 2.1.5 <stored@mamoru.test> OK",
            "550 5.1.1 <unknown@mamoru.test>: recipient unknown",
            "250 2.1.5 <transient@mamoru.test> OK",
            "354 start mail input; end with <CRLF>.<CRLF>",
            "250 2.0.0 <stored@mamoru.test> OK",
            "451 4.3.0 <transient@mamoru.test> temporary failure, try again later",
            "221 2.0.0 lmtp.mamoru.test closing connection",
        ],
        "transcript:\n{t}"
    );
    let got = server.deliver.deliveries();
    assert_eq!(got.len(), 2);
    assert!(String::from_utf8_lossy(&got[0].message).contains("hello from swaks"));
    server.stop().await;
}

#[tokio::test]
async fn swaks_pipelined_with_null_sender() {
    let server = start(config()).await;
    let t = swaks(
        &server,
        &["--pipeline", "--from", "<>", "--to", "stored@mamoru.test,drop@mamoru.test", "--body", "bounce body"],
    )
    .await;
    assert!(t.contains("MAIL FROM:<>"), "null sender sent:\n{t}");
    let replies = swaks_replies(&t);
    assert!(replies.contains(&"250-PIPELINING"), "transcript:\n{t}");
    // Dropped (a deliberate drop) is acknowledged like a commit.
    let tail: Vec<&str> = replies.iter().copied().skip_while(|r| !r.starts_with("354")).skip(1).collect();
    assert_eq!(
        tail,
        [
            "250 2.0.0 <stored@mamoru.test> OK",
            "250 2.0.0 <drop@mamoru.test> OK",
            "221 2.0.0 lmtp.mamoru.test closing connection",
        ],
        "transcript:\n{t}"
    );
    let got = server.deliver.deliveries();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|d| d.sender.is_empty()));
    server.stop().await;
}

#[tokio::test]
async fn swaks_oversize_message_refused() {
    let server = start(config()).await;
    let body = "x".repeat(76).repeat(MAX_BYTES as usize / 76 + 10);
    let t = swaks(&server, &["--from", "parent@example.org", "--to", "stored@mamoru.test", "--body", &body]).await;
    let replies = swaks_replies(&t);
    assert!(replies.contains(&"250 SIZE 4096"), "SIZE announced:\n{t}");
    assert!(
        replies.contains(&"552 5.3.4 <stored@mamoru.test> message size exceeds fixed limit"),
        "transcript:\n{t}"
    );
    assert!(server.deliver.deliveries().is_empty());
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Raw socket: what the clients above cannot provoke
// ---------------------------------------------------------------------------

struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    async fn connect(server: &Server) -> Self {
        let stream = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
        let (r, w) = stream.into_split();
        let mut client = Self { reader: BufReader::new(r), writer: w };
        assert!(client.reply().await.starts_with("220 "));
        client
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    /// The next reply line (the last line of a multi-line reply), without CRLF.
    async fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
                .await
                .expect("reply in time")
                .expect("read");
            assert!(n > 0, "connection closed while waiting for a reply");
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_owned();
            }
        }
    }

    async fn command(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Waits for the server to close the connection.
    async fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, self.reader.read_to_end(&mut rest)).await.expect("close in time").expect("read");
        assert!(rest.is_empty(), "unexpected bytes before close: {:?}", String::from_utf8_lossy(&rest));
    }
}

#[tokio::test]
async fn panic_in_deliver_is_a_451_and_the_connection_survives() {
    let server = start(config()).await;
    let mut c = Client::connect(&server).await;
    c.command("LHLO client.test").await;
    c.command("MAIL FROM:<parent@example.org>").await;
    assert!(c.command("RCPT TO:<panic@mamoru.test>").await.starts_with("250"));
    assert!(c.command("RCPT TO:<stored@mamoru.test>").await.starts_with("250"));
    assert!(c.command("DATA").await.starts_with("354"));
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n").await;
    assert_eq!(c.reply().await, "451 4.3.0 <panic@mamoru.test> temporary failure, try again later");
    assert_eq!(c.reply().await, "250 2.0.0 <stored@mamoru.test> OK");
    // A panic at RCPT time is a temporary failure for that recipient only.
    c.command("MAIL FROM:<parent@example.org>").await;
    assert_eq!(
        c.command("RCPT TO:<panic-at-rcpt@mamoru.test>").await,
        "451 4.3.0 <panic-at-rcpt@mamoru.test> temporary failure, try again later"
    );
    assert_eq!(c.command("NOOP").await, "250 2.0.0 OK");
    assert_eq!(c.command("QUIT").await, "221 2.0.0 lmtp.mamoru.test closing connection");
    c.expect_eof().await;
    assert_eq!(server.deliver.deliveries().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn too_many_recipients_and_bare_lf_body() {
    let server = start(LmtpConfig { max_recipients: 2, ..config() }).await;
    let mut c = Client::connect(&server).await;
    // Bare LF line endings from a sloppy client are accepted throughout.
    c.send(b"LHLO client.test\nMAIL FROM:<a@example.org>\n").await;
    assert_eq!(c.reply().await, "250 SIZE 4096");
    assert_eq!(c.reply().await, "250 2.1.0 OK");
    c.send(b"RCPT TO:<s1@mamoru.test>\nRCPT TO:<s2@mamoru.test>\nRCPT TO:<s3@mamoru.test>\nDATA\n").await;
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("250"));
    assert_eq!(c.reply().await, "452 4.5.3 too many recipients");
    assert!(c.reply().await.starts_with("354"));
    c.send(b"line one\n..two\n.\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 <s1@mamoru.test> OK");
    assert_eq!(c.reply().await, "250 2.0.0 <s2@mamoru.test> OK");
    assert_eq!(server.deliver.deliveries()[0].message, b"line one\r\n.two\r\n");
    assert_eq!(c.command("DATA").await, "503 5.5.1 no valid recipients");
    let long = format!("MAIL FROM:<{}@example.org>", "a".repeat(1000));
    assert_eq!(c.command(&long).await, "500 5.5.2 line too long");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_the_data_in_flight() {
    let server = start(config()).await;
    let mut c = Client::connect(&server).await;
    c.command("LHLO client.test").await;
    c.command("MAIL FROM:<parent@example.org>").await;
    c.command("RCPT TO:<stored@mamoru.test>").await;
    assert!(c.command("DATA").await.starts_with("354"));
    c.send(b"Subject: half\r\n\r\nfirst half").await;
    server.shutdown.cancel();
    let addr = server.addr;
    // The listener goes away: new connections are refused (poll until the
    // accept loop has seen the cancel).
    let refused = async {
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                Err(_) => return,
                Ok(mut s) => {
                    // Accepted just before the cancel: it must be told 421 or be closed.
                    let mut buf = Vec::new();
                    let _ = s.read_to_end(&mut buf).await;
                    tokio::task::yield_now().await;
                }
            }
        }
    };
    tokio::time::timeout(WAIT, refused).await.expect("listener closed");
    assert!(!server.task.is_finished(), "run waits for the transaction in flight");
    c.send(b", second half\r\n.\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 <stored@mamoru.test> OK");
    // Idle now: the server says goodbye on its own.
    assert_eq!(c.reply().await, "421 4.3.2 shutting down");
    c.expect_eof().await;
    assert_eq!(server.deliver.deliveries()[0].message, b"Subject: half\r\n\r\nfirst half, second half\r\n");
    server.join().await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections_at_once() {
    let server = start(config()).await;
    let mut idle = Client::connect(&server).await;
    idle.command("LHLO client.test").await;
    let mut fresh = Client::connect(&server).await;
    server.stop().await;
    assert_eq!(idle.reply().await, "421 4.3.2 shutting down");
    idle.expect_eof().await;
    assert_eq!(fresh.reply().await, "421 4.3.2 shutting down");
    fresh.expect_eof().await;
}

#[tokio::test]
async fn idle_connections_time_out() {
    let server = start(LmtpConfig { idle_timeout: Duration::from_millis(200), ..config() }).await;
    let mut c = Client::connect(&server).await;
    c.command("LHLO client.test").await;
    assert_eq!(c.reply().await, "421 4.4.2 lmtp.mamoru.test idle timeout, closing connection");
    c.expect_eof().await;
    server.stop().await;
}

/// A raw connection from a chosen loopback address (the whole 127/8 is
/// loopback on Linux, so each address is a different client).
async fn connect_from(server: &Server, source: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(format!("{source}:0").parse().expect("source address")).expect("bind source");
    socket.connect(server.addr).await.expect("connect")
}

/// The first line the server sends, then whether it closed the connection.
async fn first_line(stream: tokio::net::TcpStream) -> (String, bool) {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(WAIT, r.read_line(&mut line)).await.expect("line in time").expect("read");
    let mut rest = [0u8; 64];
    let closed = matches!(tokio::time::timeout(Duration::from_millis(300), r.read(&mut rest)).await, Ok(Ok(0)));
    (line.trim_end().to_owned(), closed)
}

#[tokio::test]
async fn connections_over_the_per_client_cap_get_421_and_other_clients_are_served() {
    let server = start(LmtpConfig { connections: ConnectionLimits::new(10, 2), ..config() }).await;
    let mut held = vec![];
    for _ in 0..2 {
        let s = connect_from(&server, "127.0.0.1").await;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).await.expect("greeting");
        assert!(line.starts_with("220 "), "{line}");
        held.push(r);
    }
    let (line, closed) = first_line(connect_from(&server, "127.0.0.1").await).await;
    assert_eq!(line, "421 4.7.0 too many connections");
    assert!(closed, "refused connection is closed");
    // Another client is not affected.
    let (line, closed) = first_line(connect_from(&server, "127.0.0.2").await).await;
    assert!(line.starts_with("220 "), "{line}");
    assert!(!closed);
    // Closing one frees its slot.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (line, _) = first_line(connect_from(&server, "127.0.0.1").await).await;
    assert!(line.starts_with("220 "), "{line}");
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_total_cap_get_421() {
    let server = start(LmtpConfig { connections: ConnectionLimits::new(3, 50), ..config() }).await;
    let mut held = vec![];
    for i in 1..=3 {
        let s = connect_from(&server, &format!("127.0.0.{i}")).await;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).await.expect("greeting");
        assert!(line.starts_with("220 "), "{line}");
        held.push(r);
    }
    let (line, closed) = first_line(connect_from(&server, "127.0.0.9").await).await;
    assert_eq!(line, "421 4.7.0 too many connections");
    assert!(closed);
    drop(held);
    server.stop().await;
}

#[tokio::test]
async fn a_dripping_transaction_runs_out_of_time_and_stores_nothing() {
    let idle = Duration::from_millis(400);
    let server = start(LmtpConfig { idle_timeout: idle, transaction_timeout: Duration::from_millis(1200), ..config() }).await;
    let mut c = Client::connect(&server).await;
    c.command("LHLO client.test").await;
    c.command("MAIL FROM:<parent@example.org>").await;
    assert!(c.command("RCPT TO:<stored@mamoru.test>").await.starts_with("250"));
    assert!(c.command("DATA").await.starts_with("354"));
    // One byte every 200 ms: never idle for 400 ms, so only the budget ends it.
    let started = std::time::Instant::now();
    let mut reply = String::new();
    for b in b"Subject: slow\r\n\r\n".iter().cycle().take(60) {
        if c.writer.write_all(&[*b]).await.is_err() {
            break;
        }
        let mut line = String::new();
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), c.reader.read_line(&mut line)).await {
            if n > 0 {
                reply = line.trim_end().to_owned();
            }
            break;
        }
    }
    assert_eq!(reply, "421 4.4.2 lmtp.mamoru.test transaction took too long, closing connection");
    assert!(started.elapsed() < Duration::from_secs(5));
    c.expect_eof().await;
    assert!(server.deliver.deliveries().is_empty(), "nothing of the message is delivered");
    server.stop().await;
}
