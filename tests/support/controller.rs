//! A test Cloud Controller: a real `nats-server` on a free loopback port, a NATS client that
//! speaks the DEA's plain JSON messages, and an HTTP side that serves app packages and
//! droplets and takes droplet uploads (multipart `upload[droplet]`), as CC's does.

use futures_util::StreamExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A `nats-server` child process on 127.0.0.1.
pub struct NatsServer {
    pub port: u16,
    child: Option<std::process::Child>,
    /// JetStream's store, when it is on (kept across restarts).
    store: Option<tempfile::TempDir>,
}

impl NatsServer {
    pub fn binary() -> PathBuf {
        for path in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
            if Path::new(path).is_file() {
                return PathBuf::from(path);
            }
        }
        PathBuf::from("nats-server")
    }

    /// Starts a server on a free port and waits until it accepts connections.
    pub async fn start() -> NatsServer {
        NatsServer::start_storing(None).await
    }

    /// A server with JetStream on (the platform's blobstore and state), storing in a
    /// directory of its own.
    pub async fn start_with_jetstream() -> NatsServer {
        NatsServer::start_storing(Some(tempfile::tempdir().expect("JetStream store dir"))).await
    }

    async fn start_storing(store: Option<tempfile::TempDir>) -> NatsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = NatsServer {
            port,
            child: None,
            store,
        };
        server.restart().await;
        server
    }

    /// Kills the server (the agent sees its connection drop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        let mut command = std::process::Command::new(Self::binary());
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(store) = &self.store {
            command.arg("-js").arg("-sd").arg(store.path());
        }
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server starts (apt-get install nats-server)");
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("nats-server did not listen on {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The controller's NATS side.
pub struct Controller {
    pub client: async_nats::Client,
}

/// Messages collected from one subject.
pub struct Inbox {
    messages: Arc<Mutex<Vec<serde_json::Value>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Inbox {
    /// Everything received so far.
    pub fn all(&self) -> Vec<serde_json::Value> {
        self.messages.lock().expect("inbox").clone()
    }

    /// Waits (up to `limit`) for a message that satisfies `want`.
    pub async fn wait_for(
        &self,
        limit: Duration,
        want: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(found) = self.all().into_iter().find(|m| want(m)) {
                return Some(found);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn clear(&self) {
        self.messages.lock().expect("inbox").clear();
    }
}

impl Controller {
    pub async fn connect(server: &NatsServer) -> Controller {
        // Connected when this returns (the server is up), so nothing published races the
        // connection.
        let client = async_nats::ConnectOptions::new()
            .reconnect_delay_callback(|_| Duration::from_millis(100))
            .connect(server.url())
            .await
            .expect("controller connects");
        Controller { client }
    }

    /// Collects every message on `subject` from now on.
    pub async fn listen(&self, subject: &str) -> Inbox {
        let mut subscriber = self
            .client
            .subscribe(subject.to_string())
            .await
            .expect("subscribe");
        self.client.flush().await.expect("flush");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let value =
                    serde_json::from_slice(&message.payload).unwrap_or(serde_json::Value::Null);
                sink.lock().expect("inbox").push(value);
            }
        });
        Inbox {
            messages,
            _task: task,
        }
    }

    pub async fn publish(&self, subject: &str, message: &serde_json::Value) {
        self.client
            .publish(subject.to_string(), message.to_string().into())
            .await
            .expect("publish");
        self.client.flush().await.expect("flush");
    }

    /// Publishes raw bytes (for malformed messages).
    pub async fn publish_raw(&self, subject: &str, payload: Vec<u8>, reply: Option<&str>) {
        let result = match reply {
            Some(reply) => {
                self.client
                    .publish_with_reply(subject.to_string(), reply.to_string(), payload.into())
                    .await
            }
            None => {
                self.client
                    .publish(subject.to_string(), payload.into())
                    .await
            }
        };
        result.expect("publish");
    }

    /// Sends a request and collects replies until `count` arrive or `limit` passes.
    pub async fn request_many(
        &self,
        subject: &str,
        message: &serde_json::Value,
        count: usize,
        limit: Duration,
    ) -> Vec<serde_json::Value> {
        let inbox = self.client.new_inbox();
        let mut subscriber = self
            .client
            .subscribe(inbox.clone())
            .await
            .expect("subscribe inbox");
        self.client
            .publish_with_reply(subject.to_string(), inbox, message.to_string().into())
            .await
            .expect("publish request");
        self.client.flush().await.expect("flush");
        let mut replies = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        while replies.len() < count {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, subscriber.next()).await {
                Ok(Some(message)) => replies.push(
                    serde_json::from_slice(&message.payload).unwrap_or(serde_json::Value::Null),
                ),
                _ => break,
            }
        }
        replies
    }
}

