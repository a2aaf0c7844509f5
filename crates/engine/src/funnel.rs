//! Live funnels: steps a visitor takes in order within one session (product view → add to cart
//! → checkout → purchase), declared in TOML files like patterns (`docs/funnels.md`) and counted
//! by the dashboard's shop windows ([`crate::window::shop`]).
//!
//! A step's `when` is a pattern condition ([`crate::pattern::machine::Condition`]). Whether an
//! event meets each step is decided when the aggregate takes it (the conditions read the
//! enriched event: category, device, audience fields), as one bit per step in [`Hits`]; the
//! shop windows then advance each session's progress when the watermark releases the event.
//! A session reaches step `k + 1` with an event after the one that reached step `k`, one step
//! per event.

use std::path::Path;
use std::sync::Arc;

use crate::click::EnrichedRef;
use crate::pattern::machine::Condition;
use crate::pattern::spec::compile_funnel;
use crate::pattern::{PatternError, PatternErrors, Registry, pattern_files};

/// The most steps of a funnel.
pub const MAX_STEPS: usize = 8;
/// The most funnels active at once (each step is a bit of [`Hits`]).
pub const MAX_FUNNELS: usize = 8;

/// Which steps of which funnels an event meets: bit `funnel * MAX_STEPS + step`.
pub type Hits = u64;

/// The funnel shipped with Clickpulse (`funnels/shop.toml`).
pub const DEFAULT_FUNNEL: (&str, &str) = ("shop.toml", include_str!("../../../funnels/shop.toml"));

/// One funnel.
#[derive(Debug, Clone, PartialEq)]
pub struct Funnel {
    /// Its name (a-z, 0-9, `-`, `_`).
    pub name: String,
    /// What it shows, in words.
    pub description: String,
    /// Its steps, in order.
    pub steps: Vec<FunnelStep>,
    /// The file it was read from.
    pub source: String,
}

/// One step of a funnel.
#[derive(Debug, Clone, PartialEq)]
pub struct FunnelStep {
    /// Its name, as the dashboard shows it.
    pub name: String,
    /// What an event must be to reach it.
    pub when: Condition,
    /// The types `when` can hold for (`None`: it may hold for any), checked first: most events
    /// are page views, which the later steps of a shop funnel never take.
    pub types: Option<Vec<crate::event::EventType>>,
}

/// The active funnels, by name, with a fingerprint of their definitions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FunnelSet {
    funnels: Vec<Arc<Funnel>>,
    /// A hash of the files' texts: tells events evaluated under another set apart.
    fingerprint: u64,
}

/// The active funnels, shared between the aggregate and the directory watcher.
pub type FunnelRegistry = Registry<FunnelSet>;

impl FunnelSet {
    /// Parses `(file name, text)` pairs, reporting every error (and duplicate names, and more
    /// than [`MAX_FUNNELS`]).
    pub fn parse<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, PatternErrors> {
        let mut funnels: Vec<Funnel> = Vec::new();
        let mut errors = Vec::new();
        let mut hash = xxhash_rust::xxh3::Xxh3::new();
        for (file, text) in files {
            hash.update(file.as_bytes());
            hash.update(&[0]);
            hash.update(text.as_bytes());
            match compile_funnel(file, text) {
                Ok(f) => funnels.push(f),
                Err(e) => errors.extend(e.0),
            }
        }
        funnels.sort_by(|a, b| a.name.cmp(&b.name));
        for w in funnels.windows(2).filter(|w| w[0].name == w[1].name) {
            errors.push(whole_file(
                &w[1].source,
                "name",
                format!(
                    "funnel name {:?} is also used by {}",
                    w[1].name, w[0].source
                ),
            ));
        }
        if funnels.len() > MAX_FUNNELS {
            errors.push(whole_file(
                &funnels[MAX_FUNNELS].source,
                "",
                format!("at most {MAX_FUNNELS} funnels can be active at once"),
            ));
        }
        if !errors.is_empty() {
            return Err(PatternErrors(errors));
        }
        Ok(FunnelSet {
            funnels: funnels.into_iter().map(Arc::new).collect(),
            fingerprint: hash.digest(),
        })
    }

    /// Loads a funnel file, or every `*.toml` file of a directory (none: no funnels).
    pub fn load(path: &Path) -> Result<Self, PatternErrors> {
        let files = pattern_files(path).map_err(|e| {
            PatternErrors(vec![whole_file(
                &path.display().to_string(),
                "",
                e.to_string(),
            )])
        })?;
        let mut texts = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).map_err(|e| {
                PatternErrors(vec![whole_file(
                    &file.display().to_string(),
                    "",
                    e.to_string(),
                )])
            })?;
            texts.push((file.display().to_string(), text));
        }
        Self::parse(texts.iter().map(|(f, t)| (f.as_str(), t.as_str())))
    }

    /// The shipped funnel alone.
    pub fn default_set() -> Self {
        Self::parse([DEFAULT_FUNNEL]).expect("the shipped funnel compiles (tested)")
    }

    /// The funnels, by name.
    pub fn funnels(&self) -> &[Arc<Funnel>] {
        &self.funnels
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.funnels.is_empty()
    }

    /// A hash of the definitions.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Which steps `click` meets.
    pub fn hits(&self, click: &EnrichedRef<'_>) -> Hits {
        let mut hits = 0;
        for (f, funnel) in self.funnels.iter().enumerate() {
            for (s, step) in funnel.steps.iter().enumerate() {
                if step
                    .types
                    .as_ref()
                    .is_some_and(|t| !t.contains(click.event))
                {
                    continue;
                }
                if step.when.eval(click, None) {
                    hits |= 1 << (f * MAX_STEPS + s);
                }
            }
        }
        hits
    }
}

/// Whether `hits` says step `step` of funnel `funnel` was met.
pub fn hit(hits: Hits, funnel: usize, step: usize) -> bool {
    hits & (1 << (funnel * MAX_STEPS + step)) != 0
}

fn whole_file(file: &str, field: &str, message: String) -> PatternError {
    PatternError {
        file: file.to_owned(),
        line: 0,
        column: 0,
        field: field.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_funnel_compiles_to_four_steps() {
        let set = FunnelSet::default_set();
        let shop = &set.funnels()[0];
        assert_eq!(shop.name, "shop");
        let names: Vec<&str> = shop.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["Product view", "Add to cart", "Checkout", "Purchase"]
        );
    }

    #[test]
    fn bad_funnels_are_reported_with_file_line_and_field() {
        let err = FunnelSet::parse([(
            "f.toml",
            "name = \"Bad Name\"\n[[step]]\nname = \"a\"\nwhen = { colour = \"red\" }\n",
        )])
        .unwrap_err()
        .to_string();
        assert!(err.contains("f.toml:1:8: name: must be non-empty"), "{err}");
        assert!(err.contains("step[0].when.colour"), "{err}");
        assert!(err.contains("2 to 8 [[step]] tables"), "{err}");
        let twice =
            "name = \"x\"\n[[step]]\nname = \"a\"\nwhen = {}\n[[step]]\nname = \"b\"\nwhen = {}\n";
        let err = FunnelSet::parse([("a.toml", twice), ("b.toml", twice)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("funnel name \"x\" is also used by a.toml"),
            "{err}"
        );
    }
}
