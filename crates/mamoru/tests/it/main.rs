//! End-to-end tests of the `mamoru` binary with real peers over loopback.

mod support;

mod alerts;
mod browser;
mod cli;
mod crash;
mod hostile;
mod pipe;
mod postfix;
mod serve;
mod selfservice;
mod subscribers;
mod transports;