/// The controller's HTTP side: `GET /<path>` serves blobs, `POST /upload/<name>` stores a
/// multipart `upload[droplet]` part as the blob `/<name>`.
pub struct BlobStore {
    pub addr: SocketAddr,
    blobs: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    uploads: Arc<Mutex<Vec<String>>>,
    _task: tokio::task::JoinHandle<()>,
}

type Blobs = Arc<Mutex<HashMap<String, Vec<u8>>>>;
type Uploads = Arc<Mutex<Vec<String>>>;

impl BlobStore {
    pub async fn start(blobs: Vec<(&str, Vec<u8>)>) -> BlobStore {
        use axum::extract::{Multipart, Path as UrlPath, State};
        use axum::http::{StatusCode, Uri};
        let store: Blobs = Arc::new(Mutex::new(
            blobs
                .into_iter()
                .map(|(path, bytes)| (path.to_string(), bytes))
                .collect(),
        ));
        let uploads: Uploads = Arc::new(Mutex::new(Vec::new()));
        async fn get(
            State((blobs, _)): State<(Blobs, Uploads)>,
            uri: Uri,
        ) -> Result<Vec<u8>, StatusCode> {
            blobs
                .lock()
                .expect("blobs")
                .get(uri.path())
                .cloned()
                .ok_or(StatusCode::NOT_FOUND)
        }
        async fn upload(
            State((blobs, uploads)): State<(Blobs, Uploads)>,
            UrlPath(name): UrlPath<String>,
            mut form: Multipart,
        ) -> StatusCode {
            while let Ok(Some(field)) = form.next_field().await {
                if field.name() == Some("upload[droplet]") {
                    let Ok(bytes) = field.bytes().await else {
                        return StatusCode::BAD_REQUEST;
                    };
                    blobs
                        .lock()
                        .expect("blobs")
                        .insert(format!("/{name}"), bytes.to_vec());
                    uploads.lock().expect("uploads").push(name);
                    return StatusCode::CREATED;
                }
            }
            StatusCode::BAD_REQUEST
        }
        let app = axum::Router::new()
            .route("/upload/{name}", axum::routing::post(upload))
            .fallback(get)
            .layer(axum::extract::DefaultBodyLimit::max(512 << 20))
            .with_state((store.clone(), uploads.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        BlobStore {
            addr,
            blobs: store,
            uploads,
            _task: task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn blob(&self, path: &str) -> Option<Vec<u8>> {
        self.blobs.lock().expect("blobs").get(path).cloned()
    }

    /// Names uploaded so far, in order.
    pub fn uploads(&self) -> Vec<String> {
        self.uploads.lock().expect("uploads").clone()
    }
}

/// A zip of `dir`'s files (what Cloud Controller hands a DEA as the app package).
pub fn zip_dir(dir: &Path) -> Vec<u8> {
    use std::io::Write;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).expect("read app dir") {
            let path = entry.expect("entry").path();
            let name = path
                .strip_prefix(dir)
                .expect("inside")
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                stack.push(path);
            } else {
                writer
                    .start_file(name, zip::write::SimpleFileOptions::default())
                    .expect("zip entry");
                writer
                    .write_all(&std::fs::read(&path).expect("read file"))
                    .expect("zip write");
            }
        }
    }
    writer.finish().expect("zip").into_inner()
}

/// Kills every container under a test's runc state directory (and the instance network
/// namespaces of its base dir) when the test ends, passed or failed, so a failing test
/// leaves no app running on the machine.
pub struct ContainerCleanup(pub PathBuf);

impl Drop for ContainerCleanup {
    fn drop(&mut self) {
        let root = self.0.join("runc");
        if let Ok(list) = std::process::Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
        {
            for id in String::from_utf8_lossy(&list.stdout).lines() {
                for args in [
                    vec!["kill", "--all", id, "KILL"],
                    vec!["delete", "--force", id],
                ] {
                    let _ = std::process::Command::new("runc")
                        .arg("--root")
                        .arg(&root)
                        .args(&args)
                        .output();
                }
            }
        }
        let ours: Vec<String> = std::fs::read_dir(self.0.join("instances"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|i| {
                let id = i.file_name().to_string_lossy().into_owned();
                id.get(..16).map(|prefix| format!("dea-i-{prefix}"))
            })
            .collect();
        for name in ours {
            if Path::new("/var/run/netns").join(&name).exists() {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "delete", &name])
                    .output();
            }
        }
        // The agent's nftables table (its instances' published ports) goes with its state.
        let table = dea::instance::network::NetworkSettings::table_for(&self.0);
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", &table])
            .output();
    }
}

