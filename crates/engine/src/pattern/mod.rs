//! Behaviour patterns: declared in files, compiled to state machines, run per visitor.
//!
//! - [`spec`]: the TOML pattern format and its validation (errors name file, line and field).
//! - [`machine`]: the compiled [`Pattern`] (an `enum`/`match` state machine) and its semantics.
//! - [`detect`]: the detection operator — per-visitor matches over every active pattern,
//!   deterministic offers, the transition log.
//! - [`PatternSet`] / [`PatternRegistry`]: the active patterns, swapped atomically on reload.

pub mod detect;
pub mod machine;
pub mod plain;
pub mod spec;

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub use detect::{DetectOperator, Offer, TransitionLog, TransitionRecord};
pub use machine::{OfferContent, Pattern};
pub use plain::Profile;
pub use spec::{Catalogue, check_values, compile_pattern, parse_pattern};

/// A pattern file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PatternError {
    /// The file.
    pub file: String,
    /// 1-based line (0 when it concerns the whole file: then no position is shown).
    pub line: usize,
    /// 1-based column, in characters (0 when unknown).
    pub column: usize,
    /// The field, as a path (`transition[2].when.category`); empty for syntax errors.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (0, _) => write!(f, "{}: ", self.file)?,
            (line, 0) => write!(f, "{}:{line}: ", self.file)?,
            (line, column) => write!(f, "{}:{line}:{column}: ", self.file)?,
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Errors of a whole load: every bad file is reported, not just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PatternErrors(pub Vec<PatternError>);

impl fmt::Display for PatternErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Sorts errors into file order and drops repeats (a step of `repeat = 3` compiles its
/// condition three times).
pub(crate) fn sort_errors(errors: &mut Vec<PatternError>) {
    errors.sort_by(|a, b| {
        (a.line, a.column, &a.field, &a.message).cmp(&(b.line, b.column, &b.field, &b.message))
    });
    errors.dedup();
}

/// A set of patterns with unique names, sorted by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PatternSet {
    patterns: Vec<Arc<Pattern>>,
    /// Per pattern, the position of the first pattern with an equal audience.
    audience_of: Vec<usize>,
    /// Whether a pattern has a `session` condition.
    uses_sessions: bool,
}

impl PatternSet {
    /// A set of already-compiled patterns; duplicate names are an error.
    pub fn new(mut patterns: Vec<Pattern>) -> Result<Self, PatternErrors> {
        patterns.sort_by(|a, b| a.name.cmp(&b.name));
        let errors: Vec<PatternError> = patterns
            .windows(2)
            .filter(|w| w[0].name == w[1].name)
            .map(|w| PatternError {
                file: w[1].source.clone(),
                line: 0,
                column: 0,
                field: "name".to_owned(),
                message: format!(
                    "pattern name {:?} is also used by {}",
                    w[1].name, w[0].source
                ),
            })
            .collect();
        if !errors.is_empty() {
            return Err(PatternErrors(errors));
        }
        let audience_of = (0..patterns.len())
            .map(|i| {
                (0..=i)
                    .find(|&j| patterns[j].audience == patterns[i].audience)
                    .expect("a pattern's audience equals itself")
            })
            .collect();
        Ok(PatternSet {
            uses_sessions: patterns.iter().any(Pattern::uses_session),
            patterns: patterns.into_iter().map(Arc::new).collect(),
            audience_of,
        })
    }

    /// Parses `(file name, text)` pairs, reporting every error.
    pub fn parse<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, PatternErrors> {
        let mut patterns = Vec::new();
        let mut errors = Vec::new();
        for (file, text) in files {
            match compile_pattern(file, text) {
                Ok(p) => patterns.push(p),
                Err(e) => errors.extend(e.0),
            }
        }
        if !errors.is_empty() {
            return Err(PatternErrors(errors));
        }
        Self::new(patterns)
    }

