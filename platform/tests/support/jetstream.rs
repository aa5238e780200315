//! Real nats-server processes with JetStream for the platform's tests: one server whose
//! store survives restarts, and a three-node cluster. Every process is a child of the test and is
//! killed when its handle drops.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha1::Digest as _;

/// A file of `size` pseudo-random bytes (xorshift, so it does not compress or repeat).
pub fn random_file(path: &Path, size: usize, seed: u64) -> (String, String) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut state = seed | 1;
    let mut sha1 = sha1::Sha1::new();
    let mut sha256 = sha2::Sha256::new();
    let mut written = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    while written < size {
        let n = chunk.len().min(size - written);
        for byte in &mut chunk[..n] {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        file.write_all(&chunk[..n]).expect("write");
        sha1.update(&chunk[..n]);
        sha256.update(&chunk[..n]);
        written += n;
    }
    file.flush().expect("flush");
    (hex::encode(sha1.finalize()), hex::encode(sha256.finalize()))
}

pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Retries `op` until it succeeds or `limit` passes (a lost stream leader takes a few seconds
/// to replace).
pub async fn eventually<T, E, F, Fut>(limit: Duration, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Debug,
{
    let start = Instant::now();
    loop {
        match op().await {
            Ok(value) => return value,
            Err(err) if start.elapsed() > limit => panic!("still failing after {limit:?}: {err:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

pub fn binary() -> PathBuf {
    for path in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Path::new(path).is_file() {
            return PathBuf::from(path);
        }
    }
    PathBuf::from("nats-server")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// `n` distinct free ports: all held at once while they are picked, so no two are the same
/// (one at a time, the kernel may hand a just-released port out again).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter()
        .map(|listener| listener.local_addr().expect("bound").port())
        .collect()
}

/// Spawns nats-server with `args`, its log in `log`.
fn spawn(args: &[String], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("server log file");
    let err = log.try_clone().expect("server log file");
    Command::new(binary())
        .args(args)
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("nats-server starts (apt-get install nats-server)")
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Waits for `port` to accept; on failure the panic shows the server's log at `log` (a port
/// taken by another process in between shows there as a bind error).
async fn wait_listening(port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!("nats-server did not listen on {port}; its log:\n{log}");
}

/// Waits until JetStream answers account requests through `url`: on a cluster that means a
/// meta leader was elected; on a restarted server, that its store was recovered. (A raw
/// request: async-nats 0.51's `query_account` cannot parse nats-server 2.9's answer.)
pub async fn wait_jetstream(url: &str) {
    let client = async_nats::connect(url)
        .await
        .expect("connect to nats-server");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = client.request("$JS.API.INFO", "".into()).await;
        let last = match answer {
            Ok(message) => match serde_json::from_slice::<serde_json::Value>(&message.payload) {
                Ok(info) if info.get("error").is_none() => return,
                Ok(info) => info.to_string(),
                Err(err) => err.to_string(),
            },
            Err(err) => err.to_string(),
        };
        if Instant::now() > deadline {
            panic!("JetStream never became ready: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One nats-server with JetStream on 127.0.0.1, its store in a temporary directory that
/// outlives restarts.
pub struct NatsServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        let mut server = NatsServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connects to nats-server")
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Kills the process (if running) and starts a new one on the same port and store.
    pub async fn restart(&mut self) {
        self.stop();
        let args = [
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-sd",
            &self.store_dir().to_string_lossy(),
        ]
        .map(String::from);
        self.child = Some(spawn(&args, &self.dir.path().join("server.log")));
        wait_listening(self.port, &self.dir.path().join("server.log")).await;
        wait_jetstream(&self.url()).await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Node {
    name: String,
    port: u16,
    cluster_port: u16,
    child: Option<Child>,
}

/// A JetStream cluster of nats-servers on loopback, each with its own store and name, every
/// node routed to every other.
pub struct Cluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

impl Cluster {
    pub async fn start(size: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = free_ports(size * 2);
        let nodes = (0..size)
            .map(|i| Node {
                name: format!("n{i}"),
                port: ports[2 * i],
                cluster_port: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let mut cluster = Cluster { dir, nodes };
        for i in 0..size {
            cluster.start_node(i);
        }
        for node in &cluster.nodes {
            let log = cluster.dir.path().join(format!("{}.log", node.name));
            wait_listening(node.port, &log).await;
        }
        wait_jetstream(&cluster.urls()[0]).await;
        cluster
    }

    fn start_node(&mut self, i: usize) {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, node)| format!("nats://127.0.0.1:{}", node.cluster_port))
            .collect();
        let node = &self.nodes[i];
        let store = self.dir.path().join(&node.name);
        let args = [
            "-js".to_string(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            node.port.to_string(),
            "-sd".into(),
            store.to_string_lossy().into_owned(),
            "--server_name".into(),
            node.name.clone(),
            "--cluster_name".into(),
            "dea-test".into(),
            "--cluster".into(),
            format!("nats://127.0.0.1:{}", node.cluster_port),
            "--routes".into(),
            routes.join(","),
        ];
        let log = self.dir.path().join(format!("{}.log", node.name));
        self.nodes[i].child = Some(spawn(&args, &log));
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("nats://127.0.0.1:{}", node.port))
            .collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.name.clone()).collect()
    }

    /// Kills the node called `name`.
    pub fn stop(&mut self, name: &str) {
        let node = self
            .nodes
            .iter_mut()
            .find(|node| node.name == name)
            .expect("a node of that name");
        kill(&mut node.child);
    }

    /// A node's log, for failure messages.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            kill(&mut node.child);
        }
    }
}

/// Returns once the server has handled everything `client` sent before (its SUBs included):
/// `flush` only empties the client's buffer, but the server handles one connection in
/// order, so the client's own message coming back proves it.
pub async fn barrier(client: &async_nats::Client) {
    use futures_util::StreamExt;
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish(inbox, Default::default())
        .await
        .expect("publish");
    tokio::time::timeout(Duration::from_secs(10), echo.next())
        .await
        .expect("own message back")
        .expect("subscription open");
}
