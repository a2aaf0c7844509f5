//! `clickpulse chaos`: fault injection that users can run themselves.
//!
//! The pipeline runs over a log as real child processes; [`clickpulse_chaos::deployment::run`]
//! kills them with `kill -9` at random (seeded) moments, restarts them, and when the log is
//! through compares what the pipeline delivered with an uninterrupted in-process backtest of the
//! same log: the set of offer ids delivered to the web stage, the events that reached the end of
//! the pipeline, duplicate offers, and the end-of-log dashboard snapshot. Any difference is a
//! non-zero exit. This module maps the arguments onto that run.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clickpulse_chaos::distributed::{DistributedDeployment, DistributedSpec};
use clickpulse_chaos::embedded::{EmbeddedDeployment, EmbeddedSpec};
use clickpulse_chaos::{Deployment, Plan, Reference, Tools};
use tracing::info;

use crate::cli::{BacktestArgs, ChaosArgs, ChaosMode};

pub(crate) fn run(args: ChaosArgs) -> Result<ExitCode> {
    if args.kills == 0 {
        bail!("--kills must be at least 1");
    }
    stop_children_on_signal();
    let work = tempfile::Builder::new()
        .prefix("clickpulse-chaos-")
        .tempdir_in(args.work_dir.clone().unwrap_or_else(std::env::temp_dir))
        .context("cannot create the chaos work dir")?;
    info!(work_dir = %work.path().display(), kills = args.kills, seed = args.seed, "Chaos run.");
    let reference = reference(&args)?;
    let plan = Plan {
        kills: args.kills,
        seed: args.seed,
        mean: mean_interval(&args),
        deadline: args.deadline,
    };
    let speed = reference.speed_for(plan.kills, plan.mean);
    let clickpulse = std::env::current_exe().context("cannot find the clickpulse binary")?;
    let mut deployment: Box<dyn Deployment> = match args.mode {
        ChaosMode::Embedded => Box::new(EmbeddedDeployment::new(
            EmbeddedSpec {
                clickpulse,
                logs: args.logs.clone(),
                patterns: args.patterns.clone(),
                speed,
                deadline: args.deadline,
                config: args.config.clone(),
            },
            work.path(),
        )),
        ChaosMode::Distributed => {
            if args.config.is_some() {
                anyhow::bail!(
                    "--config is for --mode embedded (a distributed run generates its own \
                     configuration)"
                );
            }
            let patterns = match &args.patterns {
                Some(p) => std::path::absolute(p)?,
                None => {
                    let dir = work.path().join("patterns");
                    crate::patterns_cmd::seed_patterns(
                        &clickpulse_engine::pattern::PatternDir::new(&dir)?,
                    )?;
                    dir
                }
            };
            let logs = args
                .logs
                .iter()
                .map(std::path::absolute)
                .collect::<Result<_, _>>()?;
            Box::new(DistributedDeployment::start(
                DistributedSpec {
                    tools: Tools::from_env(clickpulse),
                    logs,
                    patterns,
                    speed,
                    restart_broker: !args.skip_broker_restart,
                    deadline: args.deadline,
                },
                work.path(),
            )?)
        }
    };
    let outcome = clickpulse_chaos::deployment::run(&plan, &reference, deployment.as_mut(), speed);
    let report = match outcome {
        Ok(outcome) => outcome.report(&plan, &reference),
        Err(error) => {
            deployment.keep_logs();
            drop(deployment);
            let kept = work.keep();
            return Err(error).with_context(|| {
                format!("chaos: its data and logs are kept in {}", kept.display())
            });
        }
    };
    let ok = report["ok"].as_bool() == Some(true);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if ok {
        return Ok(ExitCode::SUCCESS);
    }
    deployment.keep_logs();
    drop(deployment);
    let kept = work.keep();
    let what = if report["unfinished"].is_null() {
        "the pipeline differs from the backtest"
    } else {
        "the pipeline did not finish within the deadline"
    };
    eprintln!(
        "chaos: {what}; its data and logs are kept in {}",
        kept.display()
    );
    Ok(ExitCode::FAILURE)
}

/// What an uninterrupted backtest of the log computes.
fn reference(args: &ChaosArgs) -> Result<Reference> {
    let (report, offers) = crate::backtest::backtest(&BacktestArgs {
        logs: args.logs.clone(),
        data: None,
        until: None,
        patterns: args.patterns.clone(),
        alerts: None,
        funnels: None,
        interactions: false,
        offers_out: None,
        json: true,
        dead_letters_out: None,
    })
    .context("the reference backtest failed")?;
    let first_event_ms = report.first_event_ms.unwrap_or(0);
    Ok(Reference {
        events: report.events,
        offers: offers.into_iter().map(|o| o.offer_id).collect(),
        dashboard: report.dashboard,
        first_event_ms,
        last_event_ms: report.last_event_ms.unwrap_or(first_event_ms),
    })
}

/// The mean life between kills, by mode: a restarted distributed worker first rejoins its
/// consumer group (the broker waits out the killed member's session).
fn mean_interval(args: &ChaosArgs) -> Duration {
    let default = match args.mode {
        ChaosMode::Embedded => 400,
        ChaosMode::Distributed => 3_000,
    };
    Duration::from_millis(args.mean_interval_ms.unwrap_or(default).max(1))
}

/// On Ctrl-C or SIGTERM: kill every process this run started, then exit 130 (without this they
/// would outlive the run: the drops that stop them do not run on a signal).
fn stop_children_on_signal() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(clickpulse_connectors::shutdown::signal());
        eprintln!("chaos: interrupted; stopping the processes it started");
        clickpulse_chaos::kill_all_children();
        std::process::exit(130);
    });
}
