//! A `dea router` for benchmarks: started in-process on `LISTEN` (default 127.0.0.1:0) over
//! the NATS at `NATS` (default nats://127.0.0.1:4222), with one route registered on it the
//! way an agent would (`router.register` for `HOST` to `BACKEND`, an IP:port). Prints the
//! router's address, then serves until killed.

use dea_platform::router::{Router, RouterConfig};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |key: &str, default: &str| std::env::var(key).unwrap_or_else(|_| default.into());
    let nats = async_nats::connect(env("NATS", "nats://127.0.0.1:4222")).await?;
    let config = RouterConfig {
        listen: env("LISTEN", "127.0.0.1:0").parse()?,
        ..RouterConfig::default()
    };
    let router = Router::start(nats.clone(), config).await?;
    let backend = env("BACKEND", "127.0.0.1:8081");
    let (host, port) = backend.rsplit_once(':').ok_or("BACKEND is IP:port")?;
    let registration = serde_json::json!({
        "dea": "bench", "app": "bench", "uris": [env("HOST", "bench.local")],
        "host": host, "port": port.parse::<u16>()?, "tags": {"component": "bench"},
    });
    nats.publish("router.register", registration.to_string().into())
        .await?;
    nats.flush().await?;
    while router.routes().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("{}", router.local_addr());
    std::future::pending::<()>().await;
    Ok(())
}
