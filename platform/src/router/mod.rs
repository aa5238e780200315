//! `dea router`: an HTTP reverse proxy whose routing table comes from NATS, as Cloud
//! Foundry's gorouter did for the DEA (reference dea_ng.md §2.3).
//!
//! Agents publish `router.register` for every running instance (and their directory
//! server) every 20 s and whenever they see `router.start`; the router keeps, per route, the
//! backends seen within the prune threshold and spreads requests over them in turn.
//!
//! * `uri`: what a route is called, checked and made canonical.
//! * `table`: the routing table (round robin, prune, caps), pure logic.
//! * `registry`: the NATS side, which checks every message before it reaches the table.
//! * `proxy`: the HTTP side (hyper server and pooled client).
//! * `body`: a request body that can be offered to another backend after a refused connect.

mod body;
mod proxy;
mod registry;
mod table;
mod uri;

pub use table::{BackendSnapshot, RouteSnapshot};

use bytes::Bytes;
use dea_protocol::RouterStart;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use table::{Limits, RouteTable, SharedTable};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the router runs. Every field has a default, so `{}` is a complete config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Where the proxy listens (port 0 picks a free one; see `RouterHandle::local_addr`).
    pub listen: SocketAddr,
    /// Addresses announced in `router.start`; empty means the listen address, or this
    /// machine's outward IP when listening on all interfaces.
    pub hosts: Vec<String>,
    /// A backend not re-registered for this long is forgotten (`pruneThresholdInSeconds`).
    pub prune_threshold_secs: u64,
    /// How often agents are asked to register (`minimumRegisterIntervalInSeconds`).
    pub register_interval_secs: u64,
    /// How often `router.start` is repeated after the one at startup.
    pub start_interval_secs: u64,
    /// Connecting to a backend; a backend that takes longer counts as refused.
    pub connect_timeout_ms: u64,
    /// From sending a request to a backend until its response headers.
    pub response_header_timeout_secs: u64,
    /// For a client to send its request headers (slow clients hold a connection each).
    pub request_header_timeout_secs: u64,
    /// Backends tried per request when connections are refused.
    pub max_backend_tries: usize,
    /// Distinct routes in the table.
    pub max_routes: usize,
    /// Backends behind one route.
    pub max_backends_per_route: usize,
    /// Uris in one registration message.
    pub max_uris_per_message: usize,
    /// Size of one registration message.
    pub max_message_bytes: usize,
    /// At shutdown, how long open connections may take to finish.
    pub shutdown_grace_secs: u64,
    /// gorouter's trace key: a request whose `X-Vcap-Trace` header carries it gets
    /// `X-Vcap-Router` and `X-Vcap-Backend` (the instance that answered) on its response.
    /// Unset: no request is traced.
    pub trace_key: Option<String>,
}

impl Default for RouterConfig {
    fn default() -> RouterConfig {
        RouterConfig {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8080)),
            hosts: Vec::new(),
            // gorouter's defaults, and the DEA's register interval (reference §2.3, §6).
            prune_threshold_secs: 120,
            register_interval_secs: 20,
            // Half the prune threshold: an agent that missed one gets a second chance
            // before its routes are pruned.
            start_interval_secs: 60,
            connect_timeout_ms: 5_000,
            response_header_timeout_secs: 60,
            request_header_timeout_secs: 30,
            max_backend_tries: 3,
            max_routes: 100_000,
            max_backends_per_route: 1_000,
            max_uris_per_message: 256,
            max_message_bytes: 64 * 1024,
            shutdown_grace_secs: 10,
            trace_key: None,
        }
    }
}

