#!/usr/bin/env python3
"""Writes each fuzz target's seed corpus from fixtures/ into fuzz/corpus/TARGET.

Run by scripts/fuzz before the fuzzers start; the corpus directories are
work space (git-ignored), the fixtures are the source of truth.
"""
import email
import email.policy
import glob
import hashlib
import hmac
import base64
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "fixtures")


def files(pattern):
    return sorted(glob.glob(os.path.join(FIX, pattern)))


def read(path):
    with open(path, "rb") as f:
        return f.read()


def text_parts(raw, subtype):
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    out = []
    for part in msg.walk():
        if part.get_content_type() == f"text/{subtype}":
            try:
                out.append(part.get_content())
            except Exception:
                pass
    return msg, out


def seeds(target):
    # Inputs that once broke a property: kept as regression cases of their
    # target, so the test suite's smoke run replays them every time.
    for p in files(f"fuzz/{target}/*"):
        yield read(p)
    if target in ("classify", "iso2022jp", "mime", "dkim_headers"):
        for p in files("inbound/*.eml") + files("alerts/*.eml"):
            yield read(p)
    if target in ("dsn", "mime"):
        for p in files("bounces/*.eml"):
            yield read(p)
    if target == "lmtp":
        for p in files("inbound/*.eml")[:12]:
            body = read(p).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            body = body.replace(b"\r\n.", b"\r\n..")
            conv = (b"LHLO client.example\r\nMAIL FROM:<parent@docomo.ne.jp> SIZE=%d\r\n"
                    b"RCPT TO:<ans@mamoru.test>\r\nRCPT TO:<nobody@mamoru.test>\r\nDATA\r\n"
                    % len(body)) + body + b"\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n"
            for chunk in (0, 7, 63):
                yield bytes([chunk]) + conv
    if target in ("alert_format", "alert_post"):
        for p in files("alerts/*.eml"):
            raw = read(p)
            if target == "alert_post":
                yield raw
                continue
            msg, plain = text_parts(raw, "plain")
            subject = str(msg.get("subject", ""))
            for t in plain or [""]:
                yield (subject + "\n" + t).encode()
    if target == "html_to_text":
        for p in files("alerts/*.eml") + files("inbound/*.eml"):
            for h in text_parts(read(p), "html")[1]:
                yield h.encode()
        yield "<p>地区: 中央</p><!-- a > b --><a title=\"x>y\">本文</a>&#12354;&#x3042;&amp;".encode()
    if target == "token":
        key = bytes([7] * 32)
        for purpose in (1, 2, 3, 4):
            payload = bytes([1, purpose]) + struct.pack(">Q", 42) + bytes(range(8)) + struct.pack(">I", 2_000_000_000)
            tag = hmac.new(key, payload, hashlib.sha256).digest()[:16]
            yield base64.urlsafe_b64encode(payload + tag).rstrip(b"=")
    if target == "form":
        yield b"email=parent%40docomo.ne.jp"
        yield b"csrf=abc&d=1&d=3&d=10&title=%E4%B8%8D%E5%AF%A9&body=a+b%0D%0Ac"
        yield b"login=chuo&password=a+long+enough+password"
    if target == "config":
        yield read(os.path.join(ROOT, "crates/mamoru-core/src/template.toml"))
        yield b'domain = "city.example"\n[relay]\ntransport = "smtp://127.0.0.1:2525"\nsmtp_tls = "required"\n'
    if target == "csv_import":
        for p in files("csv/*.csv"):
            yield read(p)
        yield "email,districts\nparent@docomo.ne.jp,\"1,3\"\n".encode()
        yield "email,districts\r\nparent@docomo.ne.jp,中央\r\n".encode("cp932")
    if target == "dkim_headers":
        for p in files("alerts/*.eml")[:4]:
            yield (b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=city.example; s=sel; "
                   b"h=from:subject:date:message-id; bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=; b=AAAA\r\n") + read(p)
    if target == "escape":
        yield "本日15時ごろ <b>&amp; \"quoted\" 'single' ]]> \x01\x0b\x0c\u0085\ufffe".encode()
        for p in files("alerts/*.eml")[:4]:
            yield read(p)
    if target == "smtp_reply":
        for line in ("421 4.7.0 Too many connections", "451 4.7.1 Please slow down", "452 4.5.3 Too many recipients",
                     "550 5.1.1 <gone@docomo.ne.jp>: User unknown", "250-2.0.0 Ok", "421-mx.example busy\r\n421 again",
                     "450 4.2.2 Mailbox full", "554 Transaction failed"):
            yield line.encode()
    if target == "auth_results":
        yield b"mx.mamoru.test; dkim=pass (2048-bit key; unprotected) header.d=city.example header.i=@city.example header.b=abcd"
        yield b"mx.mamoru.test; dkim=fail reason=\"dkim=pass header.d=city.example\" header.d=evil.example"
        yield b"mx.google.com; dkim=pass header.i=@example.com header.s=s1 header.b=Xy; spf=pass (google.com: domain of a@example.com designates 1.2.3.4 as permitted sender) smtp.mailfrom=a@example.com; dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=example.com"
        yield b"mx.mamoru.test 1; none"


def main():
    out_root = sys.argv[1]
    for target in sys.argv[2:]:
        d = os.path.join(out_root, target)
        os.makedirs(d, exist_ok=True)
        n = 0
        for s in seeds(target):
            name = hashlib.sha1(s).hexdigest()
            with open(os.path.join(d, name), "wb") as f:
                f.write(s)
            n += 1
        print(f"{target}: {n} seeds")


if __name__ == "__main__":
    main()
