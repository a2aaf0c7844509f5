//! `clickpulse lookups load`: the lookup ingestion job.

use std::process::ExitCode;

use anyhow::Result;
use clickpulse_connectors::embedded::EmbeddedStore;
use tracing::info;

use crate::cli::LookupsLoadArgs;
use crate::inputs;

pub(crate) fn load(args: LookupsLoadArgs) -> Result<ExitCode> {
    let dir = inputs::data_dir(args.data_dir);
    let (lookups, report) = inputs::read_lookups(args.data.as_deref())?;
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
