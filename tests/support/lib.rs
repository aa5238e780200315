//! Shared pieces for the end-to-end tests: the compiled buildpacks, a stager with small
//! limits, app fixtures, and a real HTTP file server on 127.0.0.1 that counts its hits.

pub mod controller;

use dea::buildpack::{Buildpack, BuildpackSet};
use dea::config::{Config, MirrorRule};
use dea::staging::{Staged, Stager, StagingError, StagingLog, StagingRequest};
use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// An installed buildpack built by `scripts/build-plugins` (`target/buildpacks/<id>`, or
/// `target/test-buildpacks/<id>` for the test ones).
pub fn buildpack(id: &str) -> Buildpack {
    let root = repo_root().join("target");
    for dir in ["buildpacks", "test-buildpacks"] {
        let path = root.join(dir).join(id);
        if path.join("buildpack.toml").is_file() {
            return Buildpack::load(&path).expect("buildpack loads");
        }
    }
    panic!("buildpack {id} is not built: run scripts/build-plugins first");
}

/// A classic test buildpack from `tests/classic/<name>`.
pub fn classic_buildpack(name: &str) -> Buildpack {
    Buildpack::load(&repo_root().join("tests/classic").join(name)).expect("classic buildpack loads")
}

/// The three real buildpacks, in their default order.
pub fn default_buildpacks() -> Vec<Buildpack> {
    vec![
        buildpack("staticfile"),
        buildpack("node"),
        buildpack("procfile"),
    ]
}

/// A config with a private base dir and limits small enough for tests to hit quickly.
pub fn test_config(base: &Path) -> Config {
    let mut config = Config {
        base_dir: base.to_path_buf(),
        ..Config::default()
    };
    config.wasm.memory_limit_mb = 64;
    config.wasm.detect_cpu_ms = 500;
    config.wasm.detect_timeout_ms = 3_000;
    config.wasm.compile_cpu_secs = 2;
    config.wasm.compile_timeout_secs = 4;
    config.wasm.output_limit_bytes = 256 * 1024;
    config.fetch.timeout_secs = 10;
    config.classic.memory_limit_mb = 256;
    config.classic.pids_limit = 128;
    config.classic.detect_timeout_secs = 20;
    config.classic.compile_timeout_secs = 20;
    config.classic.tmp_size_mb = 64;
    config.fetch.attempts = 1;
    // The tests look for what a staging leaves behind as soon as it ends.
    config.staging.log_retention_secs = 0;
    config
}

/// A stager over `buildpacks` with `config`.
pub fn stager(config: Config, buildpacks: Vec<Buildpack>) -> Stager {
    Stager::from_config(config, BuildpackSet::from_list(buildpacks)).expect("stager")
}

/// Collects the staging log in memory as well, for assertions.
#[derive(Clone, Default)]
pub struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl CapturedLog {
    pub fn watcher(&self) -> dea::staging::LogWatcher {
        let sink = self.0.clone();
        Arc::new(move |bytes: &[u8]| {
            if let Ok(mut buf) = sink.lock() {
                buf.extend_from_slice(bytes);
            }
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }
}

/// A staging request for `source` writing to `output`.
pub fn request(source: &Path, output: &Path) -> StagingRequest {
    StagingRequest::new(source, output)
}

/// Stages and returns the result with the captured log.
pub async fn stage(
    stager: &Stager,
    mut request: StagingRequest,
) -> (Result<Staged, StagingError>, String) {
    let log = CapturedLog::default();
    request.watcher = Some(log.watcher());
    let result = stager.stage(request).await;
    (result, log.text())
}

/// Writes `files` (relative path → content) under `dir`.
pub fn write_app(dir: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write fixture");
    }
}

/// Entry names of a droplet, as `tar tzf` lists them.
pub fn droplet_entries(path: &Path) -> Vec<String> {
    let file = std::fs::File::open(path).expect("droplet opens");
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(file));
    archive
        .entries()
        .expect("entries")
        .map(|e| {
            let e = e.expect("entry");
            String::from_utf8_lossy(&e.path_bytes()).into_owned()
        })
        .collect()
}

