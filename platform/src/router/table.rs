//! The routing table: which backends (`host:port` of app instances) serve which route, when
//! each was last registered, and whose turn it is. Pure logic, no I/O: the registry feeds it
//! from NATS and the proxy reads it per request, so time is always passed in.
//!
//! The table is bounded (routes, and backends per route), because anyone on the bus can
//! register: a flood of forged registrations fills it to the cap and no further, and routes
//! already there keep being refreshed.

use super::uri::RouteKey;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// How big the table may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Distinct routes (uris) in the table.
    pub max_routes: usize,
    /// Backends behind one route.
    pub max_backends_per_route: usize,
}

/// Who registered a backend, kept for diagnostics (`routes()`), not used for routing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub app: Option<String>,
    pub private_instance_id: Option<String>,
}

#[derive(Debug)]
struct Backend {
    addr: SocketAddr,
    last_seen: Instant,
    origin: Origin,
}

#[derive(Debug)]
struct Route {
    key: RouteKey,
    backends: Vec<Backend>,
    /// Round-robin position; atomic so that picking needs only a shared borrow of the table
    /// (the proxy holds a read lock, registrations take the write lock).
    next: AtomicUsize,
}

/// What one registration did to the table, per uri.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    /// Backends new to their route (including backends of new routes).
    pub added: usize,
    /// Backends that were there and had their last-seen time renewed.
    pub refreshed: usize,
    /// Uris refused because the table or the route was full.
    pub refused: usize,
}

/// One route as `RouterHandle::routes()` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteSnapshot {
    /// `host` or `host/path`, canonical.
    pub uri: String,
    pub backends: Vec<BackendSnapshot>,
}

/// One backend of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendSnapshot {
    pub addr: SocketAddr,
    pub app: Option<String>,
    pub private_instance_id: Option<String>,
    /// Time since the last registration, whole milliseconds.
    pub last_seen_ms_ago: u64,
}

/// Routes by host, then by path prefix (longest first, so the most specific route wins).
#[derive(Debug)]
pub struct RouteTable {
    limits: Limits,
    hosts: HashMap<String, Vec<Route>>,
    routes: usize,
}

impl RouteTable {
    pub fn new(limits: Limits) -> RouteTable {
        RouteTable {
            // A route exists only while it has a backend, so a route must hold at least one.
            limits: Limits {
                max_backends_per_route: limits.max_backends_per_route.max(1),
                ..limits
            },
            hosts: HashMap::new(),
            routes: 0,
        }
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes
    }

    /// Adds `addr` behind every route in `keys`, or renews its last-seen time where it is
    /// already there.
    pub fn register(
        &mut self,
        keys: &[RouteKey],
        addr: SocketAddr,
        origin: &Origin,
        now: Instant,
    ) -> Registered {
        let mut result = Registered::default();
        for key in keys {
            let full = self.routes >= self.limits.max_routes;
            let routes = self.hosts.entry(key.host.clone()).or_default();
            let route = match routes.iter().position(|r| r.key == *key) {
                Some(at) => &mut routes[at],
                None if full => {
                    if routes.is_empty() {
                        // `entry` just made it; a host with no routes must not linger.
                        self.hosts.remove(&key.host);
                    }
                    result.refused += 1;
                    continue;
                }
                None => {
                    let at = routes
                        .iter()
                        .position(|r| r.key.path.len() < key.path.len())
                        .unwrap_or(routes.len());
                    routes.insert(
                        at,
                        Route {
                            key: key.clone(),
                            backends: Vec::new(),
                            next: AtomicUsize::new(0),
                        },
                    );
                    self.routes += 1;
                    &mut routes[at]
                }
            };
            if let Some(backend) = route.backends.iter_mut().find(|b| b.addr == addr) {
                backend.last_seen = now;
                backend.origin.clone_from(origin);
                result.refreshed += 1;
            } else if route.backends.len() < self.limits.max_backends_per_route {
                route.backends.push(Backend {
                    addr,
                    last_seen: now,
                    origin: origin.clone(),
                });
                result.added += 1;
            } else {
                result.refused += 1;
            }
        }
        result
    }

    /// Removes `addr` from every route in `keys`; a route left without backends goes.
    /// Returns how many backends were removed.
    pub fn unregister(&mut self, keys: &[RouteKey], addr: SocketAddr) -> usize {
        let mut removed = 0;
        for key in keys {
            let Some(routes) = self.hosts.get_mut(&key.host) else {
                continue;
            };
            let Some(at) = routes.iter().position(|r| r.key == *key) else {
                continue;
            };
            let backends = &mut routes[at].backends;
            let before = backends.len();
            backends.retain(|b| b.addr != addr);
            removed += before - backends.len();
            // Only the touched route and host are checked: a registration must not cost a
            // walk over the whole table.
            if backends.is_empty() {
                routes.remove(at);
                self.routes -= 1;
                if routes.is_empty() {
                    self.hosts.remove(&key.host);
                }
            }
        }
        removed
    }

