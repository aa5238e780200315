//! `dea` with classic buildpacks as a user runs it: paths relative to where they stand, a
//! buildpack directory holding a broken buildpack, and a failure said once (on stderr).

mod common;

use common::{root, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `dea ARGS` run from `cwd`, with its state under `cwd/state` (given relatively, too).
fn dea_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dea"))
        .current_dir(cwd)
        .env("RUST_BACKTRACE", "0")
        .env_remove("DEA_CONFIG")
        .env_remove("DEA_BASE_DIR")
        .args(["--base-dir", "state"])
        .args(args)
        .output()
        .expect("dea runs")
}

/// stdout and stderr, for messages; each checked free of terminal colour codes.
fn both(out: &Output) -> String {
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        !all.contains('\u{1b}'),
        "colour codes in the output:\n{all}"
    );
    all
}

/// `cwd/buildpacks` holding copies of `tests/classic/<name>` (modes kept).
fn buildpacks_dir(cwd: &Path, names: &[&str]) -> PathBuf {
    let dir = cwd.join("buildpacks");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for name in names {
        let status = Command::new("cp")
            .arg("-a")
            .arg(root().join("tests/classic").join(name))
            .arg(dir.join(name))
            .status()
            .expect("cp");
        assert!(status.success());
    }
    dir
}

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

#[test]
fn relative_paths_work_for_detect_and_stage() {
    let cwd = tempfile::tempdir().expect("tempdir");
    buildpacks_dir(cwd.path(), &["hello"]);
    write(&cwd.path().join("app/hello.txt"), "hi");

    // Classic detect mounts the app itself: runc once took "app" relative to its bundle.
    let out = dea_in(cwd.path(), &["--buildpacks", "buildpacks", "detect", "app"]);
    let all = both(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(text(&out.stdout), "Hello (buildpack hello 1.2.3)\n");

    let out = dea_in(
        cwd.path(),
        &[
            "stage",
            "app",
            "-o",
            "out/droplet.tgz",
            "--cache",
            "cache",
            "--buildpack",
            "buildpacks/hello",
        ],
    );
    let all = both(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("-----> Hello app detected"), "{all}");
    assert!(cwd.path().join("out/droplet.tgz").is_file(), "{all}");
    assert!(cwd.path().join("cache/last-build").is_file(), "{all}");
    assert!(cwd.path().join("state/staging").is_dir(), "{all}");
}

#[test]
fn a_broken_buildpack_is_listed_as_skipped_and_staging_goes_on() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let dir = buildpacks_dir(cwd.path(), &["hello", "apt"]);
    write(&dir.join("broken/buildpack.toml"), "this is [not toml");

    let out = dea_in(cwd.path(), &["--buildpacks", "buildpacks", "buildpacks"]);
    let all = both(&out);
    assert!(out.status.success(), "{all}");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[1].starts_with("1") && lines[1].contains("apt") && lines[1].contains("classic"),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("2") && lines[2].contains("hello") && lines[2].contains("1.2.3"),
        "{stdout}"
    );
    assert_eq!(
        lines[3],
        format!("skipped {}:", dir.join("broken").display()),
        "{stdout}"
    );
    assert!(
        lines[4].contains("invalid manifest") && lines[4].contains("TOML parse error"),
        "{stdout}"
    );

    write(&cwd.path().join("app/hello.txt"), "hi");
    let out = dea_in(
        cwd.path(),
        &["--buildpacks", "buildpacks", "stage", "app", "-o", "d.tgz"],
    );
    let all = both(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("-----> Detected Hello"), "{all}");
    // The operator's log says what was skipped, and why.
    assert!(
        text(&out.stderr).contains("skipping buildpack: invalid manifest"),
        "{all}"
    );
}

#[test]
fn a_failed_staging_is_reported_once_with_its_cf_error_type() {
    let cwd = tempfile::tempdir().expect("tempdir");
    buildpacks_dir(cwd.path(), &["hello"]);
    write(&cwd.path().join("app/index.php"), "<?php");
    for (args, expected) in [
        (
            vec!["--buildpacks", "buildpacks", "stage", "app"],
            "Staging failed (NoAppDetectedError): An application could not be detected by any available buildpack",
        ),
        (
            vec!["stage", "app", "--buildpack", "buildpacks/hello"],
            "Staging failed (NoAppDetectedError): App not compatible with buildpack: hello",
        ),
        // Before the staging log exists.
        (
            vec![
                "stage",
                "app",
                "--buildpack",
                "buildpacks/hello",
                "--stack",
                "nope",
            ],
            "Staging failed (StagingError): Stack nope does not exist",
        ),
    ] {
        let out = dea_in(cwd.path(), &args);
        let all = both(&out);
        assert_eq!(out.status.code(), Some(1), "{all}");
        assert_eq!(all.matches("Staging failed").count(), 1, "{args:?}:\n{all}");
        // On stderr, where a script looks for errors; the log before it on stdout.
        assert!(text(&out.stderr).contains(expected), "{args:?}:\n{all}");
        let logged = text(&out.stdout).contains("-----> Downloaded app package");
        assert_eq!(logged, !args.contains(&"nope"), "{args:?}:\n{all}");
    }
}
