//! `dea sbom DROPLET`: the droplet's bill of materials as tables (buildpacks, downloads),
//! read from its `sbom.cdx.json` without unpacking anything.

use anyhow::{Context, Result};
use dea::sbom::Dependencies;
use std::path::Path;

/// Prints the bill of materials of the droplet at `droplet`.
pub fn run(droplet: &Path) -> Result<()> {
    let bom = dea::sbom::read::from_droplet(droplet)?;
    let deps = bom
        .dependencies()
        .with_context(|| format!("droplet {}", droplet.display()))?;
    print!("{}", render(&deps));
    Ok(())
}

/// The first 12 hex digits: enough to tell digests apart by eye.
fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// Rows as left-aligned columns, two spaces apart (the last column unpadded).
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn render(deps: &Dependencies) -> String {
    let mut out = format!(
        "app:    sha256 {} (of the {})\nstack:  {}\npinned: {}{}\n\n",
        deps.app.sha256,
        match deps.app.digest_of {
            dea::sbom::DigestOf::File => "source archive as received",
            dea::sbom::DigestOf::Tree => "source directory's tree",
        },
        deps.stack,
        if deps.fully_pinned {
            "every download"
        } else {
            "not every download"
        },
        if deps.pins_required {
            " (fetch.require_pins was on)"
        } else {
            ""
        },
    );
    let mut rows = vec![vec![
        "BUILDPACK".to_string(),
        "VERSION".into(),
        "KIND".into(),
        "SHA-256".into(),
        "OF".into(),
    ]];
    rows.extend(deps.buildpacks.iter().map(|bp| {
        vec![
            bp.id.clone(),
            bp.version.clone(),
            bp.kind.clone(),
            short(&bp.sha256).to_string(),
            bp.digest_of.as_str().to_string(),
        ]
    }));
    out.push_str(&table(&rows));
    out.push('\n');
    if deps.downloads.is_empty() {
        out.push_str("no downloads\n");
        return out;
    }
    let mut rows = vec![vec![
        "DOWNLOAD (asked -> used)".to_string(),
        "SHA-256".into(),
        "SIZE".into(),
        "BUILDPACK/PHASE".into(),
        "PINNED".into(),
    ]];
    rows.extend(deps.downloads.iter().map(|d| {
        let url = if d.url_asked == d.url_used {
            d.url_asked.clone()
        } else {
            format!("{} -> {}", d.url_asked, d.url_used)
        };
        vec![
            url,
            short(&d.sha256).to_string(),
            d.size.to_string(),
            format!("{}/{}", d.buildpack, d.phase),
            d.pinned_by.clone().unwrap_or_else(|| "no".into()),
        ]
    }));
    out.push_str(&table(&rows));
    out
}
