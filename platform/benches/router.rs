//! What the router costs: the same load against a backend directly and through the router,
//! alternately, three rounds each, on one machine.
//!
//! `cargo bench -p dea-platform --bench router` (release). wrk is not assumed: the load is a
//! Rust loop on hyper's pooled client, 32 concurrent requesters for 5 s per run
//! (`ROUTER_BENCH_CONCURRENCY`, `ROUTER_BENCH_SECS`). Load generator, router and backend
//! share this process and this machine's cores, so the numbers are a ratio, not a capacity:
//! the router's share of the CPU is taken from the load generator and the backend.
//!
//! Needs `nats-server` (the router takes its routes from NATS, as in production).

use bytes::Bytes;
use dea_platform::router::{Router, RouterConfig};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOST: &str = "bench.example.com";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// The `nats-server` child, killed when dropped (only this one, by its handle).
struct Nats(Child);

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A backend that answers every request with a short body, as a small app would.
async fn backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"hello from the backend\n",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// One run's result.
struct Run {
    requests: usize,
    errors: usize,
    secs: f64,
    /// Sorted latencies, microseconds.
    latencies: Vec<u32>,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let at = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        f64::from(self.latencies[at]) / 1000.0
    }
}

/// `concurrency` requesters send GETs to `target` for `secs`.
async fn load(target: SocketAddr, concurrency: u64, secs: u64) -> Run {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let uri: hyper::Uri = format!("http://{target}/").parse().expect("uri");
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let uri = uri.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                while Instant::now() < deadline {
                    let request = hyper::Request::builder()
                        .uri(uri.clone())
                        .header(hyper::header::HOST, HOST)
                        .body(Empty::new())
                        .expect("request");
                    let sent = Instant::now();
                    match client.request(request).await {
                        Ok(response) if response.status().is_success() => {
                            let body: Result<_, hyper::Error> =
                                BodyExt::collect(response.into_body() as Incoming).await;
                            if body.is_ok() {
                                let micros = sent.elapsed().as_micros();
                                latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
                            } else {
                                errors += 1;
                            }
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut run = Run {
        requests: 0,
        errors: 0,
        secs: 0.0,
        latencies: Vec::new(),
    };
    for worker in workers {
        let (latencies, errors) = worker.await.expect("worker");
        run.errors += errors;
        run.latencies.extend(latencies);
    }
    run.secs = started.elapsed().as_secs_f64();
    run.requests = run.latencies.len();
    run.latencies.sort_unstable();
    run
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|path| Path::new(path).is_file());
    let Some(binary) = binary else {
        eprintln!("router bench skipped: nats-server not found");
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(binary));
}

async fn bench(binary: &str) {
    let concurrency = env_or("ROUTER_BENCH_CONCURRENCY", 32);
    let secs = env_or("ROUTER_BENCH_SECS", 5);
    let port = free_port();
    let _nats = Nats(
        Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts"),
    );
    let url = format!("nats://127.0.0.1:{port}");
    let mut connected = None;
    for _ in 0..200 {
        if let Ok(client) = async_nats::connect(&url).await {
            connected = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let nats = connected.expect("nats-server accepts connections");

    let backend = backend().await;
    let config = RouterConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..RouterConfig::default()
    };
    let router = Router::start(nats.clone(), config)
        .await
        .expect("router starts");
    let registration = serde_json::json!({
        "dea": "bench", "app": "bench", "uris": [HOST], "host": "127.0.0.1",
        "port": backend.port(), "tags": {"component": "dea-0"}, "private_instance_id": "p"
    });
    nats.publish("router.register", registration.to_string().into())
        .await
        .expect("register");
    while router.routes().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    println!(
        "router bench: {concurrency} concurrent requesters, {secs} s per run, GET of a 23-byte body"
    );
    println!(
        "{:<8} {:>6} {:>10} {:>9} {:>9} {:>7}",
        "target", "round", "req/s", "p50 ms", "p99 ms", "errors"
    );
    let mut direct = Vec::new();
    let mut routed = Vec::new();
    for round in 1..=3 {
        for (name, target, results) in [
            ("direct", backend, &mut direct),
            ("router", router.local_addr(), &mut routed),
        ] {
            let run = load(target, concurrency, secs).await;
            println!(
                "{name:<8} {round:>6} {:>10.0} {:>9.3} {:>9.3} {:>7}",
                run.rps(),
                run.percentile(0.5),
                run.percentile(0.99),
                run.errors
            );
            results.push(run);
        }
    }
    let rps = |runs: &[Run]| median(runs.iter().map(Run::rps).collect());
    let p50 = |runs: &[Run]| median(runs.iter().map(|r| r.percentile(0.5)).collect());
    println!(
        "median of 3: direct {:.0} req/s p50 {:.3} ms; router {:.0} req/s p50 {:.3} ms",
        rps(&direct),
        p50(&direct),
        rps(&routed),
        p50(&routed)
    );
    println!(
        "throughput ratio router/direct: {:.2}; added p50 latency: {:.3} ms",
        rps(&routed) / rps(&direct),
        p50(&routed) - p50(&direct)
    );
    router.shutdown().await;
}
