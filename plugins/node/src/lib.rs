//! Node.js: installs a pinned Node.js runtime and runs the app with it.
//!
//! Detects `package.json`. Compile picks the highest runtime in `buildpack.toml` that matches
//! `engines.node` (or `NODE_VERSION`), downloads it through the host's `fetch` with the pinned
//! sha256 into `/app/.node` and puts it on `PATH` with a `.profile.d` script. The
//! host unpacks the runtime (keeping its modes) and caches the download for every staging.

use dea_sdk::{Buildpack, Context, Detection, Error, Release, log, profile_d};

struct Node;

/// The version constraint the app asks for: `NODE_VERSION`, else `engines.node`, else any.
fn requested_version(ctx: &Context) -> Result<String, Error> {
    if let Some(version) = ctx.env("NODE_VERSION") {
        return Ok(version);
    }
    let package = package_json(ctx)?;
    Ok(package
        .pointer("/engines/node")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string())
}

fn package_json(ctx: &Context) -> Result<serde_json::Value, Error> {
    let text = ctx.read_app_file("package.json")?.unwrap_or_default();
    serde_json::from_str(&text)
        .map_err(|e| Error::Failed(format!("package.json is not valid JSON: {e}")))
}

impl Buildpack for Node {
    fn detect(ctx: &Context) -> Result<Option<Detection>, Error> {
        Ok(ctx
            .app_has("package.json")
            .then(|| Detection::named("node.js")))
    }

    fn compile(ctx: &Context) -> Result<(), Error> {
        let manifest = ctx.manifest()?;
        let wanted = requested_version(ctx)?;
        let dependency = manifest.dependency("node", &wanted).ok_or_else(|| {
            Error::Unsupported(format!(
                "no Node.js version matching {wanted:?} in this buildpack (have: {})",
                manifest
                    .dependencies
                    .iter()
                    .map(|d| d.version.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        log::step(&format!("Installing node {}", dependency.version));

        let fetched = ctx.fetch_and_unpack(
            &dependency.uri,
            Some(&dependency.sha256),
            "/app/.node",
            dependency.strip_components as u32,
        )?;
        // Not whether the host's cache answered: the log ships in the droplet, which must
        // be the same either way.
        log::detail(&format!(
            "installed {} bytes from {}",
            fetched.size, fetched.url_used
        ));

        profile_d::write(
            "000_node",
            "export PATH=\"$HOME/.node/bin:$PATH\"\nexport NODE_HOME=\"$HOME/.node\"\n",
        )?;
        Ok(())
    }

    fn release(ctx: &Context) -> Result<Release, Error> {
        let package = package_json(ctx)?;
        let command = if package.pointer("/scripts/start").is_some() {
            "npm start".to_string()
        } else {
            let main = package
                .get("main")
                .and_then(|v| v.as_str())
                .unwrap_or("server.js");
            format!("node {main}")
        };
        Ok(Release::web(command).with_config_var("NODE_ENV", "production"))
    }
}

dea_sdk::export_buildpack!(Node);
