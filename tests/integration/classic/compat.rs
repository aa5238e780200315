//! Classic buildpacks that behave like the public ones people use (a submodule of `classic`):
//! Heroku's own `buildpack.toml` beside `bin/`, config vars read from ENV_DIR, an archive's
//! buildpack first in a chain, an app that is its own buildpack, a stack check with curl
//! through a mirror, and a buildpack directory holding a broken buildpack.

use super::report;
use dea::buildpack::{Buildpack, BuildpackSet};
use dea::staging::StagingError;
use dea_tests::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// `tests/classic/<name>` copied (modes kept) to `into/<as_name>`.
fn copy_buildpack(name: &str, into: &Path, as_name: &str) -> PathBuf {
    let target = into.join(as_name);
    std::fs::create_dir_all(into).expect("mkdir");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(repo_root().join("tests/classic").join(name))
        .arg(&target)
        .status()
        .expect("cp runs");
    assert!(status.success(), "copying {name}");
    target
}

fn make_executable(paths: &[PathBuf]) {
    for path in paths {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

/// A `.tgz` of the buildpack `tests/classic/<name>` inside one top-level folder, as GitHub
/// serves a repository's archive.
fn archive_of(name: &str, top: &str) -> Vec<u8> {
    let dir = repo_root().join("tests/classic").join(name);
    let mut files: Vec<(String, String)> = Vec::new();
    for entry in ["buildpack.toml", "bin/detect", "bin/compile", "bin/release"] {
        if let Ok(text) = std::fs::read_to_string(dir.join(entry)) {
            files.push((format!("{top}/{entry}"), text));
        }
    }
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(path, text)| (path.as_str(), text.as_str()))
        .collect();
    make_tgz(&borrowed)
}

#[test]
fn heroku_buildpack_toml_never_makes_a_classic_buildpack_fail_to_load() {
    let apt = Buildpack::load(&repo_root().join("tests/classic/apt")).expect("apt loads");
    assert_eq!(apt.kind_name(), "classic");
    assert_eq!((apt.id.as_str(), apt.name.as_str()), ("apt", "Apt"));

    let base = tempfile::tempdir().expect("tempdir");
    // Not TOML at all, or a wasm-looking manifest naming a component that is not there:
    // with an executable bin/detect beside it, still a classic buildpack.
    for (name, manifest) in [
        ("junk", "this is [not toml"),
        (
            "wasm-looking",
            "[buildpack]\nid = \"x\"\nname = \"X\"\nversion = \"1\"\ncomponent = \"missing.wasm\"\n",
        ),
    ] {
        let dir = copy_buildpack("hello", base.path(), name);
        std::fs::write(dir.join("buildpack.toml"), manifest).expect("manifest");
        let bp = Buildpack::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(bp.kind_name(), "classic", "{name}");
        assert_eq!(bp.id, name);
    }
    // A Cloud Foundry buildpack may have no detect at all.
    let cf = base.path().join("supply-only");
    write_app(
        &cf,
        &[
            ("bin/supply", "#!/bin/sh\n"),
            ("bin/finalize", "#!/bin/sh\n"),
        ],
    );
    make_executable(&[cf.join("bin/supply"), cf.join("bin/finalize")]);
    assert_eq!(Buildpack::load(&cf).expect("loads").kind_name(), "cf");
}

#[tokio::test]
async fn a_broken_buildpack_is_skipped_and_the_others_still_stage() {
    let base = tempfile::tempdir().expect("tempdir");
    let dir = base.path().join("buildpacks");
    copy_buildpack("hello", &dir, "hello");
    copy_buildpack("apt", &dir, "apt");
    write_app(
        &dir,
        &[
            ("broken/buildpack.toml", "this is [not toml"),
            ("no-id/buildpack.toml", "[buildpack]\nname = \"No Id\"\n"),
        ],
    );
    // The same id in a later directory: the first is kept.
    let other = base.path().join("more");
    copy_buildpack("hello", &other, "hello");

    let set = BuildpackSet::discover(
        &[dir.clone(), other.clone()],
        &[],
        &base.path().join("unpacked"),
    )
    .expect("one broken buildpack does not fail discovery");
    let ids: Vec<&str> = set.iter().map(|bp| bp.id.as_str()).collect();
    assert_eq!(ids, ["apt", "hello"]);
    let skipped: Vec<(PathBuf, String)> = set
        .skipped()
        .iter()
        .map(|s| (s.path.clone(), s.reason.to_string()))
        .collect();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert_eq!(skipped[0].0, dir.join("broken"));
    assert!(skipped[0].1.contains("TOML parse error"), "{skipped:?}");
    assert_eq!(skipped[1].0, dir.join("no-id"));
    assert!(skipped[1].1.contains("missing field `id`"), "{skipped:?}");
    assert_eq!(skipped[2].0, other.join("hello"));
    assert!(
        skipped[2]
            .1
            .contains("another buildpack has the id \"hello\""),
        "{skipped:?}"
    );

    let stager = stager(test_config(base.path()), set.iter().cloned().collect());
    let app = base.path().join("app");
    write_app(&app, &[("hello.txt", "hi")]);
    let (result, log) = stage(&stager, request(&app, &base.path().join("d.tgz"))).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(staged.info.detected_buildpack, "Hello");
}

#[tokio::test]
async fn named_heroku_buildpacks_still_run_detect() {
    let base = tempfile::tempdir().expect("tempdir");
    let stager = stager(test_config(base.path()), vec![classic_buildpack("hello")]);
    let hello_app = base.path().join("hello-app");
    write_app(&hello_app, &[("hello.txt", "hi")]);
    let other_app = base.path().join("other-app");
    write_app(&other_app, &[("index.php", "<?php")]);

    // Detect's stdout names the app, as in detect mode.
    let mut req = request(&hello_app, &base.path().join("h.tgz"));
    req.buildpacks = vec!["hello".into()];
    let (result, log) = stage(&stager, req).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(staged.info.detected_buildpack, "Hello");
    assert_eq!(staged.info.buildpack_key, "hello");
    assert!(log.contains("-----> Hello app detected"), "{log}");

    // An app the buildpack does not support is not compiled.
    let mut req = request(&other_app, &base.path().join("o.tgz"));
    req.buildpacks = vec!["hello".into()];
    let (result, log) = stage(&stager, req).await;
    let error = result.expect_err("detect said no");
    assert!(
        matches!(&error, StagingError::NotCompatible { buildpack } if buildpack == "hello"),
        "{error:?}"
    );
    assert_eq!(error.cf_type().as_str(), "NoAppDetectedError");
    assert!(
        log.contains("no hello.txt here"),
        "detect's stderr is shown:\n{log}"
    );
    assert!(!log.contains("Hello compile"), "{log}");
    assert_eq!(
        log.matches("Staging failed").count(),
        1,
        "the failure is the log's last line, once:\n{log}"
    );
    assert!(
        log.trim_end().ends_with(
            "Staging failed (NoAppDetectedError): App not compatible with buildpack: hello"
        ),
        "{log}"
    );

    // Cloud Foundry mode skips detect for named buildpacks (`cf push -b`).
    let mut config = test_config(&base.path().join("cf"));
    config.classic.cloud_foundry = vec!["hello".into()];
    let cf = dea_tests::stager(config, vec![classic_buildpack("hello")]);
    let mut req = request(&other_app, &base.path().join("cf.tgz"));
    req.buildpacks = vec!["hello".into()];
    let (result, log) = stage(&cf, req).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(log.contains("Hello compile"), "{log}");
    assert_eq!(staged.info.detected_buildpack, "hello");
}

#[tokio::test]
async fn an_app_that_is_its_own_buildpack() {
    let base = tempfile::tempdir().expect("tempdir");
    let app = base.path().join("inline-app");
    write_app(
        &app,
        &[
            // As heroku-buildpack-inline: the app's own bin/ is the buildpack.
            (
                "bin/detect",
                "#!/bin/sh\n[ -x \"$1/bin/compile\" ] && echo InlineApp && exit 0\nexit 1\n",
            ),
            (
                "bin/compile",
                "#!/bin/sh\necho '-----> Building inline'\necho built > \"$1/built-inline.txt\"\n",
            ),
            (
                "bin/release",
                "#!/bin/sh\nprintf -- '---\\ndefault_process_types:\\n  web: bin/serve\\n'\n",
            ),
            (
                "bin/serve",
                "#!/bin/sh\nexec python3 -m http.server \"$PORT\"\n",
            ),
        ],
    );
    make_executable(&["detect", "compile", "release", "serve"].map(|s| app.join("bin").join(s)));
    let stager = stager(test_config(base.path()), Vec::new());
    let out = base.path().join("inline.tgz");
    let mut req = request(&app, &out);
    req.buildpacks = vec![app.display().to_string()];
    let (result, log) = stage(&stager, req).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(staged.info.detected_buildpack, "InlineApp");
    assert_eq!(staged.info.buildpack_key, "inline-app");
    assert_eq!(staged.info.start_command.as_deref(), Some("bin/serve"));
    assert_eq!(report(&out, "built-inline.txt").trim(), "built");
    assert!(log.contains("-----> InlineApp app detected"), "{log}");
}

#[tokio::test]
async fn an_archive_buildpack_first_in_a_chain_exports_to_the_next() {
    let base = tempfile::tempdir().expect("tempdir");
    // heroku-buildpack-apt as GitHub serves it: one top-level folder, Heroku's buildpack.toml.
    let archive = base.path().join("heroku-buildpack-apt.tgz");
    std::fs::write(&archive, archive_of("apt", "heroku-buildpack-apt-main")).expect("archive");
    let apt = Buildpack::load_archive(&archive, &base.path().join("unpacked"))
        .expect("an archive with Heroku's buildpack.toml loads");
    assert_eq!(apt.id, "heroku-buildpack-apt");
    assert_eq!(apt.name, "Apt");
    let stager = stager(
        test_config(base.path()),
        vec![
            classic_buildpack("reads-export"),
            classic_buildpack("monorepo"),
        ],
    );
    let archive_arg = archive.display().to_string();

    let app = base.path().join("app");
    write_app(&app, &[("Aptfile", "# tools\nfiglet\n\ncowsay\n")]);
    let out = base.path().join("apt.tgz");
    let mut req = request(&app, &out);
    req.buildpacks = vec![archive_arg.clone(), "reads-export".into()];
    let (result, log) = stage(&stager, req).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(
        report(&out, "apt-seen.txt"),
        "APT_PACKAGES=figlet cowsay\nfiglet from apt\ncowsay from apt\n"
    );
    assert!(droplet_file(&out, "./app/.profile.d/000_apt.sh").is_some());
    assert!(log.contains("-----> Apt app detected"), "{log}");
    assert!(log.contains("-----> Reads Export app detected"), "{log}");
    assert_eq!(staged.info.detected_buildpack, "Reads Export");

    // A repository holding several apps: monorepo (driven by the APP_BASE config var, a
    // file in ENV_DIR) moves one to the root; only then does apt's detect find its Aptfile.
    let repo = base.path().join("repo");
    write_app(
        &repo,
        &[
            ("README.md", "two apps"),
            ("services/api/Aptfile", "figlet\n"),
            ("services/api/Procfile", "web: ./api\n"),
            ("services/docs/index.html", "<p>docs</p>"),
        ],
    );
    let chain = vec![
        "monorepo".to_string(),
        archive_arg.clone(),
        "reads-export".into(),
    ];
    let out = base.path().join("mono.tgz");
    let mut req = request(&repo, &out);
    req.buildpacks = chain.clone();
    req.env = vec![("APP_BASE".into(), "services/api".into())];
    let (result, log) = stage(&stager, req).await;
    let staged = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(staged.info.start_command.as_deref(), Some("./api"));
    assert!(report(&out, "apt-seen.txt").contains("figlet from apt"));
    assert!(droplet_file(&out, "./app/README.md").is_none());
    assert!(droplet_file(&out, "./app/services/api/Aptfile").is_none());

    // APP_BASE naming the other app: apt's detect says no, after monorepo's compile.
    let mut req = request(&repo, &base.path().join("docs.tgz"));
    req.buildpacks = chain.clone();
    req.env = vec![("APP_BASE".into(), "services/docs".into())];
    let (result, log) = stage(&stager, req).await;
    let error = result.expect_err("apt does not support the docs app");
    assert_eq!(
        error.to_string(),
        "App not compatible with buildpack: heroku-buildpack-apt"
    );
    assert!(log.contains("Copying services/docs"), "{log}");

    // No APP_BASE at all: the buildpack's own clear message, and the staging stops there.
    let mut req = request(&repo, &base.path().join("none.tgz"));
    req.buildpacks = chain;
    let (result, log) = stage(&stager, req).await;
    let error = result.expect_err("APP_BASE is required");
    assert_eq!(error.cf_type().as_str(), "BuildpackCompileFailed");
    assert!(log.contains("APP_BASE was not set. Aborting"), "{log}");
    assert!(!log.contains("Apt app detected"), "{log}");
}

#[tokio::test]
async fn a_stack_checking_buildpack_downloads_its_stack_binary_through_a_mirror() {
    let base = tempfile::tempdir().expect("tempdir");
    let nginx =
        |stack: &str| make_tgz(&[("nginx", &format!("#!/bin/sh\necho nginx for {stack}\n"))]);
    let mirror = FileServer::start(vec![
        ("/nginx/heroku-22/nginx-heroku-22.tgz", nginx("heroku-22")),
        ("/nginx/heroku-24/nginx-heroku-24.tgz", nginx("heroku-24")),
    ])
    .await;
    let upstream = "https://heroku-buildpack-nginx.s3.us-east-1.amazonaws.com/";
    let mut config = test_config(base.path());
    config.stacks = vec!["heroku-22".into(), "heroku-24".into(), "cflinuxfs4".into()];
    config.fetch.mirrors = vec![dea::config::MirrorRule {
        from: upstream.into(),
        to: mirror.url("/nginx/"),
    }];
    let stager = stager(config.clone(), vec![classic_buildpack("nginx")]);
    let app = base.path().join("app");
    write_app(
        &app,
        &[
            ("config/nginx.conf.erb", "http { }"),
            ("index.html", "<p>hi</p>"),
        ],
    );

    // No stack in the request: the first configured one.
    for (stack, asked) in [("heroku-22", None), ("heroku-24", Some("heroku-24"))] {
        let out = base.path().join(format!("{stack}.tgz"));
        let mut req = request(&app, &out);
        req.stack = asked.map(str::to_string);
        let (result, log) = stage(&stager, req).await;
        let staged = result.unwrap_or_else(|e| panic!("{stack}: {e}\n{log}"));
        assert_eq!(
            report(&out, "bin/nginx"),
            format!("#!/bin/sh\necho nginx for {stack}\n")
        );
        // Taken relative to the buildpack's root: the working directory is the buildpack.
        assert!(report(&out, "bin/start-nginx").contains("exec bin/nginx"));
        assert!(log.contains(&format!("nginx for {stack}")), "{log}");
        assert!(
            log.contains(&format!(
                "fetch {upstream}{stack}/nginx-{stack}.tgz -> {}",
                mirror.url(&format!("/nginx/{stack}/nginx-{stack}.tgz"))
            )),
            "{log}"
        );
        assert_eq!(
            staged.info.start_command.as_deref(),
            Some("bin/start-nginx")
        );
        assert_eq!(mirror.hits(&format!("/nginx/{stack}/nginx-{stack}.tgz")), 1);
    }

    // A stack it does not support: its own message, nothing downloaded.
    let mut req = request(&app, &base.path().join("cf.tgz"));
    req.stack = Some("cflinuxfs4".into());
    let (result, log) = stage(&stager, req).await;
    let error = result.expect_err("cflinuxfs4 is not supported");
    assert_eq!(error.cf_type().as_str(), "BuildpackCompileFailed");
    assert!(
        log.contains("Stack cflinuxfs4 is not supported by this buildpack"),
        "{log}"
    );
    assert_eq!(mirror.total_hits(), 2);

    // A mirror that does not answer: the log says why, cause included, in plain text.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_url = format!("http://{}/", closed.local_addr().expect("addr"));
    drop(closed);
    let mut down = config;
    down.base_dir = base.path().join("down");
    down.fetch.mirrors[0].to = closed_url;
    let stager = dea_tests::stager(down, vec![classic_buildpack("nginx")]);
    let (result, log) = stage(&stager, request(&app, &base.path().join("down.tgz"))).await;
    result.expect_err("the mirror is down");
    assert!(log.to_lowercase().contains("connection refused"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in the build output:\n{log}"
    );
}

#[tokio::test]
async fn a_staging_that_runs_out_of_time_says_so_in_its_log() {
    let base = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(base.path());
    config.staging.max_staging_duration_secs = 3;
    let stager = stager(config, vec![classic_buildpack("hostile")]);
    let app = base.path().join("app");
    write_app(&app, &[("hostile.txt", "")]);
    let mut req = request(&app, &base.path().join("t.tgz"));
    req.env = vec![("MODE".into(), "timeout".into())];
    let (result, log) = stage(&stager, req).await;
    let error = result.expect_err("out of time");
    assert!(matches!(error, StagingError::Timeout(3)), "{error:?}");
    assert!(
        log.trim_end()
            .ends_with("Staging failed (StagingError): Staging timed out after 3 seconds"),
        "{log}"
    );
}
