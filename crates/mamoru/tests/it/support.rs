//! Test harness: the real `mamoru` binary in a temp dir, real sockets, real
//! peers (Postfix's smtp-sink, swaks). Waits use deadlines, never fixed sleeps.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mamoru_core::EmailAddress;
use mamoru_store::{Store, Subscriber};

pub const BIN: &str = env!("CARGO_BIN_EXE_mamoru");

/// The binary as it ships: `scripts/test` builds it once in release mode and
/// names it in `MAMORU_RELEASE_BIN`; without that (a plain `cargo nextest
/// run`), the test build's own binary.
pub fn shipped_bin() -> String {
    std::env::var("MAMORU_RELEASE_BIN").unwrap_or_else(|_| BIN.to_string())
}
pub const DOMAIN: &str = "mamoru.test";

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Like [`wait_for`], and on timeout shows `context()` (a peer's log).
pub fn wait_for_or<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>, context: impl Fn() -> String) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}; context:\n{}", context());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that was free a moment ago, for peers that cannot bind port 0
/// themselves. Drawn at random below the kernel's ephemeral range
/// (32768–60999), so no port-0 listener and no outgoing connection of a
/// concurrently running test can take it before the peer binds it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher as _, Hasher as _};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A data dir, a config file and helpers to run the binary against them.
pub struct Instance {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Instance {
    /// A config with domain mamoru.test, both listeners on port 0, quick
    /// retries, a short lock timeout, and `overrides` ("section.key", "toml
    /// value") on top, e.g. `("relay.transport", "\"file\"")`.
    pub fn new(overrides: &[(&str, &str)]) -> Self {
        let mut sections: std::collections::BTreeMap<String, Vec<(String, String)>> = Default::default();
        let defaults = [
            ("domain", format!("\"{DOMAIN}\"")),
            ("public_url", "\"http://127.0.0.1:1\"".to_string()),
            ("ingest.lmtp_listen", "\"127.0.0.1:0\"".to_string()),
            ("web.listen", "\"127.0.0.1:0\"".to_string()),
            ("relay.retry_base_secs", "1".to_string()),
            ("relay.retry_max_secs", "2".to_string()),
            ("relay.poll_interval_ms", "50".to_string()),
            ("store.busy_timeout_ms", "300".to_string()),
        ];
        let all = defaults.into_iter().map(|(k, v)| (k.to_string(), v)).chain(overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        for (key, value) in all {
            let (section, name) = key.rsplit_once('.').map_or((String::new(), key.clone()), |(s, n)| (s.to_string(), n.to_string()));
            let entries = sections.entry(section).or_default();
            entries.retain(|(n, _)| *n != name);
            entries.push((name, value));
        }
        let mut text = String::new();
        for (section, entries) in &sections {
            if !section.is_empty() {
                text.push_str(&format!("[{section}]\n"));
            }
            for (k, v) in entries {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("mamoru.toml");
        std::fs::write(&config, text).expect("write config");
        Instance { dir, config }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn cmd(&self) -> Command {
        self.cmd_of(BIN)
    }

    /// The same command line for another build of the binary.
    pub fn cmd_of(&self, bin: &str) -> Command {
        let mut c = Command::new(bin);
        c.arg("-c").arg(&self.config).env("RUST_LOG", "debug");
        c
    }

    /// `mamoru ingest` with `message` on stdin.
    pub fn ingest(&self, sender: &str, recipient: &str, message: &[u8]) -> Output {
        self.ingest_with(sender, recipient, message, &[])
    }

    pub fn ingest_with(&self, sender: &str, recipient: &str, message: &[u8], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.cmd();
        cmd.args(["ingest", "--sender", sender, "--recipient", recipient]);
        cmd.envs(env.iter().copied());
        run_with_stdin(cmd, message)
    }

    pub fn serve(&self) -> Server {
        Server::start(self.cmd().arg("serve"))
    }

    /// Opens the store the way the binary does, for assertions.
    pub fn store(&self) -> Store {
        let keys = mamoru_store::keys::load_or_create(&self.data_dir()).expect("keys");
        Store::open(&self.data_dir(), &keys, Duration::from_secs(5)).expect("open store")
    }

    pub fn subscriber(&self, addr: &str) -> Option<Subscriber> {
        self.store().find_subscriber(&EmailAddress::parse(addr).expect("address")).expect("query")
    }

    /// The .eml files the file transport wrote, oldest first.
    pub fn mail_files(&self) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(self.data_dir().join("mail")) else { return vec![] };
        let mut v: Vec<PathBuf> =
            rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "eml")).collect();
        v.sort_by_key(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split('-').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        });
        v
    }
}

pub fn run_with_stdin(mut cmd: Command, input: &[u8]) -> Output {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn mamoru");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // The process may stop reading early (size limit); that is fine.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait mamoru");
    let _ = writer.join();
    out
}

