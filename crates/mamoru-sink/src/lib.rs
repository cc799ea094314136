//! `mamoru-sink`: an SMTP sink that plays the Japanese mobile carriers, for
//! tests and benchmarks on loopback. It is a real SMTP server (no mocks):
//!
//! - per-domain connection caps and token-bucket rates, answering
//!   `421 4.7.0` and closing above them, as the carriers do;
//! - tighter carriers on demand: a cap of sessions open at once answered
//!   `421 4.7.0` at the greeting, a pace answered with `451 4.7.1` (the
//!   session goes on) instead of `421` and a close, and limits that change
//!   on a timer ([`policy::LimitChange`]);
//! - a configurable fraction of recipients are unknown (`550 5.1.1`), chosen
//!   by a stable hash of the address, and any local part starting with
//!   `unknown` is too;
//! - faults on demand by local part: `fail451…`/`fail452…` at RCPT,
//!   `echo550…`/`echo452…` at RCPT with the local part alone, upper-cased,
//!   in the reply (`550 5.1.1 User unknown: ECHO550.X`),
//!   `fail552…` after the data, `reset…` drops the connection after the final
//!   dot once per Message-ID (the message counts as received; the retry is
//!   accepted); throttle windows answer 421 for a domain for a while;
//! - records what it received: a message log (`MILLIS DOMAIN MESSAGE-ID` per
//!   received message) and a JSON stats file (counts per domain, per-second
//!   rates, concurrent connections, duplicates), rewritten every 200 ms;
//! - optionally STARTTLS (rustls, a certificate and key from PEM files) and
//!   AUTH PLAIN/LOGIN with configured accounts (MAIL refused before AUTH,
//!   AUTH refused before TLS when TLS is offered); each received message is
//!   recorded with whether it came over TLS and which user authenticated
//!   ([`server::Sink::deliveries`]).
//! - optionally a STARTTLS whose handshake fails on demand
//!   ([`server::HandshakeFault`]: hang up after the 220, garbage instead of
//!   a ServerHello, or no answer at all), counted as `tls_failures`;
//! - optionally TLS required: MAIL without it gets `530 5.7.0 Must issue a
//!   STARTTLS command first` (with a handshake fault: a server demanding
//!   the TLS it cannot set up).
//!
//! Layout: [`policy`] (limits and records, pure), [`session`] (the SMTP
//! dialogue, sans-I/O), [`server`] (tokio accept loop and files).

pub mod policy;
pub mod server;
pub mod session;
