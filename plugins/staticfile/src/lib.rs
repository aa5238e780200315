//! Serves a directory of static files.
//!
//! Detects an app with an `index.html` at its root, or a `Staticfile` (whose optional
//! `root: <dir>` line names the directory to serve). Serving uses Python's built-in HTTP
//! server, which the default stack has, so compile installs nothing.

use dea_sdk::{Buildpack, Context, Detection, Error, Release, log};

struct Staticfile;

/// The directory to serve, relative to the app: `root:` from the Staticfile, else `.`.
fn web_root(ctx: &Context) -> Result<String, Error> {
    let root = ctx
        .read_app_file("Staticfile")?
        .and_then(|text| {
            text.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "root").then(|| value.trim().to_string())
            })
        })
        .filter(|root| !root.is_empty())
        .unwrap_or_else(|| ".".to_string());
    if root.starts_with('/') || root.split('/').any(|part| part == "..") {
        return Err(Error::Failed(format!(
            "Staticfile root {root:?} must be a directory inside the app"
        )));
    }
    Ok(root)
}

impl Buildpack for Staticfile {
    fn detect(ctx: &Context) -> Result<Option<Detection>, Error> {
        Ok((ctx.app_has("Staticfile") || ctx.app_has("index.html"))
            .then(|| Detection::named("staticfile")))
    }

    fn compile(ctx: &Context) -> Result<(), Error> {
        let root = web_root(ctx)?;
        if !ctx.app_path(&root).is_dir() {
            return Err(Error::Failed(format!(
                "the web root {root:?} named in the Staticfile does not exist"
            )));
        }
        log::step("Setting up static file server");
        let files = std::fs::read_dir(ctx.app_path(&root))?.count();
        log::detail(&format!("serving {files} entries from {root}"));
        Ok(())
    }

    fn release(ctx: &Context) -> Result<Release, Error> {
        let root = web_root(ctx)?;
        Ok(Release::web(format!(
            "python3 -m http.server \"$PORT\" --bind 0.0.0.0 --directory {root}"
        )))
    }
}

dea_sdk::export_buildpack!(Staticfile);
