//! A private Dovecot IMAP server for the IMAP ingest tests: its own
//! configuration, base_dir, passwd-file and maildirs in a temp dir, IMAPS on
//! a free loopback port with an openssl-made certificate, started as a
//! foreground process and killed on drop. Python's imaplib, an independent
//! IMAP client, delivers (APPEND) and inspects the mailboxes. Extra
//! configuration ([`WITHOUT_MOVE`], [`quota`]) shapes the server like a
//! provider's, and can be changed while it runs ([`Dovecot::reconfigure`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// A test user's password.
pub const PASSWORD: &str = "imap-secret";

/// Dovecot's own capabilities (2.3) less MOVE, as a server without RFC 6851
/// announces them; UIDPLUS (`UID EXPUNGE`) stays. `imap_capability` only
/// changes what is announced: a client that sends MOVE anyway still gets it
/// done, so only a client that reads the list takes the COPY path.
pub const WITHOUT_MOVE: &str = "imap_capability = IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE UNSELECT CHILDREN NAMESPACE UIDPLUS LITERAL+\n";

/// The quota plugin counting messages, at most `messages` per user: an
/// APPEND or COPY beyond it is refused with `NO [OVERQUOTA]`. (A MOVE between
/// two folders of the same user is never refused: it adds nothing.)
pub fn quota(messages: u32) -> String {
    format!(
        "mail_plugins = $mail_plugins quota\n\
         plugin {{\n  quota = count:User quota\n  quota_vsizes = yes\n  quota_rule = *:messages={messages}\n}}\n"
    )
}

pub struct Dovecot {
    child: Option<Child>,
    pub dir: PathBuf,
    pub port: u16,
    pub ca: PathBuf,
    /// The configuration without the extra part.
    base: String,
}

/// The user mail is stored as: the current user, or (as root, whose mail
/// Dovecot refuses) the `dovecot` system user the package creates.
fn mail_user() -> (String, u32, u32) {
    let out = Command::new("id").arg("-un").output().expect("id");
    let me = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let name = if me == "root" { "dovecot".to_string() } else { me };
    let (uid, gid) = crate::postfix::user_ids(&name);
    (name, uid, gid)
}

impl Dovecot {
    /// Starts Dovecot in `dir` with `users` (all with [`PASSWORD`]).
    pub fn start(dir: &Path, users: &[&str]) -> Dovecot {
        Dovecot::start_with(dir, users, "")
    }