/// One file's content from a droplet.
pub fn droplet_file(path: &Path, name: &str) -> Option<String> {
    let file = std::fs::File::open(path).expect("droplet opens");
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(file));
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        if String::from_utf8_lossy(&entry.path_bytes()) == name {
            let mut text = String::new();
            entry.read_to_string(&mut text).expect("read entry");
            return Some(text);
        }
    }
    None
}

/// One entry's mode bits in a droplet.
pub fn droplet_mode(path: &Path, name: &str) -> Option<u32> {
    let file = std::fs::File::open(path).expect("droplet opens");
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(file));
    archive
        .entries()
        .expect("entries")
        .filter_map(Result::ok)
        .find(|e| String::from_utf8_lossy(&e.path_bytes()) == name)
        .and_then(|e| e.header().mode().ok())
}

/// Unpacks a droplet with GNU tar (what an operator or Cloud Foundry's DEA would use) into
/// `dest`, which must exist.
pub fn untar_droplet(droplet: &Path, dest: &Path) {
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(droplet)
        .arg("-C")
        .arg(dest)
        .status()
        .expect("tar runs");
    assert!(
        status.success(),
        "tar xzf cannot read {}",
        droplet.display()
    );
}

/// What a tree holds, for comparing two: each path beneath `root` with its kind
/// (`file`, `dir`, `link`), permission bits (none for links) and content or link target.
/// Links are never followed.
pub fn tree_listing(
    root: &Path,
) -> std::collections::BTreeMap<PathBuf, (&'static str, u32, Vec<u8>)> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let rel = path.strip_prefix(root).expect("inside").to_path_buf();
            let mode = meta.permissions().mode() & 0o7777;
            let item = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).expect("readlink");
                ("link", 0, target.as_os_str().as_bytes().to_vec())
            } else if meta.is_dir() {
                stack.push(path.clone());
                ("dir", mode, Vec::new())
            } else {
                ("file", mode, std::fs::read(&path).expect("read"))
            };
            out.insert(rel, item);
        }
    }
    out
}

/// Whether any mount lies beneath `dir` (a staging's tmpfs left behind, say).
pub fn mounts_beneath(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(&dir))
        .map(str::to_string)
        .collect()
}

/// A file server on 127.0.0.1 that counts requests per path: a [`ScriptedServer`] whose
/// every route answers with a body.
pub type FileServer = ScriptedServer;

/// A `.tgz` holding `files` (path → content, with mode 0755), for fake runtimes.
pub fn make_tgz(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        builder
            .append_data(&mut header, path, content.as_bytes())
            .expect("append");
    }
    builder.into_inner().expect("tar").finish().expect("gzip")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A copy of the node buildpack whose manifest pins `uri`/`sha256` instead of the real
/// runtimes: the buildpack's code is untouched, only its data changes.
pub fn node_buildpack_pinned(dir: &Path, uri: &str, sha256: &str) -> Buildpack {
    node_buildpack_pinned_allowing(
        dir,
        uri,
        sha256,
        "https://buildpacks.cloudfoundry.org/dependencies/node/",
    )
}

/// Like [`node_buildpack_pinned`], with its own declared download prefix.
pub fn node_buildpack_pinned_allowing(
    dir: &Path,
    uri: &str,
    sha256: &str,
    allow: &str,
) -> Buildpack {
    let original = buildpack("node");
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::copy(
        original.dir.join("buildpack.wasm"),
        dir.join("buildpack.wasm"),
    )
    .expect("copy component");
    let manifest = format!(
        "[buildpack]\nid = \"node\"\nname = \"Node.js\"\nversion = \"0.1.0\"\n\n\
         [fetch]\nallow = [\"{allow}\"]\n\n\
         [[dependencies]]\nname = \"node\"\nversion = \"20.11.1\"\nuri = \"{uri}\"\n\
         sha256 = \"{sha256}\"\nstrip_components = 1\n"
    );
    std::fs::write(dir.join("buildpack.toml"), manifest).expect("manifest");
    Buildpack::load(dir).expect("pinned node buildpack loads")
}

/// A mirror rule sending the node buildpack's upstream to `server`.
pub fn node_mirror(server: &FileServer) -> MirrorRule {
    MirrorRule {
        from: "https://buildpacks.cloudfoundry.org/dependencies/".into(),
        to: server.url("/mirror/"),
    }
}

/// A log handle that goes nowhere (for direct runtime calls).
pub fn quiet_log() -> StagingLog {
    StagingLog::detached(None)
}