    /// Loads a pattern file, or every `*.toml` file of a directory.
    pub fn load(path: &Path) -> Result<Self, PatternErrors> {
        let files = pattern_files(path).map_err(|e| io_errors(path, e))?;
        let mut texts = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).map_err(|e| io_errors(file, e))?;
            texts.push((file.display().to_string(), text));
        }
        Self::parse(texts.iter().map(|(f, t)| (f.as_str(), t.as_str())))
    }

    /// Loads like [`PatternSet::load`], and also checks every value against what exists
    /// ([`check_values`]: categories, products, device classes, offers with a picture). Reports
    /// every error of every file (a file that cannot be read names its path, without a line).
    /// This is what `clickpulse patterns check` runs; the live pipeline only compiles.
    pub fn check(path: &Path, catalogue: &Catalogue) -> Result<Self, PatternErrors> {
        let files = pattern_files(path).map_err(|e| io_errors(path, e))?;
        let mut errors = Vec::new();
        let mut patterns = Vec::new();
        for file in &files {
            let display = file.display().to_string();
            let text = match std::fs::read_to_string(file) {
                Ok(text) => text,
                Err(e) => {
                    errors.extend(io_errors(file, e).0);
                    continue;
                }
            };
            let compiled = compile_pattern(&display, &text);
            let mut found = match compiled {
                Ok(p) => {
                    patterns.push(p);
                    Vec::new()
                }
                Err(e) => e.0,
            };
            found.extend(check_values(&display, &text, catalogue));
            sort_errors(&mut found);
            errors.extend(found);
        }
        if !errors.is_empty() {
            return Err(PatternErrors(errors));
        }
        Self::new(patterns)
    }

    /// The patterns, by name.
    pub fn patterns(&self) -> &[Arc<Pattern>] {
        &self.patterns
    }

    /// For the pattern at `index` of [`PatternSet::patterns`], the position of the first pattern
    /// whose audience is the same condition: patterns sharing an audience (the two seed patterns
    /// do) need it evaluated once per view.
    pub fn audience_of(&self, index: usize) -> usize {
        self.audience_of[index]
    }

    /// Whether a pattern asks about visitors' sessions (`session = { .. }` conditions).
    pub fn uses_sessions(&self) -> bool {
        self.uses_sessions
    }

    /// The pattern called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Pattern>> {
        self.patterns.iter().find(|p| p.name == name)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

/// Names, sizes and modification times of the `*.toml` files at `path`: changes when any file
/// does (what the directory watchers poll).
pub fn dir_fingerprint(path: &Path) -> String {
    let mut out = String::new();
    for file in pattern_files(path).unwrap_or_default() {
        let meta = std::fs::metadata(&file).ok();
        let modified = meta.as_ref().and_then(|m| m.modified().ok());
        out.push_str(&format!(
            "{}:{:?}:{:?};",
            file.display(),
            meta.map(|m| m.len()),
            modified
        ));
    }
    out
}