    /// [`Dovecot::start`] with `extra` appended to its configuration.
    pub fn start_with(dir: &Path, users: &[&str], extra: &str) -> Dovecot {
        std::fs::create_dir_all(dir).expect("dovecot dir");
        // Dovecot's processes run as the mail user and must reach the dir.
        let mut p = dir.to_path_buf();
        while p.parent().is_some() && p != Path::new("/tmp") && p != Path::new("/") {
            let _ = Command::new("chmod").arg("o+x").arg(&p).status();
            p.pop();
        }
        let (ca, cert, key) = crate::transports::make_certs(dir);
        let (user, uid, gid) = mail_user();
        let passwd: String = users.iter().map(|u| format!("{u}:{{PLAIN}}{PASSWORD}\n")).collect();
        std::fs::write(dir.join("passwd"), passwd).expect("passwd");
        for d in ["run", "state", "home"] {
            std::fs::create_dir_all(dir.join(d)).expect("mkdir");
        }
        crate::postfix::chown_r(&dir.join("home"), &user);
        let port = free_port();
        let d = dir.display();
        let base = format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\nprotocols = imap\nlisten = 127.0.0.1\n\
             ssl = required\nssl_cert = <{cert}\nssl_key = <{key}\n\
             default_internal_user = {user}\ndefault_internal_group = {user}\ndefault_login_user = {user}\n\
             first_valid_uid = {uid}\nfirst_valid_gid = {gid}\nauth_mechanisms = plain\n\
             passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {d}/passwd\n}}\n\
             userdb {{\n  driver = static\n  args = uid={uid} gid={gid} home={d}/home/%u\n}}\n\
             mail_location = maildir:~/Maildir\n\
             imap_logout_format = in=%i out=%o body_bytes=%{{fetch_body_bytes}}\n\
             service imap-login {{\n  inet_listener imap {{\n    port = 0\n  }}\n  inet_listener imaps {{\n    port = {port}\n    ssl = yes\n  }}\n}}\n\
             service anvil {{\n  chroot =\n}}\nservice stats {{\n  chroot =\n}}\n",
            cert = cert.display(),
            key = key.display(),
        );
        let mut d = Dovecot { child: None, dir: dir.to_path_buf(), port, ca, base };
        d.write_config(extra);
        d.run();
        d
    }

    fn write_config(&self, extra: &str) {
        std::fs::write(self.dir.join("dovecot.conf"), format!("{}{extra}", self.base)).expect("dovecot.conf");
    }

    /// Rewrites the configuration with `extra` instead of what was there
    /// and has the running server reload it (`doveadm reload`): sessions
    /// that log in from then on get the new settings.
    pub fn reconfigure(&self, extra: &str) {
        self.write_config(extra);
        let reloads = || self.log().matches("reloading configuration").count();
        let before = reloads();
        let out = Command::new("doveadm").arg("-c").arg(self.dir.join("dovecot.conf")).arg("reload").output().expect("doveadm");
        assert!(out.status.success(), "doveadm reload: {}\n{}", String::from_utf8_lossy(&out.stderr), self.log());
        wait_for_or("dovecot to reload", Duration::from_secs(20), || (reloads() > before).then_some(()), || self.log());
    }

    fn run(&mut self) {
        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(self.dir.join("dovecot.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dovecot (Debian package dovecot-imapd; scripts/install-test-deps installs it)");
        self.child = Some(child);
        let port = self.port;
        wait_for_or(
            "dovecot to listen",
            Duration::from_secs(20),
            || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
            || self.log(),
        );
    }

    /// Kills the server and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
        // The master's pid file outlives a fast restart otherwise.
        let _ = std::fs::remove_file(self.dir.join("run/master.pid"));
    }

    /// Stops and starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }

    /// Runs IMAP operations as `user` with Python's imaplib; each op is a
    /// list of strings, each result a line of output:
    /// `["append", MAILBOX, MESSAGE-FILE]` → "ok",
    /// `["count", MAILBOX]` → the number of messages (-1: no such mailbox),
    /// `["create" | "delete", MAILBOX]` → "ok",
    /// `["uidvalidity", MAILBOX]` → the number,
    /// `["capability"]` → what the server announces once logged in,
    /// `["flags", MAILBOX]` → each message's flags but `\Recent`, one line
    /// for all (`(\Seen) ()`).
    pub fn imap(&self, user: &str, ops: &[Vec<String>]) -> Vec<String> {
        let script = r#"
import imaplib, json, re, ssl, sys
port, ca, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ops = json.loads(sys.stdin.read())
c = imaplib.IMAP4_SSL("localhost", port, ssl_context=ssl.create_default_context(cafile=ca))
c.login(user, password)
for op in ops:
    if op[0] == "append":
        typ, data = c.append('"%s"' % op[1], None, None, open(op[2], "rb").read())
        assert typ == "OK", data
        print("ok")
    elif op[0] == "count":
        typ, data = c.status('"%s"' % op[1], "(MESSAGES)")
        print(data[0].decode().split("MESSAGES ")[1].rstrip(")") if typ == "OK" else -1)
    elif op[0] == "uidvalidity":
        typ, data = c.status('"%s"' % op[1], "(UIDVALIDITY)")
        print(data[0].decode().split("UIDVALIDITY ")[1].rstrip(")"))
    elif op[0] == "capability":
        typ, data = c.capability()
        print(data[0].decode())
    elif op[0] == "flags":
        typ, data = c.select('"%s"' % op[1], readonly=True)
        assert typ == "OK", data
        typ, data = c.fetch("1:*", "(FLAGS)") if int(data[0]) else ("OK", [])
        flags = [re.search(r"FLAGS \(([^)]*)\)", d.decode()).group(1).split() for d in data if d]
        print(" ".join("(%s)" % " ".join(f for f in fs if f != "\\Recent") for fs in flags))
    elif op[0] in ("create", "delete"):
        typ, data = getattr(c, op[0])('"%s"' % op[1])
        assert typ == "OK", data
        print("ok")
    sys.stdout.flush()
c.logout()
"#;
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(script).arg(self.port.to_string()).arg(&self.ca).arg(user).arg(PASSWORD);
        let input = serde_json::to_vec(ops).expect("json");
        let out = run_with_stdin(cmd, &input);
        assert!(out.status.success(), "imaplib: {}\n{}", String::from_utf8_lossy(&out.stderr), self.log());
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }

    /// Delivers `message` into `mailbox` of `user`, as the provider's MTA would.
    pub fn append(&self, user: &str, mailbox: &str, message: &[u8]) {
        let f = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(f.path(), message).expect("write");
        self.imap(user, &[vec!["append".into(), mailbox.into(), f.path().display().to_string()]]);
    }

    /// Messages in `mailbox` of `user` (-1: it does not exist).
    pub fn count(&self, user: &str, mailbox: &str) -> i64 {
        self.imap(user, &[vec!["count".into(), mailbox.into()]])[0].parse().expect("count")
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An `[[ingest.imap]]` entry (an inline table) for `user` on `dovecot`.
pub fn mailbox_config(dovecot: &Dovecot, user: &str, password_file: &Path, extra: &str) -> String {
    format!(
        "{{ server = \"localhost\", port = {}, ca_file = \"{}\", user = \"{user}\", password_file = \"{}\"{extra} }}",
        dovecot.port,
        dovecot.ca.display(),
        password_file.display()
    )
}

/// An empty mail from `from` to `to` as the provider's final MTA leaves it.
pub fn empty_mail(from: &str, to: &str) -> Vec<u8> {
    format!("Return-Path: <{from}>\r\nDelivered-To: {to}\r\nFrom: {from}\r\nTo: {to}\r\nSubject: \r\n\r\n").into_bytes()
}