impl RouterConfig {
    fn validate(&self) -> Result<(), RouterError> {
        let positive = [
            ("prune_threshold_secs", self.prune_threshold_secs),
            ("register_interval_secs", self.register_interval_secs),
            ("start_interval_secs", self.start_interval_secs),
            ("connect_timeout_ms", self.connect_timeout_ms),
            (
                "response_header_timeout_secs",
                self.response_header_timeout_secs,
            ),
            (
                "request_header_timeout_secs",
                self.request_header_timeout_secs,
            ),
        ];
        let counts = [
            ("max_backend_tries", self.max_backend_tries),
            ("max_routes", self.max_routes),
            ("max_backends_per_route", self.max_backends_per_route),
            ("max_uris_per_message", self.max_uris_per_message),
            ("max_message_bytes", self.max_message_bytes),
        ];
        let zero = positive
            .iter()
            .find(|(_, value)| *value == 0)
            .map(|(name, _)| *name)
            .or_else(|| {
                counts
                    .iter()
                    .find(|(_, value)| *value == 0)
                    .map(|(name, _)| *name)
            });
        match zero {
            Some(name) => Err(RouterError::Config(format!(
                "{name} must be greater than 0"
            ))),
            None => Ok(()),
        }
    }
}

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("invalid router config: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        subject: &'static str,
        #[source]
        source: async_nats::SubscribeError,
    },
    #[error("cannot publish {subject}: {source}")]
    Publish {
        subject: &'static str,
        #[source]
        source: async_nats::PublishError,
    },
    #[error("cannot encode router.start: {0}")]
    Encode(#[source] serde_json::Error),
}

/// The router: see [`Router::start`].
#[derive(Debug)]
pub struct Router;

impl Router {
    /// Listens, subscribes to the route subjects, announces itself with `router.start`, and
    /// serves until the returned handle is shut down or dropped.
    pub async fn start(
        nats: async_nats::Client,
        config: RouterConfig,
    ) -> Result<RouterHandle, RouterError> {
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| RouterError::Listen {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| RouterError::Listen {
                addr: config.listen,
                source,
            })?;
        let id = uuid::Uuid::new_v4().to_string();
        let announcement = RouterStart {
            id: id.clone(),
            hosts: advertised_hosts(&config, local_addr),
            minimum_register_interval_in_seconds: config.register_interval_secs,
            prune_threshold_in_seconds: config.prune_threshold_secs,
        };
        let start = Bytes::from(serde_json::to_vec(&announcement).map_err(RouterError::Encode)?);

        // Subscribed before announcing, so no registration answering `router.start` is
        // missed.
        let subscribe = |subject: &'static str| {
            let nats = nats.clone();
            async move {
                nats.subscribe(subject)
                    .await
                    .map_err(|source| RouterError::Subscribe { subject, source })
            }
        };
        let table = SharedTable::new(RouteTable::new(Limits {
            max_routes: config.max_routes,
            max_backends_per_route: config.max_backends_per_route,
        }));
        let registry = registry::Registry {
            nats: nats.clone(),
            table: table.clone(),
            limits: registry::MessageLimits {
                max_bytes: config.max_message_bytes,
                max_uris: config.max_uris_per_message,
            },
            timing: registry::Timing {
                prune_threshold: Duration::from_secs(config.prune_threshold_secs),
                start_interval: Duration::from_secs(config.start_interval_secs),
            },
            start: start.clone(),
            register: subscribe("router.register").await?,
            unregister: subscribe("router.unregister").await?,
            greet: subscribe("router.greet").await?,
        };
        nats.publish("router.start", start)
            .await
            .map_err(|source| RouterError::Publish {
                subject: "router.start",
                source,
            })?;
        // `subscribe` only queues the SUBs (and `flush` only empties the write buffer): a
        // registration published by someone else right after `start` returned could reach
        // the server first and be lost.
        barrier(&nats).await?;

        let (stop, stopped) = watch::channel(false);
        let proxy = Arc::new(proxy::Proxy::new(table.clone(), &config, &id));
        let serving = tokio::spawn(proxy::serve(
            listener,
            proxy,
            Duration::from_secs(config.request_header_timeout_secs),
            Duration::from_secs(config.shutdown_grace_secs),
            stopped.clone(),
        ));
        let registering = tokio::spawn(registry.run(stopped));
        tracing::info!(%local_addr, %id, "router started");
        Ok(RouterHandle {
            id,
            local_addr,
            table,
            stop,
            tasks: vec![serving, registering],
        })
    }
}

