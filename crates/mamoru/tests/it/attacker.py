#!/usr/bin/env python3
"""A stranger attacking a running `mamoru serve` for a bounded time, from
loopback addresses of its own (127.0.0.2 and up), with independent clients
(raw sockets, smtplib.LMTP, http.client):

- 1,100 idle connections to the web listener and 1,100 to LMTP;
- slow clients: web headers a byte at a time, an LMTP DATA dripping;
- messages of thousands of nested MIME parts to alert@, to a VERP bounce
  address and to ans@, and one with a huge header section;
- waves of concurrent wrong admin logins, for one ID and for many.

Prints "ready" once the floods are in place and every other attack has
gone round once (so the genuine traffic meets all of them at once), then at
the end one JSON line of what the server answered.
"""
import argparse
import http.client
import json
import resource
import smtplib
import socket
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("--web", required=True)
p.add_argument("--lmtp", required=True)
p.add_argument("--bounce", required=True, help="a valid VERP return path")
p.add_argument("--domain", required=True)
p.add_argument("--seconds", type=float, default=10)
args = p.parse_args()

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def hostport(s):
    h, _, port = s.rpartition(":")
    return h, int(port)


WEB, LMTP = hostport(args.web), hostport(args.lmtp)
DEADLINE = time.monotonic() + args.seconds
stats = {}
lock = threading.Lock()
rounds = {name: threading.Event() for name in ("slow_web", "slow_lmtp", "mime_bombs", "login_waves")}


def count(key, n=1):
    with lock:
        stats[key] = stats.get(key, 0) + n


def connect(addr, source, timeout=5):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(addr)
    return s


def idle_flood(name, addr, n=1100, source="127.0.0.2"):
    held = []
    for _ in range(n):
        try:
            held.append(connect(addr, source))
        except OSError:
            count(f"{name}_connect_failed")
    count(f"{name}_opened", len(held))
    return held


def still_open(name, socks):
    """Sockets the server has not closed (no EOF, no reset, no reply)."""
    alive = 0
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(4096)
            if data and not data.startswith(b"421"):
                alive += 1  # a greeting: held and answered
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
        s.close()
    count(f"{name}_still_open", alive)


def slow_web():
    socks = []
    for _ in range(20):
        try:
            s = connect(WEB, "127.0.0.3")
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        except OSError:
            count("slow_web_refused")
    while time.monotonic() < DEADLINE:
        for s in list(socks):
            try:
                s.sendall(b"X")
            except OSError:
                socks.remove(s)
                count("slow_web_closed_by_server")
        rounds["slow_web"].set()
        time.sleep(0.5)
    for s in socks:
        s.close()


def slow_lmtp():
    socks = []
    for _ in range(5):
        try:
            s = connect(LMTP, "127.0.0.3")
            s.recv(512)
            s.sendall(b"LHLO slow\r\nMAIL FROM:<x@example.net>\r\nRCPT TO:<ans@%s>\r\nDATA\r\n" % args.domain.encode())
            socks.append(s)
        except OSError:
            count("slow_lmtp_refused")
    while time.monotonic() < DEADLINE:
        for s in list(socks):
            try:
                s.sendall(b"a")
            except OSError:
                socks.remove(s)
        rounds["slow_lmtp"].set()
        time.sleep(0.5)
    for s in socks:
        s.close()


def nested(depth):
    head = "From: staff@city.test\r\nTo: alert@%s\r\nSubject: nested\r\nMIME-Version: 1.0\r\n" % args.domain
    parts = []
    for i in range(depth):
        parts.append('Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i))
    return (head + "".join(parts) + "Content-Type: text/plain\r\n\r\nx\r\n").encode()


def lmtp_send(rcpt, message, source="127.0.0.4"):
    try:
        with smtplib.LMTP(LMTP[0], LMTP[1], source_address=(source, 0), timeout=30) as c:
            refused = c.sendmail("staff@city.test", [rcpt], message)
            count("lmtp_attack_refused" if refused else "lmtp_attack_accepted")
    except smtplib.SMTPResponseException as e:
        count(f"lmtp_attack_{e.smtp_code}")
    except (OSError, smtplib.SMTPException) as e:
        count("lmtp_attack_error:" + type(e).__name__)


def mime_bombs():
    bomb = nested(5000)
    huge = b"From: x@example.net\r\nTo: ans@" + args.domain.encode() + b"\r\n" + b"X-Pad: " + b"a" * 900_000 + b"\r\n"
    huge += b"".join(b"X-Many-%d: v\r\n" % i for i in range(20_000)) + b"\r\n\r\n"
    while time.monotonic() < DEADLINE:
        for rcpt in ("alert@" + args.domain, args.bounce, "ans@" + args.domain):
            lmtp_send(rcpt, bomb)
        lmtp_send("ans@" + args.domain, huge)
        rounds["mime_bombs"].set()


def login(loginid):
    try:
        c = http.client.HTTPConnection(WEB[0], WEB[1], timeout=60, source_address=("127.0.0.5", 0))
        body = "login=%s&password=wrong+password+here" % loginid
        c.request("POST", "/admin/login", body, {"Content-Type": "application/x-www-form-urlencoded"})
        count("login_%d" % c.getresponse().status)
        c.close()
    except OSError as e:
        count("login_error:" + type(e).__name__)


def login_waves():
    while time.monotonic() < DEADLINE:
        ts = [threading.Thread(target=login, args=("chuo",)) for _ in range(30)]
        ts += [threading.Thread(target=login, args=("id%d" % i,)) for i in range(40)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        rounds["login_waves"].set()


# 1,100 per listener, or what this process's descriptor limit leaves after
# a few hundred for the other attacks.
FLOOD = min(1100, max(100, (hard - 400) // 2))
stats["flood_per_listener"] = FLOOD
web_idle = idle_flood("web_idle", WEB, FLOOD)
lmtp_idle = idle_flood("lmtp_idle", LMTP, FLOOD)
workers = [threading.Thread(target=f) for f in (slow_web, slow_lmtp, mime_bombs, login_waves)]
for w in workers:
    w.start()
for name, first_round in rounds.items():
    if not first_round.wait(timeout=max(0, DEADLINE - time.monotonic())):
        count("first_round_missing:" + name)
print("ready", flush=True)
for w in workers:
    w.join()
still_open("web_idle", web_idle)
still_open("lmtp_idle", lmtp_idle)
print(json.dumps(stats, sort_keys=True), flush=True)