    /// Removes backends not registered within `threshold` of `now`. Returns how many went.
    pub fn prune(&mut self, now: Instant, threshold: Duration) -> usize {
        let mut removed = 0;
        for routes in self.hosts.values_mut() {
            for route in routes.iter_mut() {
                let before = route.backends.len();
                route
                    .backends
                    .retain(|b| now.saturating_duration_since(b.last_seen) <= threshold);
                removed += before - route.backends.len();
            }
        }
        if removed > 0 {
            self.drop_empty();
        }
        removed
    }

    /// Marks every backend as seen at `now`: after the bus was unreachable for a while, the
    /// missing registrations say nothing about the instances, so agents get a full prune
    /// threshold to re-register before anything is forgotten (gorouter did the same).
    pub fn freshen(&mut self, now: Instant) {
        for routes in self.hosts.values_mut() {
            for route in routes.iter_mut() {
                for backend in &mut route.backends {
                    backend.last_seen = now;
                }
            }
        }
    }

    /// The backends to try for a request, in order: the most specific route of `host` that
    /// serves `path` (both lowercase), starting at its round-robin position and going round
    /// once, at most `tries` of them. `None` if no route serves the request.
    pub fn pick(&self, host: &str, path: &str, tries: usize) -> Option<Vec<SocketAddr>> {
        let route = self.hosts.get(host)?.iter().find(|r| r.key.serves(path))?;
        let count = route.backends.len();
        if count == 0 {
            return None;
        }
        let start = route.next.fetch_add(1, Ordering::Relaxed) % count;
        Some(
            (0..count.min(tries.max(1)))
                .map(|i| route.backends[(start + i) % count].addr)
                .collect(),
        )
    }

    /// Every route with its backends, sorted by uri.
    pub fn snapshot(&self, now: Instant) -> Vec<RouteSnapshot> {
        let mut all: Vec<RouteSnapshot> = self
            .hosts
            .values()
            .flatten()
            .map(|route| RouteSnapshot {
                uri: route.key.to_string(),
                backends: route
                    .backends
                    .iter()
                    .map(|b| BackendSnapshot {
                        addr: b.addr,
                        app: b.origin.app.clone(),
                        private_instance_id: b.origin.private_instance_id.clone(),
                        last_seen_ms_ago: u64::try_from(
                            now.saturating_duration_since(b.last_seen).as_millis(),
                        )
                        .unwrap_or(u64::MAX),
                    })
                    .collect(),
            })
            .collect();
        all.sort_by(|a, b| a.uri.cmp(&b.uri));
        all
    }

    /// After a prune: routes without backends and hosts without routes go, so `len` counts
    /// live routes and a route whose last instance left answers 404.
    fn drop_empty(&mut self) {
        let mut dropped = 0;
        self.hosts.retain(|_, routes| {
            let before = routes.len();
            routes.retain(|r| !r.backends.is_empty());
            dropped += before - routes.len();
            !routes.is_empty()
        });
        self.routes -= dropped;
    }
}

/// The table as the proxy and the registry share it: many readers (each request), one
/// writer at a time (each registration), none holding the lock across an await.
#[derive(Debug, Clone)]
pub struct SharedTable(Arc<RwLock<RouteTable>>);

impl SharedTable {
    pub fn new(table: RouteTable) -> SharedTable {
        SharedTable(Arc::new(RwLock::new(table)))
    }

    // Every change to the table is complete before the guard drops and none panics midway,
    // so a poisoned lock still holds a consistent table.
    pub fn read(&self) -> RwLockReadGuard<'_, RouteTable> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, RouteTable> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uri: &str) -> RouteKey {
        RouteKey::parse(uri).expect("valid uri")
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn table() -> RouteTable {
        RouteTable::new(Limits {
            max_routes: 100,
            max_backends_per_route: 100,
        })
    }

    #[test]
    fn round_robin_goes_round_every_backend() {
        let mut table = table();
        let now = Instant::now();
        let app = [key("app.example.com")];
        for port in [1, 2, 3] {
            table.register(&app, addr(port), &Origin::default(), now);
        }
        let firsts: Vec<u16> = (0..6)
            .map(|_| table.pick("app.example.com", "/", 3).expect("route")[0].port())
            .collect();
        assert_eq!(firsts, [1, 2, 3, 1, 2, 3]);
        // The fallbacks after the first are the others, in turn.
        let order = table.pick("app.example.com", "/", 3).expect("route");
        assert_eq!(order, [addr(1), addr(2), addr(3)]);
        assert_eq!(
            table.pick("app.example.com", "/", 2).expect("route").len(),
            2
        );
        assert_eq!(table.pick("other.example.com", "/", 3), None);
    }

