//! A deliberately hostile buildpack for containment tests.
//!
//! `HOSTILE` (from the app's environment) picks the misbehaviour and `HOSTILE_PHASE` the phase
//! it happens in (default `detect`): `loop`, `sleep`, `memory`, `escape`, `output`, `log`,
//! `trap`, `exit`, `write-app` (write into the read-only app dir), `fetch-denied`, and
//! `rewrite-app` (what a compile may do to the app it was given: change `modified.txt` in
//! place, delete `deleted.txt`, put a directory where `replaced.txt` was, add `added.txt`).

use dea_sdk::{Buildpack, Context, Detection, Error, Release, log};
use std::hint::black_box;

struct Hostile;

fn misbehave(ctx: &Context, phase: &str) -> Result<(), Error> {
    if ctx.env("HOSTILE_PHASE").as_deref().unwrap_or("detect") != phase {
        return Ok(());
    }
    match ctx.env("HOSTILE").as_deref().unwrap_or("") {
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        "sleep" => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        "memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut chunk = Vec::new();
                chunk
                    .try_reserve_exact(black_box(16 << 20))
                    .map_err(|e| Error::Failed(format!("allocation refused: {e}")))?;
                chunk.resize(16 << 20, 1);
                hoard.push(black_box(chunk));
            }
        }
        "escape" => {
            // Every way out we can think of; each must fail inside the sandbox.
            let target = ctx
                .env("HOSTILE_TARGET")
                .unwrap_or_else(|| "/etc/dea-escaped".into());
            let attempts = [
                target.clone(),
                format!("/app/../{}", target.trim_start_matches('/')),
                "/app/../../escaped".to_string(),
                "../escaped".to_string(),
                "/escaped".to_string(),
            ];
            let mut wrote = Vec::new();
            for path in attempts {
                if std::fs::write(&path, b"escaped").is_ok() {
                    wrote.push(path);
                }
            }
            if wrote.is_empty() {
                Err(Error::Denied(
                    "every write outside the sandbox was refused".into(),
                ))
            } else {
                Err(Error::Failed(format!("wrote outside: {wrote:?}")))
            }
        }
        "output" => loop {
            println!("{}", "spam ".repeat(100));
        },
        "log" => loop {
            log::detail(&"flood ".repeat(100));
        },
        "trap" => {
            #[allow(clippy::unwrap_used)]
            let none: Option<u8> = black_box(None);
            let _ = none.unwrap();
            Ok(())
        }
        "exit" => std::process::exit(3),
        "write-app" => {
            std::fs::write("/app/written-by-detect", b"x")?;
            Ok(())
        }
        "rewrite-app" => {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open("/app/modified.txt")?
                .write_all(b"changed by compile\n")?;
            std::fs::remove_file("/app/deleted.txt")?;
            std::fs::remove_file("/app/replaced.txt")?;
            std::fs::create_dir("/app/replaced.txt")?;
            std::fs::write("/app/replaced.txt/inside", b"a directory now")?;
            std::fs::write("/app/added.txt", b"added by compile")?;
            Ok(())
        }
        "fetch-denied" => {
            ctx.fetch("https://not-allowed.invalid/x.tgz", None, "/tmp/x.tgz")?;
            Ok(())
        }
        "" => Ok(()),
        other => Err(Error::Failed(format!("unknown HOSTILE mode {other:?}"))),
    }
}

impl Buildpack for Hostile {
    fn detect(ctx: &Context) -> Result<Option<Detection>, Error> {
        misbehave(ctx, "detect")?;
        Ok(ctx.app_has("hostile").then(|| Detection::named("hostile")))
    }

    fn compile(ctx: &Context) -> Result<(), Error> {
        misbehave(ctx, "compile")
    }

    fn release(ctx: &Context) -> Result<Release, Error> {
        misbehave(ctx, "release")?;
        Ok(Release::web("true"))
    }
}

dea_sdk::export_buildpack!(Hostile);
