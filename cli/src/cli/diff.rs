//! `dea diff A B`: how two droplets differ, entry by entry, for finding what made a staging
//! unreproducible. Exits like `diff`: 0 when they are the same, 1 when they differ, 2 when
//! they could not be read.

use dea::droplet::{DiffLimits, DropletDiff, diff_droplets, droplet_digests};
use std::path::{Path, PathBuf};

/// What `dea diff` takes.
#[derive(clap::Args)]
pub struct DiffArgs {
    pub first: PathBuf,
    pub second: PathBuf,
}

/// Compares, prints the report and exits with `diff`'s status.
pub fn run(args: &DiffArgs) -> ! {
    match compare(&args.first, &args.second) {
        Ok(None) => std::process::exit(0),
        Ok(Some(report)) => {
            print!("{report}");
            std::process::exit(1)
        }
        Err(error) => {
            eprintln!("dea diff: {error}");
            std::process::exit(2)
        }
    }
}

/// `None` when the two droplets are byte for byte the same, else the report of how they
/// differ (never empty: droplets whose entries agree still differ in their bytes).
pub fn compare(first: &Path, second: &Path) -> anyhow::Result<Option<String>> {
    if droplet_digests(first)? == droplet_digests(second)? {
        return Ok(None);
    }
    let diff = diff_droplets(first, second, DiffLimits::default())?;
    Ok(Some(report(&diff, first, second)))
}

/// The report, naming the droplets as the user did.
pub fn report(diff: &DropletDiff, first: &Path, second: &Path) -> String {
    if diff.is_empty() {
        // Same entries, same order: the difference is in the tar headers' other fields or
        // in the compression.
        return "the entries are the same; the archives differ in their encoding \
                (tar header fields or compression)\n"
            .to_string();
    }
    diff.report(&first.display().to_string(), &second.display().to_string())
}
