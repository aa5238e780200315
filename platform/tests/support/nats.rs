//! A real `nats-server` on a free loopback port, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct NatsServer {
    pub port: u16,
    child: Option<Child>,
}

impl NatsServer {
    fn binary() -> PathBuf {
        ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .map(PathBuf::from)
            .find(|path| Path::new(path).is_file())
            .unwrap_or_else(|| PathBuf::from("nats-server"))
    }

    /// Starts a server on a free port and waits until it accepts connections.
    pub async fn start() -> NatsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut server = NatsServer { port, child: None };
        server.restart().await;
        server
    }

    /// Kills the server: clients see their connection drop.
    pub fn stop(&mut self) {
        // Only this child, by its own handle: other test binaries run servers of their own.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port and waits until it accepts connections.
    pub async fn restart(&mut self) {
        self.stop();
        let child = Command::new(Self::binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connects to nats-server")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
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
        .publish(inbox, bytes::Bytes::new())
        .await
        .expect("publish");
    tokio::time::timeout(Duration::from_secs(10), echo.next())
        .await
        .expect("own message back")
        .expect("subscription open");
}
