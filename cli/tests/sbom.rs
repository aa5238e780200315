//! `dea sbom DROPLET` and `dea fetch --pin URL...` as an operator uses them.

mod common;

use common::{root, text};
use dea::sbom::cyclonedx::Bom;
use dea::sbom::{AppSource, BuildpackUsed, Dependencies, DigestOf, Download};
use sha2::Digest;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};

fn dea(base: &Path, args: &[&str]) -> Output {
    assert!(
        root()
            .join("target/buildpacks/staticfile/buildpack.wasm")
            .is_file(),
        "run scripts/build-plugins first"
    );
    Command::new(env!("CARGO_BIN_EXE_dea"))
        .current_dir(root())
        .arg("--base-dir")
        .arg(base.join("state"))
        .args(args)
        .output()
        .expect("dea runs")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A `.tgz` holding `files` as regular files.
fn tgz(path: &Path, files: &[(&str, &[u8])]) {
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).expect("create"),
        flate2::Compression::fast(),
    );
    let mut builder = tar::Builder::new(gz);
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, *content)
            .expect("append");
    }
    builder.into_inner().expect("tar").finish().expect("gzip");
}

#[test]
fn sbom_prints_the_buildpacks_and_downloads_of_a_droplet() {
    let base = tempfile::tempdir().expect("tempdir");
    let droplet = base.path().join("droplet.tgz");
    let droplet_arg = droplet.display().to_string();
    let out = dea(
        base.path(),
        &[
            "--buildpacks",
            "target/buildpacks",
            "stage",
            "examples/static-site",
            "-o",
            &droplet_arg,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = dea(base.path(), &["sbom", &droplet_arg]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let component = std::fs::read(root().join("target/buildpacks/staticfile/buildpack.wasm"))
        .expect("component");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("staticfile "))
        .unwrap_or_else(|| panic!("no buildpack row in\n{stdout}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[2], "wasm", "{row}");
    assert_eq!(cells[3], &sha256_hex(&component)[..12], "{row}");
    assert!(stdout.contains("no downloads"), "{stdout}");

    // A droplet with downloads (its bill of materials written as the agent writes it).
    let deps = Dependencies {
        app: AppSource {
            sha256: "ab".repeat(32),
            digest_of: DigestOf::File,
        },
        stack: "cflinuxfs4".into(),
        buildpacks: vec![BuildpackUsed {
            id: "node".into(),
            version: "1.2.3".into(),
            kind: "wasm".into(),
            sha256: "cd".repeat(32),
            digest_of: DigestOf::File,
        }],
        downloads: vec![Download {
            buildpack: "node".into(),
            phase: "compile".into(),
            url_asked: "https://up.example/node.tgz".into(),
            url_used: "http://mirror.example/node.tgz".into(),
            sha256: "ef".repeat(32),
            size: 4242,
            pinned: true,
            pinned_by: Some("fetch.pins".into()),
        }],
        pins_required: true,
        fully_pinned: true,
    };
    let json = Bom::new(&deps, "0.1.0", None).to_json();
    let made = base.path().join("made.tgz");
    tgz(
        &made,
        &[
            ("./app/big", &vec![0u8; 100_000]),
            ("./sbom.cdx.json", &json),
        ],
    );
    let out = dea(base.path(), &["sbom", &made.display().to_string()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let row = stdout
        .lines()
        .find(|l| l.starts_with("https://up.example/node.tgz"))
        .unwrap_or_else(|| panic!("no download row in\n{stdout}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "https://up.example/node.tgz",
            "->",
            "http://mirror.example/node.tgz",
            "efefefefefef",
            "4242",
            "node/compile",
            "fetch.pins"
        ]
    );
    assert!(stdout.contains("fetch.require_pins was on"), "{stdout}");

    // A droplet without one says so, and nothing is unpacked.
    let bare = base.path().join("bare.tgz");
    tgz(&bare, &[("./staging_info.yml", b"detected_buildpack: x\n")]);
    let out = dea(base.path(), &["sbom", &bare.display().to_string()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("has no sbom.cdx.json"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn fetch_pin_prints_pins_that_load_with_the_right_digest() {
    let body = b"a runtime, pinned".to_vec();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let served = body.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                served.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&served);
        }
    });
    let base = tempfile::tempdir().expect("tempdir");
    let url = format!("http://127.0.0.1:{port}/rt.tgz");
    let allow = format!("  allow: [\"http://127.0.0.1:{port}/\"]\n  require_pins: true\n");
    let config = base.path().join("dea.yml");
    std::fs::write(&config, format!("fetch:\n{allow}")).expect("config");
    let config_arg = config.display().to_string();
    let pin = |config: &str| {
        dea(
            base.path(),
            &[
                "--config",
                config,
                "--buildpacks",
                "target/buildpacks",
                "fetch",
                "--pin",
                &url,
            ],
        )
    };
    let out = pin(&config_arg);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let line = format!("    \"{url}\": {}", sha256_hex(&body));
    assert!(stdout.contains(&line), "{stdout}");

    // What it printed is a config that loads, the pin in place.
    let pasted = base.path().join("pasted.yml");
    std::fs::write(&pasted, format!("{stdout}{allow}")).expect("config");
    let pasted_arg = pasted.display().to_string();
    let out = pin(&pasted_arg);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&line));
}