/// Runs a Python `smtplib.LMTP` client script against `server`'s LMTP
/// listener (`sys.argv[1:3]` are its host and port, then `args`) and
/// returns the lines it printed.
pub fn run_lmtp_script(script: &str, server: &Server, args: &[&std::ffi::OsStr]) -> Vec<String> {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).arg(server.lmtp.ip().to_string()).arg(server.lmtp.port().to_string()).args(args);
    let out = cmd.output().expect("python3");
    assert!(out.status.success(), "python LMTP client failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// `mamoru serve`, with the addresses it printed.
pub struct Server {
    pub child: Child,
    pub lmtp: SocketAddr,
    pub http: SocketAddr,
    stderr: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Server {
    pub fn start(cmd: &mut Command) -> Server {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn mamoru serve");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (etx, erx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = etx.send(line);
            }
        });
        let addr = |what: &str| -> SocketAddr {
            let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("no '{what} listening on' line"));
            let rest = line.strip_prefix(&format!("{what} listening on ")).unwrap_or_else(|| panic!("unexpected line {line:?}"));
            rest.parse().expect("socket address")
        };
        let lmtp = addr("lmtp");
        let http = addr("http");
        Server { child, lmtp, http, stderr: erx, log: vec![] }
    }

    /// Collects what the server logged so far.
    pub fn logs(&mut self) -> String {
        while let Ok(l) = self.stderr.try_recv() {
            self.log.push(l);
        }
        self.log.join("\n")
    }

    /// SIGTERM, then wait for a clean exit. Returns the status and the log.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = wait_for("mamoru serve to exit", Duration::from_secs(30), || self.child.try_wait().ok().flatten());
        let log = self.logs();
        (status, log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 client over a real socket: status, headers, body.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

pub fn http(addr: SocketAddr, method: &str, path: &str, form: Option<&str>) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let body = form.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{}Content-Length: {}\r\n\r\n{body}",
        if form.is_some() { "Content-Type: application/x-www-form-urlencoded\r\n" } else { "" },
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("status line");
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let body = decode_chunked_if_needed(body);
    Response { status, headers, body }
}

fn decode_chunked_if_needed(body: &str) -> String {
    // hyper sends Content-Length for full bodies; chunked only if it must.
    body.to_string()
}

/// A parsed message: decoded headers we care about and the text body.
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub message_id: String,
    pub body: String,
}

pub fn parse_mail(raw: &[u8]) -> Mail {
    let m = mailparse::parse_mail(raw).expect("parse mail");
    let h = |k: &str| m.headers.iter().find(|x| x.get_key().eq_ignore_ascii_case(k)).map(|x| x.get_value()).unwrap_or_default();
    Mail { to: h("To"), subject: h("Subject"), message_id: h("Message-ID"), body: m.get_body().expect("body") }
}

/// The registration link in a 登録受付 body, as a path (`/r/TOKEN`).
/// District boxes pre-checked on a registration or manage page (the kinds'
/// boxes are checked too, by default).
pub fn checked_districts(page: &str) -> usize {
    page.split("name=\"district\"").skip(1).filter(|rest| rest.split('>').next().is_some_and(|tag| tag.ends_with(" checked"))).count()
}

pub fn link_path(body: &str) -> String {
    let start = body.find("/r/").expect("a /r/ link in the body");
    body[start..].split_whitespace().next().expect("link").to_string()
}

/// Postfix's smtp-sink on a loopback port, dumping each message to a file.
pub struct SmtpSink {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl SmtpSink {
    pub fn start(dir: &Path) -> SmtpSink {
        std::fs::create_dir_all(dir).expect("sink dir");
        let port = free_port();
        let child = Command::new("smtp-sink")
            .args(["-u", "root", "-d"])
            .arg(format!("{}/%s.", dir.display()))
            .arg(format!("127.0.0.1:{port}"))
            .arg("64")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start smtp-sink (Debian package postfix; scripts/install-test-deps installs it)");
        wait_for("smtp-sink to listen", Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).ok());
        SmtpSink { child, port, dir: dir.to_path_buf() }
    }

    /// Messages received so far: (envelope recipients, message bytes).
    pub fn messages(&self) -> Vec<(Vec<String>, Vec<u8>)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return vec![] };
        let mut out = vec![];
        for e in rd.flatten() {
            let Ok(data) = std::fs::read(e.path()) else { continue };
            if let Some(m) = parse_sink_dump(&data) {
                out.push(m);
            }
        }
        out
    }
}

/// smtp-sink's dump: `X-…` lines describing the session, then the message.
fn parse_sink_dump(data: &[u8]) -> Option<(Vec<String>, Vec<u8>)> {
    let mut rcpts = vec![];
    let mut rest = data;
    loop {
        let nl = rest.iter().position(|&b| b == b'\n')?;
        let line = String::from_utf8_lossy(&rest[..nl]).trim_end().to_string();
        if let Some(r) = line.strip_prefix("X-Rcpt-Args: ") {
            rcpts.push(r.trim_start_matches('<').split('>').next().unwrap_or("").to_string());
        } else if !(line.starts_with("X-Client-") || line.starts_with("X-Helo-") || line.starts_with("X-Mail-")) {
            break;
        }
        rest = &rest[nl + 1..];
    }
    // The dump is complete only once the message ended (smtp-sink writes as it reads).
    if !rest.ends_with(b"\n") {
        return None;
    }
    Some((rcpts, rest.to_vec()))
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An empty mail over LMTP with swaks, as a phone's empty mail arrives:
/// swaks's whole dialogue.
pub fn swaks_lmtp(server: &Server, from: &str, to: &str) -> String {
    let out = Command::new("swaks")
        .args(["--protocol", "LMTP", "--server", &server.lmtp.to_string(), "--from", from, "--to", to])
        .args(["--header", "Subject: ", "--body", " "])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run swaks (scripts/install-test-deps installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}
