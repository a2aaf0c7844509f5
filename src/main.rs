//! `clickpulse`: real-time clickstream analytics and behaviour-triggered personalization.
//!
//! The binary wires the workspace's crates together: `clickpulse-engine` (operators),
//! `clickpulse-connectors` (where records and state live) and `clickpulse-server` (HTTP).
//!
//! # Layout
//! - `cli`: the command line (clap derive), validated into plain values in one place.
//! - `bundled`: the real data shipped inside the binary (logs, lookups, images).
//! - `inputs`: reading logs and lookups from files or the bundled copies.
//! - `generate`: scale-test logs with the real log's statistics.
//! - `demo`: the embedded live pipeline with its HTTP server.
//! - `bench`: benchmarks that print figures; `bench_collector`: the HTTP load generator.
//! - `backtest`: the same operators over whole logs, as fast as possible.
//! - `lookups_cmd`: `clickpulse lookups load`.
//! - `patterns_cmd`: `clickpulse patterns check`.
//! - `run`: `clickpulse run`: stages of the distributed pipeline over Kafka and Redis.
//! - `status`: `clickpulse status` and `topics dump`: what a data dir holds (read-only).
//! - `verify`: `clickpulse verify`: checks a data dir end to end (read-only).
//! - `chaos`: `clickpulse chaos`: kill -9 fault injection compared with a backtest.

mod backtest;
mod bench;
mod bench_collector;
mod bundled;
mod chaos;
mod cli;
mod config;
mod demo;
mod generate;
mod inputs;
mod lookups_cmd;
mod patterns_cmd;
mod run;
mod status;
mod verify;
mod webhooks_cmd;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: per-event allocations (clicks, strings, window panes) dominate the profile with
/// the system allocator; mimalloc's thread-local free lists make them several times cheaper.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_tracing();
    let result = match cli.command {
        cli::Command::Demo(args) => demo::run(args),
        cli::Command::Backtest(args) => backtest::run(args),
        cli::Command::Bench(args) => bench::run(args),
        cli::Command::Generate(args) => generate::run(args),
        cli::Command::Status(args) => status::run(args),
        cli::Command::Verify(args) => verify::run(args),
        cli::Command::Topics(cli::TopicsCommand::Dump(args)) => status::dump(args),
        cli::Command::Patterns(cli::PatternsCommand::Check(args)) => patterns_cmd::check(args),
        cli::Command::Lookups(cli::LookupsCommand::Load(args)) => lookups_cmd::load(args),
        cli::Command::Run(args) => run::run(args),
        cli::Command::Config(cli::ConfigCommand::Check(args)) => config::check(args),
        cli::Command::Chaos(args) => chaos::run(args),
        cli::Command::Webhooks(cli::WebhooksCommand::Secret(args)) => webhooks_cmd::secret(args),
        cli::Command::Webhooks(cli::WebhooksCommand::Replay(args)) => webhooks_cmd::replay(*args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(log_colours(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_target(false)
        .init();
}

/// Whether the log on stderr is coloured: only on a terminal, and not when `NO_COLOR` is set
/// to anything but the empty string (<https://no-color.org>).
fn log_colours(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::log_colours;
    use std::ffi::OsStr;

    #[test]
    fn the_log_is_coloured_only_on_a_terminal_without_no_color() {
        assert!(log_colours(true, None));
        assert!(log_colours(true, Some(OsStr::new(""))));
        assert!(!log_colours(true, Some(OsStr::new("1"))));
        assert!(!log_colours(false, None));
        assert!(!log_colours(false, Some(OsStr::new("1"))));
    }
}