/// Whether the compiled-code cache holds the component with this digest.
pub fn compiled_code_cached(config: &Config, digest: &str) -> bool {
    std::fs::read_dir(config.wasm_cache_dir())
        .expect("cache dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .any(|name| name.starts_with(digest) && name.ends_with(".cwasm"))
}

/// A sandbox for calling one phase directly: `app` doubles as cache and tmp, small unpack
/// limits, no fetch, the log discarded.
pub fn phase_spec(
    app: &Path,
    buildpack: &Path,
    env: Vec<(String, String)>,
) -> dea::buildpack::wasm::SandboxSpec {
    dea::buildpack::wasm::SandboxSpec {
        dirs: dea::buildpack::wasm::PhaseDirs {
            app: app.to_path_buf(),
            cache: app.to_path_buf(),
            buildpack: buildpack.to_path_buf(),
            tmp: app.to_path_buf(),
        },
        env,
        log: quiet_log(),
        fetch: None,
        unpack_limits: dea::droplet::UnpackLimits {
            max_bytes: 1 << 20,
            max_files: 100,
            max_depth: 256,
        },
    }
}

/// A TCP listener that only counts connections: the "upstream" that must never be reached.
pub struct CountingListener {
    pub port: u16,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingListener {
    pub async fn start() -> CountingListener {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((_stream, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        CountingListener { port, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What a [`ScriptedServer`] answers on one path.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with this body.
    Body(Vec<u8>),
    /// A redirect with this status and `Location`, sent as it is.
    Redirect(u16, String),
}

/// An HTTP server on 127.0.0.1 that answers each path as scripted (404 otherwise) and counts
/// requests per path: for redirect tests.
pub struct ScriptedServer {
    pub addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    total: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl ScriptedServer {
    /// Serves `files` (path → bytes), 404 for anything else.
    pub async fn start(files: Vec<(&str, Vec<u8>)>) -> ScriptedServer {
        Self::scripted(
            files
                .into_iter()
                .map(|(path, bytes)| (path, Reply::Body(bytes)))
                .collect(),
        )
        .await
    }

    /// Serves `routes` (path → reply), 404 for anything else.
    pub async fn scripted(routes: Vec<(&str, Reply)>) -> ScriptedServer {
        use axum::body::Body;
        use axum::extract::State;
        use axum::http::{Response, StatusCode, Uri, header};
        type Shared = (
            Arc<HashMap<String, Reply>>,
            Arc<Mutex<HashMap<String, usize>>>,
            Arc<AtomicUsize>,
        );
        let routes: Arc<HashMap<String, Reply>> = Arc::new(
            routes
                .into_iter()
                .map(|(path, reply)| (path.to_string(), reply))
                .collect(),
        );
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let total = Arc::new(AtomicUsize::new(0));
        async fn serve(State((routes, hits, total)): State<Shared>, uri: Uri) -> Response<Body> {
            total.fetch_add(1, Ordering::SeqCst);
            *hits
                .lock()
                .expect("hits")
                .entry(uri.path().to_string())
                .or_default() += 1;
            let built = match routes.get(uri.path()) {
                Some(Reply::Body(bytes)) => Response::builder().body(Body::from(bytes.clone())),
                Some(Reply::Redirect(status, location)) => Response::builder()
                    .status(*status)
                    .header(header::LOCATION, location.as_str())
                    .body(Body::empty()),
                None => Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Body::empty()),
            };
            built.expect("scripted response")
        }
        let app =
            axum::Router::new()
                .fallback(serve)
                .with_state((routes, hits.clone(), total.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ScriptedServer {
            addr,
            hits,
            total,
            _task: task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .expect("hits")
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn total_hits(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

/// Sends `request` as raw bytes to `addr` and returns what comes back up to the end of the
/// response head (or EOF), within 5 s: for requests no HTTP client would send as written.
pub async fn raw_http(addr: SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    raw_exchange(&mut stream, request).await
}

/// Like [`raw_http`] on an open connection, which stays open for the caller.
pub async fn raw_exchange(stream: &mut tokio::net::TcpStream, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut head = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read)
        .await
        .expect("a response within 5 s");
    String::from_utf8_lossy(&head).into_owned()
}
