//! End-to-end tests of the `mamoru` binary with real peers over loopback.

mod support;

mod alerts;
mod browser;
mod cli;
mod crash;
mod dovecot;
mod fuzz_checks;
mod fuzz_smoke;
mod hostile;
mod hostile_load;
mod imap;
mod limits;
mod nodes;
mod operations;
mod pipe;
mod reception;
mod postfix;
mod serve;
mod store_copy;
mod selfservice;
mod subscribers;
mod transports;
