//! Operating mamoru with the real tools: a Prometheus from Debian scrapes a
//! running `mamoru serve` through a registration and an alert, and its
//! PromQL answers are compared with what the SMTP sink received; promtool
//! checks the shipped rules and configuration; the health endpoints, the
//! systemd notifications and the JSON log format are exercised on the
//! binary.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

const T: Duration = Duration::from_secs(60);
const ADMIN: &str = "staff@city.test";
const PARENT: &str = "taro.y@docomo.ne.jp";
/// A parent whose empty mail comes through the pipe command.
const PIPE_PARENT: &str = "hanako.m@ezweb.ne.jp";
const EMPTY_MAIL: &[u8] = b"From: hanako.m@ezweb.ne.jp\r\nSubject: \r\n\r\n";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/deploy")
}

/// HTTP/1.0 GET (no chunked replies to decode): status and body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status");
    (status, body.to_string())
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// A Prometheus server (the Debian package's binary) on a loopback port,
/// with its own configuration and storage in `dir`.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(dir: &Path, target: SocketAddr, rules: &Path) -> Prometheus {
        let port = free_port();
        std::fs::create_dir_all(dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: mamoru\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .expect("write prometheus.yml");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (Debian package prometheus; scripts/install-test-deps installs it)");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_for("prometheus to be ready", T, || (TcpStream::connect(addr).is_ok() && get(addr, "/-/ready").0 == 200).then_some(()));
        Prometheus { child, addr }
    }

    /// `/api/v1/<what>?<query>`, parsed; panics unless the status is success.
    fn api(&self, what: &str, query: &str) -> serde_json::Value {
        let (status, body) = get(self.addr, &format!("/api/v1/{what}?{query}"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what} {query}: {e}: {body}"));
        assert_eq!((status, v["status"].as_str()), (200, Some("success")), "{what} {query}: {body}");
        v
    }

    /// An instant query's one value (`None` when the result is empty).
    fn scalar(&self, promql: &str) -> Option<f64> {
        let v = self.api("query", &format!("query={}", url_escape(promql)));
        let result = v["data"]["result"].as_array().expect("result").clone();
        assert!(result.len() <= 1, "{promql}: {result:?}");
        result.first().map(|r| r["value"][1].as_str().expect("value").parse().expect("number"))
    }

    /// Waits until `promql` answers `want`.
    fn wait_value(&self, promql: &str, want: f64) {
        let mut last = None;
        let ok = (0..600).any(|_| {
            last = self.scalar(promql);
            let done = last == Some(want);
            if !done {
                std::thread::sleep(Duration::from_millis(100));
            }
            done
        });
        assert!(ok, "{promql}: wanted {want}, Prometheus answers {last:?}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn admin_add(inst: &Instance, id: &str, email: &str) {
    let mut cmd = inst.cmd();
    cmd.args(["admin", "add", id, "--email", email]);
    let out = run_with_stdin(cmd, b"a long enough password\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn swaks_lmtp(server: &Server, from: &str, to: &str) {
    let out = Command::new("swaks")
        .args(["--protocol", "LMTP", "--server", &server.lmtp.to_string(), "--from", from, "--to", to])
        .args(["--header", "Subject: ", "--body", " "])
        .stdin(Stdio::null())
        .output()
        .expect("run swaks");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("250 2.0.0"), "{text}");
}

/// The sink's messages whose Subject contains `what`.
fn sink_with(sink: &SmtpSink, what: &str) -> Vec<Mail> {
    sink.messages().into_iter().map(|(_, raw)| parse_mail(&raw)).filter(|m| m.subject.contains(what)).collect()
}

/// A registration by LMTP and the web page, then an alert posted from the
/// command line and published through its preview's link, then an empty
/// mail and a bounce-like one through the pipe command and an alert
/// published with `alert post --yes` (both other processes), all delivered
/// to Postfix's smtp-sink; a real Prometheus scrapes the serve process every
/// second meanwhile, and what it answers matches the sink's count.
#[test]
fn prometheus_scrapes_a_registration_and_an_alert_and_answers_what_the_sink_received() {
    let work = tempfile::tempdir().expect("tempdir");
    let sink = SmtpSink::start(&work.path().join("sink"));
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let inst = Instance::new(&[
        ("relay.transport", &format!("\"smtp://127.0.0.1:{}\"", sink.port)),
        ("metrics.listen", &format!("\"{metrics}\"")),
    ]);
    admin_add(&inst, "chuo", ADMIN);
    let server = inst.serve();
    wait_for("the metrics listener", T, || TcpStream::connect(metrics).ok());
    assert_eq!(get(metrics, "/healthz"), (200, "ok\n".to_string()));
    // Ready once every listener is bound (a moment after they print).
    wait_for("/readyz", T, || (get(metrics, "/readyz") == (200, "ready\n".to_string())).then_some(()));
    let prom = Prometheus::start(&work.path().join("prometheus"), metrics, &deploy_dir().join("prometheus/mamoru-rules.yml"));
    prom.wait_value("up{job=\"mamoru\"}", 1.0);

    // A parent registers: an empty mail over LMTP, the link, the page.
    swaks_lmtp(&server, PARENT, "ans@mamoru.test");
    let received = wait_for("登録受付 at the sink", T, || sink_with(&sink, "登録受付").into_iter().next());
    let token_path = link_path(&received.body);
    assert_eq!(http(server.http, "GET", &token_path, None).status, 200);
    assert_eq!(http(server.http, "POST", &token_path, Some("district=1")).status, 200);
    wait_for("登録完了 at the sink", T, || sink_with(&sink, "登録完了").into_iter().next());

    // An admin posts an alert for 中央; its preview's link publishes it.
    let mut post = inst.cmd();
    post.args(["alert", "post", "--admin", "chuo", "--title", "不審者", "--kind", "不審者情報", "--districts", "中央"]);
    let out = run_with_stdin(post, "公園で声かけがありました。".as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let preview = wait_for("the preview at the sink", T, || sink_with(&sink, "配信の確認").into_iter().next());
    let start = preview.body.find("/p/").expect("a /p/ link");
    let publish_path = preview.body[start..].split_whitespace().next().expect("link").to_string();
    assert_eq!(http(server.http, "POST", &publish_path, Some("")).status, 200);
    wait_for("the alert at the sink", T, || sink_with(&sink, "[不審者情報]").into_iter().next());

    wait_for("four complete messages at the sink", T, || (sink.messages().len() == 4).then_some(()));
    prom.wait_value("mamoru_alerts_published_total", 1.0);

    // Other processes: a parent's empty mail and a null-sender one through
    // the pipe command (Postfix's pipe(8) runs one per message), and an
    // alert the operator publishes from the command line at once.
    let piped = inst.ingest(PIPE_PARENT, "ans@mamoru.test", EMPTY_MAIL);
    assert!(piped.status.success(), "{}", String::from_utf8_lossy(&piped.stderr));
    let dropped = inst.ingest("", "ans@mamoru.test", EMPTY_MAIL);
    assert!(dropped.status.success(), "{}", String::from_utf8_lossy(&dropped.stderr));
    wait_for("the piped 登録受付 at the sink", T, || (sink_with(&sink, "登録受付").len() == 2).then_some(()));
    let mut now = inst.cmd();
    now.args(["alert", "post", "--admin", "chuo", "--title", "続く声かけ", "--kind", "不審者情報", "--districts", "中央", "--yes"]);
    let out = run_with_stdin(now, "駅前でも声かけがありました。".as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let alerts = || sink_with(&sink, "[不審者情報]").into_iter().filter(|m| m.subject.starts_with("【守るネット】[")).count();
    wait_for("the second alert at the sink", T, || (alerts() == 2).then_some(()));

    // What Prometheus scraped matches what the sink received: 登録受付
    // twice, 登録完了, two alerts and their previews (`--yes` mails its
    // preview too; a dump is complete once its message ended).
    let subjects = || sink.messages().into_iter().map(|(_, raw)| parse_mail(&raw).subject).collect::<Vec<_>>();
    wait_for_or("seven complete messages at the sink", T, || (sink.messages().len() == 7).then_some(()), || format!("{:?}", subjects()));
    let delivered = sink.messages().len();
    prom.wait_value("sum(mamoru_relay_deliveries_total{outcome=\"sent\",reply_class=\"2xx\"})", delivered as f64);
    prom.wait_value("sum(mamoru_relay_deliveries_total{outcome!=\"sent\"}) or vector(0)", 0.0);
    prom.wait_value("mamoru_inbound_mails_total{entry=\"lmtp\",class=\"registration\"}", 1.0);
    prom.wait_value("mamoru_inbound_mails_total{entry=\"pipe\",class=\"registration\"}", 1.0);
    prom.wait_value("mamoru_inbound_mails_total{entry=\"pipe\",class=\"null-sender\"}", 1.0);
    prom.wait_value("sum(mamoru_inbound_mails_total)", 3.0);
    prom.wait_value("mamoru_registrations_requested_total{channel=\"mail\",kind=\"register\"}", 2.0);
    prom.wait_value("mamoru_registrations_completed_total", 1.0);
    prom.wait_value("mamoru_alerts_published_total", 2.0);
    prom.wait_value("mamoru_alert_delivery_seconds_count", 2.0);
    prom.wait_value("sum(mamoru_http_requests_total{route=\"registration\",status=\"200\"})", 2.0);
    prom.wait_value("sum(mamoru_http_requests_total{route=\"publish\",status=\"200\"})", 1.0);
    prom.wait_value("sum(mamoru_outbox_rows)", 0.0);
    prom.wait_value("max(mamoru_outbox_oldest_age_seconds)", 0.0);
    prom.wait_value("sum(mamoru_store_errors_total) or vector(0)", 0.0);
    prom.wait_value("count(mamoru_pool_pace_ceiling{pool=\"docomo\"})", 1.0);

    // The shipped rules are loaded and healthy; none fires on this run.
    let rules = prom.api("rules", "type=alert");
    let groups = rules["data"]["groups"].as_array().expect("groups");
    let loaded: Vec<&serde_json::Value> = groups.iter().flat_map(|g| g["rules"].as_array().expect("rules")).collect();
    assert_eq!(loaded.len(), 5, "{rules}");
    for r in &loaded {
        assert_eq!(r["health"].as_str(), Some("ok"), "{r}");
        assert_eq!(r["state"].as_str(), Some("inactive"), "{r}");
    }
    // Every query of the shipped dashboard is valid PromQL to this server.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy_dir().join("grafana/mamoru-dashboard.json")).expect("dashboard")).expect("JSON");
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr").replace("$instance", ".*");
            prom.api("query", &format!("query={}", url_escape(&expr)));
            exprs += 1;
        }
    }
    assert!(exprs >= 15, "{exprs}");

    // No metric name or label value holds an address, a token or an admin
    // ID: not in the exposition, not in what Prometheus stored.
    let token = token_path.trim_start_matches("/r/");
    let publish_token = publish_path.trim_start_matches("/p/");
    let (_, exposition) = get(metrics, "/metrics");
    let series = prom.api("series", &format!("match[]={}", url_escape("{__name__=~\"mamoru_.+\"}"))).to_string();
    for (what, text) in [("/metrics", exposition.as_str()), ("Prometheus' series", series.as_str())] {
        assert!(text.contains("mamoru_relay_deliveries_total"), "{what}: {text}");
        for secret in ["@", PARENT, "taro", PIPE_PARENT, "hanako", "staff", token, publish_token, "chuo", "/r/", "/p/"] {
            assert!(!text.contains(secret), "{what} holds {secret:?}:\n{text}");
        }
        // Nothing that looks like a token (51 base64url characters) either.
        let longest = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .filter(|w| !w.starts_with("mamoru_"))
            .map(str::len)
            .max()
            .unwrap_or(0);
        assert!(longest < 40, "{what}: a {longest}-character word");
    }
    drop(prom);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

/// `mamoru relay` on its own (beside the pipe command, without `serve`),
/// killed when dropped.
struct RelayOnly(Child);

impl Drop for RelayOnly {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of the exposition line that starts with `series` (name and
/// labels as written), if there is one.
fn exposed(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `mamoru relay` with `[metrics] listen` serves the same listener as
/// `serve`: health, readiness, the relay's metrics, and the counters the
/// pipe command keeps in the store, from the first scrape on (a process
/// started after the mail shows the stored total, never 0 first) and
/// rising while it runs.
#[test]
fn the_relay_alone_serves_metrics_and_readiness_with_the_pipe_counts() {
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let inst = Instance::new(&[("metrics.listen", &format!("\"{metrics}\""))]);
    let piped = inst.ingest(PIPE_PARENT, "ans@mamoru.test", EMPTY_MAIL);
    assert!(piped.status.success(), "{}", String::from_utf8_lossy(&piped.stderr));

    let mut cmd = inst.cmd();
    cmd.arg("relay").stdout(Stdio::piped()).stderr(Stdio::null());
    let mut relay = RelayOnly(cmd.spawn().expect("start mamoru relay"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(relay.0.stdout.take().expect("stdout")), &mut line).expect("read");
    assert_eq!(line.trim_end(), format!("metrics listening on {metrics}"));
    assert_eq!(get(metrics, "/healthz"), (200, "ok\n".to_string()));
    let (_, first) = get(metrics, "/metrics");
    let pipe = "mamoru_inbound_mails_total{entry=\"pipe\",class=\"registration\"}";
    let requested = "mamoru_registrations_requested_total{channel=\"mail\",kind=\"register\"}";
    assert_eq!((exposed(&first, pipe), exposed(&first, requested)), (Some(1.0), Some(1.0)), "{first}");
    wait_for("/readyz", T, || (get(metrics, "/readyz") == (200, "ready\n".to_string())).then_some(()));

    // The relay delivers the 登録受付 (file transport) and counts it.
    wait_for("the 登録受付 file", T, || (inst.mail_files().len() == 1).then_some(()));
    let sent = "mamoru_relay_deliveries_total{pool=\"au\",outcome=\"sent\",reply_class=\"2xx\"}";
    wait_for("the delivery in /metrics", T, || (exposed(&get(metrics, "/metrics").1, sent) == Some(1.0)).then_some(()));
    // The next piped mail shows within the relay's once-a-second snapshot.
    let again = inst.ingest("", "ans@mamoru.test", EMPTY_MAIL);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let dropped = "mamoru_inbound_mails_total{entry=\"pipe\",class=\"null-sender\"}";
    wait_for("the null-sender mail in /metrics", T, || (exposed(&get(metrics, "/metrics").1, dropped) == Some(1.0)).then_some(()));
    let (_, text) = get(metrics, "/metrics");
    assert_eq!(exposed(&text, pipe), Some(1.0), "{text}");
    assert!(exposed(&text, "mamoru_pool_pace_ceiling{pool=\"au\"}").is_some(), "{text}");
    assert!(!text.contains('@') && !text.contains("hanako"), "{text}");

    let pid = relay.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status = wait_for("mamoru relay to exit", T, || relay.0.try_wait().ok().flatten());
    assert!(status.success(), "{status:?}");
}

#[test]
fn promtool_passes_the_shipped_rules_their_tests_and_the_scrape_config() {
    let dir = deploy_dir().join("prometheus");
    for args in [
        vec!["check", "rules", "mamoru-rules.yml"],
        vec!["test", "rules", "mamoru-rules.test.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new("promtool").args(&args).current_dir(&dir).output().expect("promtool (Debian package prometheus)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
    }
    // The rule tests can fail: a threshold changed under them is caught.
    let work = tempfile::tempdir().expect("tempdir");
    let rules = std::fs::read_to_string(dir.join("mamoru-rules.yml")).expect("rules");
    std::fs::write(work.path().join("mamoru-rules.yml"), rules.replace("> 15 * 60", "> 30 * 60")).expect("write");
    std::fs::copy(dir.join("mamoru-rules.test.yml"), work.path().join("mamoru-rules.test.yml")).expect("copy");
    let out = Command::new("promtool").args(["test", "rules", "mamoru-rules.test.yml"]).current_dir(work.path()).output().expect("promtool");
    assert!(!out.status.success(), "a broken rule must fail its test");
}

/// Holds the database's write lock from another connection, as another
/// process would, until dropped.
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(inst: &Instance) -> WriteLock {
        let c = rusqlite::Connection::open(inst.data_dir().join("mamoru.db")).expect("open db");
        c.execute_batch("BEGIN IMMEDIATE").expect("lock");
        WriteLock(c)
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        let _ = self.0.execute_batch("ROLLBACK");
    }
}

#[test]
fn readiness_and_the_systemd_watchdog_follow_the_store() {
    let work = tempfile::tempdir().expect("tempdir");
    let socket_path = work.path().join("notify.sock");
    let notify = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    notify.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let inst = Instance::new(&[("metrics.listen", &format!("\"{metrics}\""))]);
    let mut cmd = inst.cmd();
    cmd.arg("serve").env("NOTIFY_SOCKET", &socket_path).env("WATCHDOG_USEC", "400000");
    let server = Server::start(&mut cmd);
    let mut buf = [0u8; 512];
    let mut next = |within: Duration| -> Option<String> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(n) = notify.recv(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    };
    let first = next(T).expect("a notification");
    assert!(first.lines().any(|l| l == "READY=1") || next(T).is_some_and(|m| m.contains("READY=1")), "{first}");
    assert!(std::iter::from_fn(|| next(Duration::from_secs(5))).take(5).any(|m| m.contains("WATCHDOG=1")), "watchdog pings");
    assert_eq!(get(metrics, "/readyz").0, 200);

    // Another process holds the write lock: not ready, no more pings.
    let lock = WriteLock::take(&inst);
    let (status, body) = get(metrics, "/readyz");
    assert_eq!((status, body.as_str()), (503, "store: locked\n"));
    assert_eq!(get(metrics, "/healthz").0, 200, "the process itself still answers");
    std::thread::sleep(Duration::from_millis(500));
    while next(Duration::from_millis(50)).is_some() {}
    assert!(next(Duration::from_millis(1500)).is_none_or(|m| !m.contains("WATCHDOG=1")), "no ping while the store is stuck");
    drop(lock);
    assert!(std::iter::from_fn(|| next(Duration::from_secs(5))).take(5).any(|m| m.contains("WATCHDOG=1")), "pings resume");
    assert_eq!(get(metrics, "/readyz").0, 200);
    assert_eq!(get(metrics, "/nothing").0, 404);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    let stopping = std::iter::from_fn(|| next(Duration::from_secs(2))).take(20).any(|m| m.contains("STOPPING=1"));
    assert!(stopping, "STOPPING=1 on shutdown");
}

#[test]
fn json_logs_are_one_object_per_line_without_addresses() {
    let inst = Instance::new(&[("log.format", "\"json\"")]);
    let mut server = inst.serve();
    let out = Command::new("swaks")
        .args(["--protocol", "LMTP", "--server", &server.lmtp.to_string(), "--from", PARENT, "--to", "ans@mamoru.test"])
        .args(["--header", "Subject: ", "--body", " "])
        .stdin(Stdio::null())
        .output()
        .expect("run swaks");
    assert!(out.status.success());
    wait_for("the registration's log line", T, || server.logs().contains("registration requested").then_some(()));
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    let mut states = 0;
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object: {e}: {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string() && v["message"].is_string(), "{line}");
        if v["message"].as_str().is_some_and(|m| m.starts_with("registration requested")) {
            assert_eq!(v["via"].as_str(), Some("mail"), "{line}");
            assert_eq!(v["to"].as_str(), Some("t***@docomo.ne.jp"), "{line}");
            states += 1;
        }
        assert!(!line.contains(PARENT), "address in clear: {line}");
    }
    assert_eq!(states, 1, "{log}");
    // MAMORU_LOG_FORMAT overrides the file.
    let mut cmd = inst.cmd();
    cmd.arg("serve").env("MAMORU_LOG_FORMAT", "text");
    let mut server = Server::start(&mut cmd);
    wait_for("the relay to start", T, || server.logs().contains("relay started").then_some(()));
    assert_eq!(http(server.http, "GET", "/", None).status, 200);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    assert!(log.lines().all(|l| !l.starts_with('{')) && log.contains("INFO"), "{log}");
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// There is no container engine here: what can be checked without one is.
/// The compose file parses (python3-yaml) and every file it, the
/// Dockerfiles and the Postfix image's entrypoint name exists; the
/// entrypoint renders the tests' own Postfix templates into a configuration
/// that Postfix's postconf and postmap read without a warning.
#[test]
fn the_container_files_parse_and_name_files_that_exist() {
    let script = r#"
import json, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
print(json.dumps(doc))
"#;
    let compose_path = repo().join("docker/compose.yaml");
    let out = Command::new("python3").arg("-c").arg(script).arg(&compose_path).output().expect("python3");
    assert!(out.status.success(), "compose.yaml: {}", String::from_utf8_lossy(&out.stderr));
    let compose: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let services = compose["services"].as_object().expect("services");
    assert_eq!(services.keys().collect::<Vec<_>>(), ["mamoru", "postfix"]);
    let docker = repo().join("docker");
    for (name, svc) in services {
        let context = docker.join(svc["build"]["context"].as_str().expect("context"));
        let dockerfile = context.join(svc["build"]["dockerfile"].as_str().expect("dockerfile"));
        let text = std::fs::read_to_string(&dockerfile).unwrap_or_else(|e| panic!("{name}: {}: {e}", dockerfile.display()));
        assert!(text.contains("\nUSER ") || name == "postfix", "{name}: runs as a user of its own");
        // Every COPY source (not from another stage) exists in the context.
        let mut copies = 0;
        for line in text.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from=")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            for src in &words[1..words.len() - 1] {
                assert!(context.join(src).exists(), "{name}: {line}: {src} is missing");
                copies += 1;
            }
        }
        assert!(copies >= 2, "{name}: {text}");
        for volume in svc["volumes"].as_array().into_iter().flatten() {
            let source = volume.as_str().expect("volume").split(':').next().expect("source");
            if source.starts_with('.') {
                assert!(docker.join(source).exists(), "{name}: volume {source} is missing");
            } else {
                assert!(compose["volumes"].get(source).is_some(), "{name}: named volume {source}");
            }
        }
    }
    let mamoru = std::fs::read_to_string(docker.join("Dockerfile")).expect("Dockerfile");
    assert!(mamoru.contains("VOLUME [\"/var/lib/mamoru\"]") && mamoru.contains("USER mamoru"), "{mamoru}");
    assert!(mamoru.matches("\nFROM ").count() >= 2, "multi-stage");
    // The container's configuration is valid for this build (its data dir
    // moved to a temporary one: `queue` opens the store).
    let work = tempfile::tempdir().expect("tempdir");
    let toml = std::fs::read_to_string(docker.join("mamoru.toml")).expect("mamoru.toml");
    assert!(toml.contains("data_dir = \"/var/lib/mamoru\""), "{toml}");
    let moved = toml.replace("data_dir = \"/var/lib/mamoru\"", &format!("data_dir = \"{}\"", work.path().join("data").display()));
    std::fs::write(work.path().join("mamoru.toml"), moved).expect("write");
    let cfg = Command::new(BIN).arg("-c").arg(work.path().join("mamoru.toml")).args(["queue", "--json"]).output().expect("mamoru");
    assert!(cfg.status.success(), "{}", String::from_utf8_lossy(&cfg.stderr));

    // The Postfix image's entrypoint renders the templates the tests use.
    let conf = tempfile::tempdir().expect("tempdir");
    let out = Command::new("sh")
        .arg(docker.join("postfix/entrypoint.sh"))
        .env("MAMORU_DOMAIN", "mamoru.example.jp")
        .env("MAMORU_POSTFIX_TEMPLATES", docker.join("postfix"))
        .env("POSTFIX_CONFIG_DIR", conf.path())
        .env("MAMORU_POSTFIX_RENDER_ONLY", "1")
        .output()
        .expect("sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in ["main.cf", "master.cf", "recipients", "transport"] {
        let text = std::fs::read_to_string(conf.path().join(file)).expect("rendered");
        let left: Vec<&str> = text.split('@').skip(1).step_by(2).filter(|w| w.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !w.is_empty()).collect();
        assert!(left.is_empty(), "{file}: placeholders left: {left:?}");
    }
    for args in [vec!["-n"], vec!["-M"]] {
        let out = Command::new("postconf").arg("-c").arg(conf.path()).args(&args).output().expect("postconf");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !err.contains("warning"), "postconf {args:?}: {err}");
    }
    let q = |map: &str, key: &str| -> String {
        let out = Command::new("postmap").arg("-c").arg(conf.path()).args(["-q", key]).arg(format!("texthash:{}", conf.path().join(map).display())).output().expect("postmap");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(q("transport", "mamoru.example.jp"), "lmtp:inet:mamoru:2424");
    assert_eq!(q("recipients", "ans@mamoru.example.jp"), "OK");
}
