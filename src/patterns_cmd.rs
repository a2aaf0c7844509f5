//! `clickpulse patterns check`: validate pattern files and explain them.

use std::process::ExitCode;

use anyhow::Result;
use clickpulse_engine::pattern::PatternSet;

use crate::cli::PatternsCheckArgs;

pub(crate) fn check(args: PatternsCheckArgs) -> Result<ExitCode> {
    match PatternSet::load(&args.path) {
        Ok(set) => {
            for p in set.patterns() {
                println!("{} (version {}, {})", p.name, p.version, p.source);
                println!("  {}", p.explain());
            }
            println!("{} pattern(s) OK", set.patterns().len());
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s)", errors.0.len());
            Ok(ExitCode::FAILURE)
        }
    }
}