/// Like [`zip_dir`], but each entry keeps its file's permission bits (a classic buildpack's
/// `bin/` scripts must stay executable once the agent unpacks it), as an admin buildpack
/// uploaded to Cloud Controller would.
pub fn zip_dir_with_modes(dir: &Path) -> Vec<u8> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).expect("read buildpack dir") {
            let path = entry.expect("entry").path();
            let name = path
                .strip_prefix(dir)
                .expect("inside")
                .to_string_lossy()
                .into_owned();
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
            if path.is_dir() {
                stack.push(path);
            } else {
                let options = zip::write::SimpleFileOptions::default().unix_permissions(mode);
                writer.start_file(name, options).expect("zip entry");
                writer
                    .write_all(&std::fs::read(&path).expect("read file"))
                    .expect("zip write");
            }
        }
    }
    writer.finish().expect("zip").into_inner()
}

/// A zip of `files` (name → content): an app package made in memory.
pub fn zip_files(files: &[(&str, &str)]) -> Vec<u8> {
    use std::io::Write;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, content) in files {
        writer
            .start_file(*name, zip::write::SimpleFileOptions::default())
            .expect("zip entry");
        writer.write_all(content.as_bytes()).expect("zip write");
    }
    writer.finish().expect("zip").into_inner()
}

/// An agent on `nats` with short intervals and room for a few small instances, and its
/// directory server on a free loopback port.
pub async fn start_agent(
    base: &Path,
    nats: &NatsServer,
) -> (Arc<dea::nats::Agent>, dea::files::DirectoryServer) {
    let mut config = crate::test_config(base);
    config.agent.nats_servers = vec![nats.url()];
    config.agent.advertise_interval_secs = 1;
    config.agent.heartbeat_interval_secs = 1;
    config.agent.router_register_interval_secs = 1;
    config.agent.staging_memory_mb = 128;
    config.agent.staging_disk_mb = 256;
    config.agent.evacuation_check_interval_secs = 1;
    config.instances.memory_capacity_mb = Some(1024);
    config.instances.disk_capacity_mb = 8192;
    config.instances.stop_grace_secs = 3;
    config.directory_server.port = 0;
    config.instances.disk_check_interval_secs = 1;
    let node = dea::node::Node::start(
        config,
        dea::buildpack::BuildpackSet::from_list(crate::default_buildpacks()),
    )
    .await
    .expect("agent starts");
    let (directory, _links) = node.directory.expect("directory server enabled");
    (node.agent, directory)
}

/// A signed URL from the agent, pointed at the directory server's real address (the router
/// would map `<uuid>.<domain>` there; the signature covers only the path and query).
pub fn local(url: &str, directory: &dea::files::DirectoryServer) -> String {
    let rest = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, path)| path)
        .expect("a URL with a path");
    format!("http://{}/{rest}", directory.local_addr)
}

pub fn start_message(app: &str, index: u32, droplet_url: &str, sha1: &str) -> serde_json::Value {
    serde_json::json!({
        "droplet": app, "name": "example", "uris": ["example.test.local"], "version": "v1",
        "index": index, "sha1": sha1, "executableUri": droplet_url,
        "env": ["GREETING=hello"], "limits": {"mem": 64, "disk": 256, "fds": 1024},
        "services": [], "cc_partition": "default", "stack": "cflinuxfs4",
        "vcap_application": {"space_id": "space"}, "health_check_timeout": 20,
    })
}
