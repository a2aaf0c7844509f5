//! The configuration as the binary reads it: `clickpulse.toml` (the one type, in
//! [`clickpulse_components::config`]) with the command line's overrides applied, by one rule
//! for `demo` and `run`: flag > environment > file > default.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clickpulse_components::config::{self, Config};

use crate::cli::ConfigArgs;

/// The file (if any) with `args` applied, checked: every problem is in the error.
pub(crate) fn load(args: &ConfigArgs) -> Result<Config> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the configuration {}", path.display()))?;
            match config::check(&path.display().to_string(), &text) {
                (Some(config), errors) if errors.is_empty() => config,
                (_, errors) => bail!("{}", errors.join("\n")),
            }
        }
        None => Config::default(),
    };
    apply(args, &mut config);
    let problems = config::problems(&config);
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(config)
}

/// Sets every field a flag (or its environment variable) gives.
fn apply(args: &ConfigArgs, config: &mut Config) {
    fn set<T: Clone>(field: &mut T, flag: &Option<T>) {
        if let Some(value) = flag {
            *field = value.clone();
        }
    }
    fn set_some<T: Clone>(field: &mut Option<T>, flag: &Option<T>) {
        if flag.is_some() {
            field.clone_from(flag);
        }
    }
    fn extend<T: Clone>(field: &mut Vec<T>, flag: &[T]) {
        if !flag.is_empty() {
            *field = flag.to_vec();
        }
    }
    let (pipeline, replay, web, embedded) = (
        &mut config.pipeline,
        &mut config.replay,
        &mut config.web,
        &mut config.embedded,
    );
    set_some(&mut embedded.data_dir, &args.data_dir);
    set(&mut embedded.partitions, &args.partitions);
    set(&mut embedded.sync_interval_ms, &args.sync_interval_ms);
    set(&mut embedded.retention, &args.retention);
    set(&mut web.listen, &args.listen);
    if let Some(speed) = args.speed {
        replay.speed = speed.to_string();
    }
    replay.loop_forever |= args.loop_forever;
    replay.original_time |= args.original_time;
    set(&mut replay.interactions, &args.interactions);
    extend(&mut replay.logs, &args.logs);
    set(&mut pipeline.batch_size, &args.batch_size);
    set(&mut pipeline.allowed_lateness_ms, &args.allowed_lateness_ms);
    set_some(&mut pipeline.idle_timeout_ms, &args.idle_timeout_ms);
    set(&mut pipeline.max_dashboard_keys, &args.max_dashboard_keys);
    set_some(&mut pipeline.patterns, &args.patterns);
    set_some(&mut pipeline.funnels, &args.funnels);
    set_some(&mut pipeline.alerts, &args.alerts);
    extend(&mut web.cors_origins, &args.cors_origins);
    set_some(&mut web.viewer_token, &args.viewer_token);
    set(&mut web.time_zone, &args.time_zone);
    set(&mut web.shop_tracker, &args.shop_tracker);
    extend(&mut web.segment_write_keys, &args.segment_write_keys);
    set(&mut web.collect_rate, &args.collect_rate);
    extend(&mut web.trusted_proxies, &args.trusted_proxies);
    set(&mut web.collector_queue, &args.collector_queue);
    set_some(&mut web.admin_token, &args.admin_token);
    set(&mut web.instance, &args.web_instance);
}

/// `clickpulse config check FILE`: every problem at once, or what the file configures.
pub(crate) fn check(args: crate::cli::ConfigCheckArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.path)
        .with_context(|| format!("cannot read the configuration {}", args.path.display()))?;
    let file = args.path.display().to_string();
    match config::check(&file, &text) {
        (Some(config), errors) if errors.is_empty() => {
            println!(
                "{file}: OK — brokers {}, {} partitions, redis {}, web on {}, time zone {}",
                config.kafka.brokers,
                config.kafka.partitions,
                redact_url(&config.redis.url),
                config.web.listen,
                config.web.time_zone
            );
            for (_, summary) in config.sources.summaries() {
                println!("{file}: {summary}");
            }
            println!("{file}: {}", config.webhooks.summary());
            Ok(ExitCode::SUCCESS)
        }
        (_, errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s) in {file}", errors.len());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// A URL without its password (`redis://:secret@host` → `redis://:***@host`).
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        config: ConfigArgs,
    }

    fn args(argv: &[&str]) -> ConfigArgs {
        Args::try_parse_from(std::iter::once("clickpulse").chain(argv.iter().copied()))
            .unwrap()
            .config
    }

    #[test]
    fn a_flag_wins_over_the_file_which_wins_over_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[pipeline]\nbatch_size = 7\nallowed_lateness_ms = 5\n[web]\ncollect_rate = 9\n",
        )
        .unwrap();
        let p = path.display().to_string();
        let config = load(&args(&["--config", &p, "--batch-size", "3"])).unwrap();
        assert_eq!(config.pipeline.batch_size, 3, "flag over file");
        assert_eq!(config.pipeline.allowed_lateness_ms, 5, "file over default");
        assert_eq!(config.web.collect_rate, 9);
        assert_eq!(config.web.collector_queue, 50_000, "default");
        let config = load(&args(&[])).unwrap();
        assert_eq!(config.pipeline.batch_size, 10_000);
    }

    #[test]
    fn an_override_is_checked_like_the_file() {
        let error = load(&args(&["--batch-size", "0"])).unwrap_err();
        assert!(
            format!("{error:#}").contains("pipeline.batch_size must be at least 1"),
            "{error:#}"
        );
    }

    #[test]
    fn every_example_config_loads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let config = load(&ConfigArgs {
                    config: Some(path.clone()),
                    ..ConfigArgs::default()
                })
                .unwrap_or_else(|e| panic!("{e:#}"));
                if path.ends_with("redis-cluster.toml") {
                    assert!(config.redis.cluster);
                }
                checked += 1;
            }
        }
        assert!(checked >= 4);
    }

    #[test]
    fn the_example_config_is_a_valid_config_with_the_defaults() {
        let text = include_str!("../config/clickpulse.example.toml");
        let (config, errors) = clickpulse_components::config::check("example.toml", text);
        assert_eq!(errors, Vec::<String>::new());
        let config = config.expect("the example parses");
        assert_eq!(
            config.web.collect_rate,
            clickpulse_components::config::DEFAULT_COLLECT_RATE
        );
        assert!(config.web.trusted_proxies.is_empty());
        // It shows every option at its default.
        let default = Config::default();
        assert_eq!(config.pipeline.batch_size, default.pipeline.batch_size);
        assert_eq!(
            config.pipeline.idle_timeout_ms,
            default.pipeline.idle_timeout_ms
        );
        assert_eq!(
            config.pipeline.max_dashboard_keys,
            default.pipeline.max_dashboard_keys
        );
        assert_eq!(config.web.collector_queue, default.web.collector_queue);
        assert_eq!(config.embedded.partitions, default.embedded.partitions);
        assert_eq!(config.embedded.retention, default.embedded.retention);
        assert_eq!(
            config.embedded.sync_interval_ms,
            default.embedded.sync_interval_ms
        );
        assert_eq!(config.kafka, default.kafka);
    }

    #[test]
    fn unknown_options_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[redis]\nurl = \"redis://x\"\nclustr = true\n").unwrap();
        let error = format!(
            "{:#}",
            load(&ConfigArgs {
                config: Some(path),
                ..ConfigArgs::default()
            })
            .unwrap_err()
        );
        assert!(error.contains("unknown field `clustr`"), "{error}");
    }
}
