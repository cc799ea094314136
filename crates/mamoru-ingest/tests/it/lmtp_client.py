#!/usr/bin/env python3
"""An independent LMTP client for mamoru's integration tests.

Usage: lmtp_client.py PORT SCENARIO

Drives the server with Python's smtplib.LMTP (or a raw socket for the
pipelining scenario) and prints one line per server reply, as
"<step> <code> <text>", so the Rust test can assert on the transcript.

smtplib.LMTP.data() reads only the first reply after the final dot; the
per-recipient replies that follow are read with getreply(), one per accepted
RCPT, as RFC 2033 says.
"""

import smtplib
import socket
import sys

TIMEOUT = 20
DOMAIN = "mamoru.test"


def out(step, code, text):
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    print(f"{step} {code} {' '.join(text.split())}", flush=True)


def connect(port):
    lmtp = smtplib.LMTP("127.0.0.1", port, local_hostname="client.test", timeout=TIMEOUT)
    code, text = lmtp.ehlo()  # LMTP.ehlo_msg is "lhlo"
    out("lhlo", code, text.splitlines()[0])
    for feature in ("pipelining", "enhancedstatuscodes", "8bitmime", "size"):
        if lmtp.has_extn(feature):
            print(f"feature {feature} {lmtp.esmtp_features[feature]}".rstrip(), flush=True)
    return lmtp


def data_replies(lmtp, step, message, accepted):
    code, text = lmtp.data(message)
    out(step, code, text)
    for _ in range(accepted - 1):
        code, text = lmtp.getreply()
        out(step, code, text)


MESSAGE = (
    "From: parent@example.org\r\n"
    f"To: ans@{DOMAIN}\r\n"
    "Subject: =?UTF-8?B?55m76Yyy?=\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=UTF-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "よろしくお願いします\r\n"
    ".a line that starts with a dot\r\n"
    ".\r\n"
    "end\r\n"
).encode("utf-8")


def multi(port):
    """Two accepted recipients (one stored, one transient) and an unknown one."""
    lmtp = connect(port)
    out("mail", *lmtp.mail("parent@example.org", ["BODY=8BITMIME"]))
    accepted = 0
    for rcpt in (f"stored@{DOMAIN}", f"unknown@{DOMAIN}", f"transient@{DOMAIN}"):
        code, text = lmtp.rcpt(rcpt)
        out("rcpt", code, text)
        accepted += code == 250
    data_replies(lmtp, "data", MESSAGE, accepted)
    out("quit", *lmtp.quit())


def size(port):
    """SIZE announced; a declared oversize refused at MAIL; an undeclared one after DATA."""
    lmtp = connect(port)
    limit = int(lmtp.esmtp_features["size"])
    out("mail-declared", *lmtp.mail("parent@example.org", [f"SIZE={limit + 1}"]))
    out("mail", *lmtp.mail("parent@example.org"))
    out("rcpt", *lmtp.rcpt(f"stored@{DOMAIN}"))
    out("rcpt", *lmtp.rcpt(f"drop@{DOMAIN}"))
    body = b"Subject: big\r\n\r\n" + (b"x" * 76 + b"\r\n") * (limit // 78 + 2)
    data_replies(lmtp, "data", body, 2)
    # The connection is still in step and usable.
    out("noop", *lmtp.noop())
    out("mail-fits", *lmtp.mail("parent@example.org", [f"SIZE={limit}"]))
    out("quit", *lmtp.quit())


def null_sender(port):
    """A bounce: MAIL FROM:<>."""
    lmtp = connect(port)
    out("mail", *lmtp.mail(""))
    out("rcpt", *lmtp.rcpt(f"stored@{DOMAIN}"))
    data_replies(lmtp, "data", b"Subject: bounce\r\n\r\nundeliverable\r\n", 1)
    out("quit", *lmtp.quit())


def pipelined(port):
    """Whole command groups in one write each, as PIPELINING allows."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    reader = sock.makefile("rb")

    def reply(step):
        while True:
            line = reader.readline()
            if not line:
                raise SystemExit(f"connection closed during {step}")
            out(step, line[:3].decode(), line[4:].strip())
            if line[3:4] != b"-":
                return

    reply("greeting")
    sock.sendall(
        b"LHLO client.test\r\n"
        b"MAIL FROM:<parent@example.org>\r\n"
        + f"RCPT TO:<stored@{DOMAIN}>\r\n".encode()
        + f"RCPT TO:<unknown@{DOMAIN}>\r\n".encode()
        + f"RCPT TO:<transient@{DOMAIN}>\r\n".encode()
        + b"DATA\r\n"
    )
    for step in ("lhlo", "mail", "rcpt", "rcpt", "rcpt", "data"):
        reply(step)
    sock.sendall(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nMAIL FROM:<>\r\nRSET\r\nQUIT\r\n")
    for step in ("dot", "dot", "mail", "rset", "quit"):
        reply(step)
    sock.close()


if __name__ == "__main__":
    port, scenario = int(sys.argv[1]), sys.argv[2]
    {"multi": multi, "size": size, "null_sender": null_sender, "pipelined": pipelined}[scenario](port)