/// A running router. Dropping it stops the router too, without waiting.
#[derive(Debug)]
pub struct RouterHandle {
    id: String,
    local_addr: SocketAddr,
    table: SharedTable,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RouterHandle {
    /// The address the proxy is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The id announced in `router.start`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The routing table now, sorted by uri.
    pub fn routes(&self) -> Vec<RouteSnapshot> {
        self.table.read().snapshot(Instant::now())
    }

    /// Stops accepting connections and NATS messages, and waits for open connections to
    /// finish (up to the configured grace).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::warn!(%error, "router task failed");
            }
        }
        tracing::info!(id = %self.id, "router stopped");
    }
}

/// Waits until the server has handled everything this client sent so far. A server handles
/// one connection's operations in order, so this client's own message on a fresh inbox
/// comes back only after the SUBs sent before it are in force.
async fn barrier(nats: &async_nats::Client) -> Result<(), RouterError> {
    const SUBJECT: &str = "a startup inbox";
    let inbox = nats.new_inbox();
    let mut echo =
        nats.subscribe(inbox.clone())
            .await
            .map_err(|source| RouterError::Subscribe {
                subject: SUBJECT,
                source,
            })?;
    nats.publish(inbox, Bytes::new())
        .await
        .map_err(|source| RouterError::Publish {
            subject: SUBJECT,
            source,
        })?;
    let limit = Duration::from_secs(5);
    if !matches!(tokio::time::timeout(limit, echo.next()).await, Ok(Some(_))) {
        // A client made with `no_echo` never sees its own messages; the router still
        // works, only registrations sent in the first instant may be missed.
        tracing::warn!(
            "NATS did not echo the router's own message within {limit:?}; starting anyway"
        );
    }
    Ok(())
}

/// Resolves once the handle says stop, or is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; it must not live in a `select!` output.
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// What `router.start` says the router is reachable at.
fn advertised_hosts(config: &RouterConfig, bound: SocketAddr) -> Vec<String> {
    if !config.hosts.is_empty() {
        return config.hosts.clone();
    }
    let ip = if bound.ip().is_unspecified() {
        outward_ip().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    } else {
        bound.ip()
    };
    vec![ip.to_string()]
}

/// The source address the kernel would use towards the outside, as the DEA found its
/// local IP (reference §1): connecting a UDP socket sends nothing.
fn outward_ip() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect((Ipv4Addr::new(198, 41, 0, 4), 1)).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_config_is_the_default_and_zeroes_are_refused() {
        let config: RouterConfig = serde_json::from_str("{}").expect("parses");
        assert_eq!(config, RouterConfig::default());
        assert!(config.validate().is_ok());
        let config: RouterConfig =
            serde_json::from_str(r#"{"listen": "127.0.0.1:0", "prune_threshold_secs": 1}"#)
                .expect("parses");
        assert_eq!(config.prune_threshold_secs, 1);
        let zero = RouterConfig {
            max_routes: 0,
            ..RouterConfig::default()
        };
        let error = zero.validate().expect_err("refused");
        assert!(error.to_string().contains("max_routes"), "{error}");
        assert!(serde_json::from_str::<RouterConfig>(r#"{"prune": 1}"#).is_err());
    }

    #[test]
    fn announced_hosts_come_from_config_or_the_bound_address() {
        let config = RouterConfig::default();
        let bound: SocketAddr = "10.1.2.3:80".parse().expect("addr");
        assert_eq!(advertised_hosts(&config, bound), ["10.1.2.3"]);
        let named = RouterConfig {
            hosts: vec!["router.internal".into()],
            ..config
        };
        assert_eq!(advertised_hosts(&named, bound), ["router.internal"]);
    }
}
