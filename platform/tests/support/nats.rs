//! A real `nats-server` on a free loopback port, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct NatsServer {
    pub port: u16,
    child: Child,
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
        let child = Command::new(Self::binary())
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts (apt-get install nats-server)");
        let server = NatsServer { port, child };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("nats-server did not listen on {port}");
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
        // Only this child, by its own handle: other test binaries run servers of their own.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
