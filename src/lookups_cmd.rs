//! `clickpulse lookups load`: the lookup ingestion job.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clickpulse_connectors::distributed::RedisConfig;
use clickpulse_connectors::distributed::store::RedisStore;
use clickpulse_connectors::embedded::EmbeddedStore;
use tracing::info;

use crate::cli::LookupsLoadArgs;
use crate::inputs;

pub(crate) fn load(args: LookupsLoadArgs) -> Result<ExitCode> {
    let (lookups, report) = inputs::read_lookups(args.data.as_deref())?;
    if let Some(url) = args.redis {
        let config = RedisConfig {
            url: url.clone(),
            cluster: args.redis_cluster,
            ..RedisConfig::default()
        };
        let mut store = RedisStore::open(&config, None).context("invalid Redis URL")?;
        let (users, products) = store
            .save_lookups(&lookups)
            .with_context(|| format!("cannot load the lookups into {}", redact(&url)))?;
        info!(users, products, redis = %redact(&url), "Lookups loaded into Redis.");
        println!(
            "loaded {users} users ({} empty records skipped) and {products} products into {}",
            report.users_skipped,
            redact(&url)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let dir = inputs::data_dir(args.data_dir);
    let store = EmbeddedStore::open(&dir, &[])?;
    store.save_lookups(&lookups)?;
    info!(users = report.users, skipped = report.users_skipped, products = report.products, data_dir = %dir.display(), "Lookups loaded.");
    println!(
        "loaded {} users ({} empty records skipped) and {} products into {}",
        report.users,
        report.users_skipped,
        report.products,
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
