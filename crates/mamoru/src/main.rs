//! The `mamoru` command: parse arguments, load the configuration, set up
//! logging, run the chosen command, turn its result into an exit code. The
//! work happens in the library crates; see docs/ARCHITECTURE.md.

mod admin;
mod cli;
mod data;
mod ingest;
mod init;
mod ops;
mod serve;
mod setup;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // The pipe command has its own exit-code contract (0 or 75, never
        // anything else) and handles every error and panic itself.
        Command::Ingest(args) => ingest::main(cli.config.as_deref(), args),
        Command::Init(args) => report(init::run(args)),
        Command::Serve => report(setup::load(cli.config.as_deref()).and_then(serve::serve)),
        Command::Relay => report(setup::load(cli.config.as_deref()).and_then(serve::relay_only)),
        Command::Queue(args) => report(setup::load(cli.config.as_deref()).and_then(|c| serve::queue(c, args))),
        Command::Backup(args) => report(setup::load(cli.config.as_deref()).and_then(|c| data::backup(c, args))),
        Command::Store(cmd) => report(setup::load(cli.config.as_deref()).and_then(|c| data::store(c, cmd))),
        Command::Subscribers(cmd) => report(setup::load(cli.config.as_deref()).and_then(|c| data::subscribers(c, cmd))),
        Command::Admin(cmd) => report(setup::load(cli.config.as_deref()).and_then(|c| admin::run(c, cmd))),
        Command::Alert(cmd) => report(setup::load(cli.config.as_deref()).and_then(|c| admin::alert(c, cmd))),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mamoru: {e:#}");
            ExitCode::FAILURE
        }
    }
}