/// The pattern files at `path`: the file itself, or a directory's `*.toml` files sorted by name.
pub fn pattern_files(path: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    if !path.is_dir() {
        std::fs::metadata(path)?;
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<_> = std::fs::read_dir(path)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// The active pattern set, shared between the detector and whoever reloads it.
pub type PatternRegistry = Registry<PatternSet>;

/// A value shared between the stages that use it and whoever reloads it (the active patterns,
/// the active funnels): swapped whole, with a generation that changes on every swap.
#[derive(Debug)]
pub struct Registry<T> {
    inner: Arc<(RwLock<Arc<T>>, AtomicU64)>,
}

impl<T> Clone for Registry<T> {
    fn clone(&self) -> Self {
        Registry {
            inner: self.inner.clone(),
        }
    }
}

impl<T: Default> Default for Registry<T> {
    fn default() -> Self {
        Registry::new(T::default())
    }
}

impl<T> Registry<T> {
    /// A registry holding `value`.
    pub fn new(value: T) -> Self {
        Registry {
            inner: Arc::new((RwLock::new(Arc::new(value)), AtomicU64::new(1))),
        }
    }

    /// The active value.
    pub fn current(&self) -> Arc<T> {
        self.inner.0.read().expect("registry lock").clone()
    }

    /// Bumped on every replacement.
    pub fn generation(&self) -> u64 {
        self.inner.1.load(Ordering::Acquire)
    }

    /// Replaces the active value.
    pub fn replace(&self, value: T) {
        *self.inner.0.write().expect("registry lock") = Arc::new(value);
        self.inner.1.fetch_add(1, Ordering::AcqRel);
    }
}

/// A directory of pattern files: the live source of truth that hot reload watches and the
/// admin API writes to.
#[derive(Debug, Clone)]
pub struct PatternDir {
    dir: std::path::PathBuf,
}

impl PatternDir {
    /// The directory `dir` (created if missing).
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(PatternDir {
            dir: dir.to_owned(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Loads every pattern file.
    pub fn load(&self) -> Result<PatternSet, PatternErrors> {
        PatternSet::load(&self.dir)
    }

    /// Names, sizes and modification times of the files: changes when any file does.
    pub fn fingerprint(&self) -> String {
        dir_fingerprint(&self.dir)
    }

    fn file_for(&self, name: &str) -> Result<std::path::PathBuf, PatternErrors> {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            return Err(PatternErrors(vec![PatternError {
                file: name.to_owned(),
                line: 0,
                column: 0,
                field: "name".to_owned(),
                message: "pattern names use only a-z, 0-9, - and _".to_owned(),
            }]));
        }
        Ok(self.dir.join(format!("{name}.toml")))
    }

    /// Validates `text` as pattern `name` together with the other files, then writes it
    /// atomically (temporary file + rename). Returns the new set; on error nothing is written.
    pub fn write(&self, name: &str, text: &str) -> Result<PatternSet, PatternErrors> {
        let path = self.file_for(name)?;
        let display = path.display().to_string();
        let pattern = compile_pattern(&display, text)?;
        if pattern.name != name {
            let (line, column) = spec::key_position(text, "name").unwrap_or((0, 0));
            return Err(PatternErrors(vec![PatternError {
                file: display,
                line,
                column,
                field: "name".to_owned(),
                message: format!(
                    "the file declares name {:?}, but is stored as {name:?}",
                    pattern.name
                ),
            }]));
        }
        let mut files = Vec::new();
        for file in pattern_files(&self.dir).map_err(|e| io_errors(&self.dir, e))? {
            if file != path {
                let text = std::fs::read_to_string(&file).map_err(|e| io_errors(&file, e))?;
                files.push((file.display().to_string(), text));
            }
        }
        files.push((display.clone(), text.to_owned()));
        let set = PatternSet::parse(files.iter().map(|(f, t)| (f.as_str(), t.as_str())))?;
        let tmp = self.dir.join(format!(".{name}.toml.tmp"));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| io_errors(&path, e))?;
        Ok(set)
    }

    /// [`PatternDir::write`] after checking every value of `text` against `catalogue`
    /// ([`check_values`]): what the admin API's PUT should call, so a pattern naming a category,
    /// product, device class or offer that does not exist is rejected with all its errors.
    pub fn write_checked(
        &self,
        name: &str,
        text: &str,
        catalogue: &Catalogue,
    ) -> Result<PatternSet, PatternErrors> {
        let path = self.file_for(name)?;
        let display = path.display().to_string();
        let mut errors = match compile_pattern(&display, text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        };
        errors.extend(check_values(&display, text, catalogue));
        if !errors.is_empty() {
            sort_errors(&mut errors);
            return Err(PatternErrors(errors));
        }
        self.write(name, text)
    }

    /// Deletes pattern `name`. Returns the remaining set.
    pub fn delete(&self, name: &str) -> Result<PatternSet, PatternErrors> {
        let path = self.file_for(name)?;
        std::fs::remove_file(&path).map_err(|e| io_errors(&path, e))?;
        self.load()
    }
}

fn io_errors(path: &Path, e: std::io::Error) -> PatternErrors {
    PatternErrors(vec![PatternError {
        file: path.display().to_string(),
        line: 0,
        column: 0,
        field: String::new(),
        message: e.to_string(),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOES: &str = "name = \"shoes\"\n[offer]\ndefault = \"offer1\"\n[[step]]\nwhen = { category = \"shoes\" }\n";

    #[test]
    fn write_checked_rejects_unknown_values_and_keeps_the_old_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PatternDir::new(tmp.path()).unwrap();
        let catalogue = Catalogue {
            categories: vec!["shoes".into()],
            products: Vec::new(),
            offers: vec!["offer1".into()],
            images: Vec::new(),
        };
        assert_eq!(
            dir.write_checked("shoes", SHOES, &catalogue)
                .unwrap()
                .patterns()
                .len(),
            1
        );
        let bad = SHOES
            .replace("\"shoes\" }", "\"shoez\" }")
            .replace("offer1", "offer9");
        let errors = dir.write_checked("shoes", &bad, &catalogue).unwrap_err();
        assert_eq!(errors.0.len(), 2, "{errors}");
        assert!(
            errors.0.iter().all(|e| e.line > 0 && e.column > 0),
            "{errors}"
        );
        let text = std::fs::read_to_string(tmp.path().join("shoes.toml")).unwrap();
        assert_eq!(text, SHOES, "old file kept");
        // The live path does not need the catalogue.
        assert!(dir.write("shoes", &bad).is_ok());

        // A file stored under another name than it declares: the error points at the name.
        let e = dir.write("boots", SHOES).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "boots.toml:1:8: name: the file declares name \"shoes\", but is stored as \"boots\""
            ),
            "{e}"
        );
        // An error about a whole file shows no line.
        let e = PatternSet::load(&tmp.path().join("gone.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gone.toml: No such file") && !e.contains(":0"),
            "{e}"
        );
    }
}
