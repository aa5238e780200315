//! The generic fallback: any app whose `Procfile` has a `web:` entry.
//!
//! Nothing is installed; the app brings its own executable (a static binary, a script that
//! uses tools on the stack). Release reports every Procfile process type.

use dea_sdk::{Buildpack, Context, Detection, Error, Release, log, procfile};

struct Procfile;

impl Buildpack for Procfile {
    fn detect(ctx: &Context) -> Result<Option<Detection>, Error> {
        let web = ctx
            .read_app_file("Procfile")?
            .and_then(|text| procfile::web(&text));
        Ok(web.map(|_| Detection::named("procfile")))
    }

    fn compile(ctx: &Context) -> Result<(), Error> {
        let text = ctx.read_app_file("Procfile")?.unwrap_or_default();
        log::step("Using the app's Procfile");
        for (name, command) in procfile::parse(&text) {
            log::detail(&format!("{name}: {command}"));
        }
        Ok(())
    }

    fn release(ctx: &Context) -> Result<Release, Error> {
        let text = ctx.read_app_file("Procfile")?.unwrap_or_default();
        let mut release = Release::empty();
        release.process_types = procfile::parse(&text);
        Ok(release)
    }
}

dea_sdk::export_buildpack!(Procfile);
