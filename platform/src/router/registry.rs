//! The NATS side: `router.register` / `router.unregister` into the table, `router.start`
//! out (at startup, periodically, and when the bus comes back), `router.greet` answered,
//! and stale routes pruned.
//!
//! Anyone on the bus can publish, so every message is checked before it touches the table:
//! size first (a huge payload is not even parsed), then shape (`dea-protocol`'s
//! `RouterRegistration`), then content (an IP address, a non-zero port, a bounded number of
//! well-formed uris). A refused message is one `warn` line and nothing else.

use super::table::{Origin, SharedTable};
use super::uri::{RouteKey, UriError};
use async_nats::connection::State;
use bytes::Bytes;
use dea_protocol::{MessageError, RouterRegistration};
use futures_util::StreamExt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

/// Limits on one registration message.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimits {
    pub max_bytes: usize,
    pub max_uris: usize,
}

/// A registration that passed every check.
#[derive(Debug, PartialEq)]
pub struct Checked {
    pub addr: SocketAddr,
    pub keys: Vec<RouteKey>,
    pub origin: Origin,
    /// Uris that were dropped (the rest of the message still counts), with the first reason.
    pub bad_uris: usize,
    pub first_bad: Option<(String, UriError)>,
}

/// Why a whole message was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("payload of {0} bytes is over the limit of {1}")]
    TooLarge(usize, usize),
    #[error(transparent)]
    Malformed(#[from] MessageError),
    #[error("host {0:?} is not an IP address")]
    Host(String),
    #[error("port 0")]
    PortZero,
    #[error("no uris")]
    NoUris,
    #[error("{0} uris is over the limit of {1}")]
    TooManyUris(usize, usize),
    #[error("no valid uri: {0:?} {1}")]
    NoValidUri(String, UriError),
}

/// Checks one `router.register`/`router.unregister` payload.
pub fn check(payload: &[u8], limits: MessageLimits) -> Result<Checked, Refused> {
    if payload.len() > limits.max_bytes {
        return Err(Refused::TooLarge(payload.len(), limits.max_bytes));
    }
    let message: RouterRegistration = dea_protocol::parse("router registration", payload)?;
    // Agents send their IP (reference §1, "local IP"); a name would make the proxy resolve
    // whatever a publisher chose, per request.
    let ip: IpAddr = message
        .host
        .parse()
        .map_err(|_| Refused::Host(message.host.clone()))?;
    if message.port == 0 {
        return Err(Refused::PortZero);
    }
    if message.uris.is_empty() {
        return Err(Refused::NoUris);
    }
    if message.uris.len() > limits.max_uris {
        return Err(Refused::TooManyUris(message.uris.len(), limits.max_uris));
    }
    let mut keys = Vec::with_capacity(message.uris.len());
    let mut bad_uris = 0;
    let mut first_bad = None;
    for uri in message.uris {
        match RouteKey::parse(&uri) {
            Ok(key) if !keys.contains(&key) => keys.push(key),
            Ok(_duplicate) => {}
            Err(error) => {
                bad_uris += 1;
                first_bad.get_or_insert((uri, error));
            }
        }
    }
    if keys.is_empty() {
        if let Some((uri, error)) = first_bad {
            return Err(Refused::NoValidUri(uri, error));
        }
        return Err(Refused::NoUris);
    }
    Ok(Checked {
        addr: SocketAddr::new(ip, message.port),
        keys,
        origin: Origin {
            app: message.app,
            private_instance_id: message.private_instance_id,
        },
        bad_uris,
        first_bad,
    })
}

/// Timing of the NATS side.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub prune_threshold: Duration,
    pub start_interval: Duration,
}

/// The NATS side's subscriptions and what it needs to answer.
pub struct Registry {
    pub nats: async_nats::Client,
    pub table: SharedTable,
    pub limits: MessageLimits,
    pub timing: Timing,
    /// The `router.start` payload, encoded once.
    pub start: Bytes,
    pub register: async_nats::Subscriber,
    pub unregister: async_nats::Subscriber,
    pub greet: async_nats::Subscriber,
}

