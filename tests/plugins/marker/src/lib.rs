//! A test buildpack whose detect looks for one file, named by its manifest-provided
//! `MARKER` variable (default `marker`). Used to install many distinct buildpacks for the
//! detect benchmark and ordering tests without building many components.

use dea_sdk::{Buildpack, Context, Detection, Error, Release, log};

struct Marker;

fn marker(ctx: &Context) -> String {
    ctx.env("DEA_BUILDPACK_MARKER")
        .unwrap_or_else(|| "marker".to_string())
}

impl Buildpack for Marker {
    fn detect(ctx: &Context) -> Result<Option<Detection>, Error> {
        let marker = marker(ctx);
        Ok(ctx
            .app_has(&marker)
            .then(|| Detection::named(format!("marker:{marker}"))))
    }

    fn compile(ctx: &Context) -> Result<(), Error> {
        log::step(&format!("marker {} compiling", marker(ctx)));
        std::fs::write(ctx.app_path("compiled-by-marker"), marker(ctx))?;
        Ok(())
    }

    fn release(_ctx: &Context) -> Result<Release, Error> {
        Ok(Release::web("./run-marker"))
    }
}

dea_sdk::export_buildpack!(Marker);