    #[test]
    fn registering_twice_refreshes_and_unregister_removes() {
        let mut table = table();
        let start = Instant::now();
        let uris = [key("a.example.com"), key("b.example.com")];
        let first = table.register(&uris, addr(1), &Origin::default(), start);
        assert_eq!((first.added, first.refreshed), (2, 0));
        let again = table.register(&uris, addr(1), &Origin::default(), start);
        assert_eq!((again.added, again.refreshed), (0, 2));
        table.register(&uris[..1], addr(2), &Origin::default(), start);
        assert_eq!(table.len(), 2);

        assert_eq!(table.unregister(&uris, addr(1)), 2);
        assert_eq!(table.pick("a.example.com", "/", 3), Some(vec![addr(2)]));
        // b lost its only backend, so the route is gone (a 404, not a 502).
        assert_eq!(table.pick("b.example.com", "/", 3), None);
        assert_eq!(table.len(), 1);
        assert_eq!(table.unregister(&uris, addr(9)), 0);
    }

    #[test]
    fn prune_forgets_what_was_not_refreshed() {
        let mut table = table();
        let start = Instant::now();
        let app = [key("app.example.com")];
        table.register(&app, addr(1), &Origin::default(), start);
        table.register(&app, addr(2), &Origin::default(), start);
        let later = start + Duration::from_secs(100);
        table.register(&app, addr(2), &Origin::default(), later);
        let threshold = Duration::from_secs(120);
        assert_eq!(table.prune(start + Duration::from_secs(120), threshold), 0);
        assert_eq!(table.prune(start + Duration::from_secs(121), threshold), 1);
        assert_eq!(table.pick("app.example.com", "/", 3), Some(vec![addr(2)]));
        assert_eq!(table.prune(later + Duration::from_secs(121), threshold), 1);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn freshen_gives_every_backend_a_new_threshold() {
        let mut table = table();
        let start = Instant::now();
        table.register(&[key("a.b")], addr(1), &Origin::default(), start);
        let back = start + Duration::from_secs(500);
        table.freshen(back);
        assert_eq!(
            table.prune(back + Duration::from_secs(60), Duration::from_secs(120)),
            0
        );
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn caps_refuse_new_routes_and_backends_but_keep_refreshing() {
        let mut table = RouteTable::new(Limits {
            max_routes: 2,
            max_backends_per_route: 2,
        });
        let now = Instant::now();
        let origin = Origin::default();
        let three = [key("a.x"), key("b.x"), key("c.x")];
        let result = table.register(&three, addr(1), &origin, now);
        assert_eq!((result.added, result.refused), (2, 1));
        assert_eq!(table.len(), 2);
        assert_eq!(table.pick("c.x", "/", 3), None);
        assert!(
            !table.hosts.contains_key("c.x"),
            "a refused route leaves no empty host behind"
        );
        table.register(&three[..1], addr(2), &origin, now);
        let result = table.register(&three[..1], addr(3), &origin, now);
        assert_eq!(result.refused, 1, "route a.x already has two backends");
        let result = table.register(&three, addr(1), &origin, now);
        assert_eq!((result.refreshed, result.refused), (2, 1));
        // Once a route goes, there is room again.
        table.unregister(&three[1..2], addr(1));
        let result = table.register(&three[2..], addr(1), &origin, now);
        assert_eq!(result.added, 1);
    }

    #[test]
    fn hosts_are_case_insensitive_and_longest_path_wins() {
        let mut table = table();
        let now = Instant::now();
        let origin = Origin::default();
        table.register(&[key("App.Example.com")], addr(1), &origin, now);
        table.register(&[key("app.example.com/API")], addr(2), &origin, now);
        table.register(&[key("app.example.com/api/v2")], addr(3), &origin, now);
        let first = |path: &str| table.pick("app.example.com", path, 1).map(|a| a[0].port());
        assert_eq!(first("/"), Some(1));
        assert_eq!(first("/apis"), Some(1));
        assert_eq!(first("/api"), Some(2));
        assert_eq!(first("/api/v1/x"), Some(2));
        assert_eq!(first("/api/v2/x"), Some(3));
    }

    #[test]
    fn snapshot_lists_routes_with_their_origin() {
        let mut table = table();
        let now = Instant::now();
        let origin = Origin {
            app: Some("guid".into()),
            private_instance_id: Some("p".into()),
        };
        table.register(&[key("b.x"), key("a.x/p")], addr(1), &origin, now);
        let snapshot = table.snapshot(now + Duration::from_millis(5));
        assert_eq!(
            snapshot.iter().map(|r| r.uri.as_str()).collect::<Vec<_>>(),
            ["a.x/p", "b.x"]
        );
        assert_eq!(snapshot[0].backends[0].app.as_deref(), Some("guid"));
        assert_eq!(snapshot[0].backends[0].last_seen_ms_ago, 5);
    }
}