impl Registry {
    /// Handles messages and timers until `stop` says so (or its sender is gone).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let start_every = self.timing.start_interval;
        let mut start_timer =
            tokio::time::interval_at(tokio::time::Instant::now() + start_every, start_every);
        start_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The connection is looked at often, so an outage between two prunes is noticed;
        // the prune itself walks the whole table and runs less often.
        let threshold = self.timing.prune_threshold;
        let check_every = (threshold / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let prune_every = (threshold / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
        let mut check_timer = tokio::time::interval(check_every);
        check_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_prune = Instant::now();
        let mut connected = true;
        loop {
            tokio::select! {
                () = super::stopped(&mut stop) => break,
                Some(message) = self.register.next() => self.on_registration(&message, true),
                Some(message) = self.unregister.next() => self.on_registration(&message, false),
                Some(message) = self.greet.next() => {
                    if let Some(reply) = message.reply
                        && let Err(error) = self.nats.publish(reply, self.start.clone()).await
                    {
                        tracing::warn!(%error, "could not answer router.greet");
                    }
                }
                _ = start_timer.tick() => self.publish_start().await,
                _ = check_timer.tick() => {
                    let now_connected = self.nats.connection_state() == State::Connected;
                    if now_connected && !connected {
                        // Registrations were lost while the bus was away, not withdrawn:
                        // restart every backend's clock and ask agents to register now.
                        tracing::info!("NATS connection back; asking agents to re-register");
                        self.table.write().freshen(Instant::now());
                        self.publish_start().await;
                    } else if !now_connected && connected {
                        tracing::warn!("NATS connection lost; pruning suspended until it is back");
                    }
                    connected = now_connected;
                    if connected && last_prune.elapsed() >= prune_every {
                        last_prune = Instant::now();
                        let mut table = self.table.write();
                        let pruned = table.prune(last_prune, threshold);
                        if pruned > 0 {
                            tracing::info!(
                                pruned,
                                routes = table.len(),
                                "pruned backends not re-registered within {threshold:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    fn on_registration(&self, message: &async_nats::Message, register: bool) {
        let subject = message.subject.as_str();
        let checked = match check(&message.payload, self.limits) {
            Ok(checked) => checked,
            Err(error) => {
                tracing::warn!(subject, %error, "ignoring message");
                return;
            }
        };
        if let Some((uri, error)) = &checked.first_bad {
            tracing::warn!(
                subject,
                backend = %checked.addr,
                dropped = checked.bad_uris,
                "ignoring invalid uris, first {uri:?}: {error}"
            );
        }
        if register {
            let done = self.table.write().register(
                &checked.keys,
                checked.addr,
                &checked.origin,
                Instant::now(),
            );
            if done.refused > 0 {
                tracing::warn!(
                    backend = %checked.addr,
                    refused = done.refused,
                    "routing table full; routes refused"
                );
            }
            if done.added > 0 {
                tracing::debug!(backend = %checked.addr, added = done.added, "registered");
            }
        } else {
            let removed = self.table.write().unregister(&checked.keys, checked.addr);
            tracing::debug!(backend = %checked.addr, removed, "unregistered");
        }
    }

    /// Publishes `router.start`; a failure is logged, as agents re-register on their own
    /// timer anyway.
    pub async fn publish_start(&self) {
        if let Err(error) = self.nats.publish("router.start", self.start.clone()).await {
            tracing::warn!(%error, "could not publish router.start");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: MessageLimits = MessageLimits {
        max_bytes: 64 * 1024,
        max_uris: 10,
    };

    #[test]
    fn a_dea_registration_is_accepted() {
        let checked = check(
            br#"{"dea": "d", "app": "guid", "uris": ["App.Example.com", "app.example.com", "x:1"],
                "host": "10.0.0.5", "port": 61001, "tags": {"component": "dea-0"},
                "private_instance_id": "p", "unknown": true}"#,
            LIMITS,
        )
        .expect("accepted");
        assert_eq!(checked.addr, "10.0.0.5:61001".parse().expect("addr"));
        assert_eq!(
            checked.keys,
            [RouteKey::parse("app.example.com").expect("key")]
        );
        assert_eq!(checked.origin.app.as_deref(), Some("guid"));
        assert_eq!(checked.bad_uris, 1);
        let directory = check(
            br#"{"host": "::1", "port": 1, "uris": ["u.example.com"], "tags": {}}"#,
            LIMITS,
        )
        .expect("the directory server's registration has no app");
        assert_eq!(directory.origin, Origin::default());
    }

    #[test]
    fn hostile_messages_are_refused() {
        let many = format!(
            r#"{{"host": "10.0.0.1", "port": 1, "tags": {{}}, "uris": [{}]}}"#,
            ["\"a.b\""; 11].join(",")
        );
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "malformed"),
            (b"".to_vec(), "malformed"),
            (
                br#"{"host": "10.0.0.1", "port": 1, "tags": {}}"#.to_vec(),
                "uris",
            ),
            (
                br#"{"host": "10.0.0.1", "port": 0, "uris": ["a.b"], "tags": {}}"#.to_vec(),
                "port 0",
            ),
            (
                br#"{"host": "10.0.0.1", "port": 70000, "uris": ["a.b"], "tags": {}}"#.to_vec(),
                "malformed",
            ),
            (
                br#"{"host": "", "port": 1, "uris": ["a.b"], "tags": {}}"#.to_vec(),
                "not an IP",
            ),
            (
                br#"{"host": "evil.example", "port": 1, "uris": ["a.b"], "tags": {}}"#.to_vec(),
                "not an IP",
            ),
            (
                br#"{"host": "10.0.0.1", "port": 1, "uris": [], "tags": {}}"#.to_vec(),
                "no uris",
            ),
            (
                br#"{"host": "10.0.0.1", "port": 1, "uris": null, "tags": {}}"#.to_vec(),
                "malformed",
            ),
            (
                br#"{"host": "10.0.0.1", "port": 1, "uris": ["a.b:80", "c/../d"], "tags": {}}"#
                    .to_vec(),
                "no valid uri",
            ),
            (many.into_bytes(), "over the limit"),
            (vec![b' '; 64 * 1024 + 1], "over the limit"),
        ];
        for (payload, why) in cases {
            let error = check(&payload, LIMITS).expect_err("refused");
            assert!(
                error.to_string().contains(why),
                "{:?}: {error}",
                String::from_utf8_lossy(&payload[..payload.len().min(80)])
            );
        }
    }
}
