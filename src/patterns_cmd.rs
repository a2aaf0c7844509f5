//! Pattern files for the commands: `clickpulse patterns check` (validate and explain them), the
//! catalogue they may name, and the seed patterns a new pattern directory starts with.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clickpulse_engine::lookups::Lookups;
use clickpulse_engine::pattern::{Catalogue, PatternDir, PatternSet};
use tracing::info;

use crate::bundled;
use crate::cli::PatternsCheckArgs;

/// The offers the shop has a popup picture for (`data/images/offers/*.png`, served by
/// [`offer_image`](clickpulse_server::static_files::offer_image)); a test keeps the list and the
/// folder equal.
pub(crate) const OFFERS_WITH_PICTURE: [&str; 2] = ["offer1", "offer2"];

/// What a pattern may name: the bundled catalogue's categories and products, and the offers the
/// shop can show.
pub(crate) fn bundled_catalogue() -> Result<Catalogue> {
    let mut lookups = Lookups::default();
    lookups.load_products_json("products.json", bundled::PRODUCTS_JSON)?;
    lookups.load_products_tsv("products.tsv", bundled::PRODUCTS_TSV)?;
    Ok(catalogue_of(&lookups))
}

/// What a pattern may name in a pipeline running with `lookups`: their categories and
/// products, the shop's own offers and the pictures this server serves.
pub(crate) fn catalogue_of(lookups: &Lookups) -> Catalogue {
    let offers = OFFERS_WITH_PICTURE
        .into_iter()
        .filter(|o| clickpulse_server::static_files::offer_image(o).is_some());
    Catalogue::from_lookups(lookups, offers)
        .with_images(clickpulse_server::static_files::image_paths())
}

/// Writes the bundled seed patterns into an empty, new pattern directory.
pub(crate) fn seed_patterns(dir: &PatternDir) -> Result<()> {
    let empty = std::fs::read_dir(dir.path())?.next().is_none();
    if empty {
        for (file, text) in bundled::PATTERNS {
            std::fs::write(dir.path().join(file), text)?;
        }
        info!(dir = %dir.path().display(), "Seed patterns written.");
    }
    Ok(())
}

pub(crate) fn check(args: PatternsCheckArgs) -> Result<ExitCode> {
    let catalogue = bundled_catalogue()?;
    match PatternSet::check(&args.path, &catalogue) {
        Ok(set) => {
            for p in set.patterns() {
                println!("{} (version {}, {})", p.name, p.version, p.source);
                println!("  {}", p.explain());
                println!("  Shoppers read: {}", p.in_plain_words());
                for (name, offer) in &p.offers {
                    println!("  Offer {name}: \"{}\"", offer.title);
                }
            }
            println!("{} pattern(s) OK", set.patterns().len());
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            let mut files: Vec<&str> = errors.0.iter().map(|e| e.file.as_str()).collect();
            files.sort_unstable();
            files.dedup();
            eprintln!("{} error(s) in {} file(s)", errors.0.len(), files.len());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The funnel directory `dir` (created, and seeded with the shop funnel when empty) and its
/// funnels, for the dashboard; `clickpulse_server::watch_funnels` keeps them current.
pub(crate) fn funnel_dir(
    dir: &std::path::Path,
) -> Result<clickpulse_engine::funnel::FunnelRegistry> {
    use clickpulse_engine::funnel::{DEFAULT_FUNNEL, FunnelRegistry, FunnelSet};
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the funnel directory {}", dir.display()))?;
    if std::fs::read_dir(dir)?.next().is_none() {
        std::fs::write(dir.join(DEFAULT_FUNNEL.0), DEFAULT_FUNNEL.1)?;
        info!(dir = %dir.display(), "Shop funnel written.");
    }
    let set = FunnelSet::load(dir)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("invalid funnels in {}", dir.display()))?;
    Ok(FunnelRegistry::new(set))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offers_with_a_picture_are_the_pictures_shipped() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data/images/offers");
        let mut shipped: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".png").map(str::to_owned)
            })
            .collect();
        shipped.sort();
        assert_eq!(shipped, OFFERS_WITH_PICTURE);
        assert_eq!(bundled_catalogue().unwrap().offers, OFFERS_WITH_PICTURE);
    }
}
