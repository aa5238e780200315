//! How an instance is reached, and what it may reach — enforced by the kernel, not by the
//! agent's process.
//!
//! Each instance gets a veth pair: one end (`dh<id>`) on the host with the first address of
//! a /30 from `instances.network`, the other as `eth0` in the instance's network namespace
//! with the second. Its published port is a DNAT element in an nftables map: traffic to
//! `publish_address:host_port` — from the router on this host (nat `output`) or from outside
//! (nat `prerouting`) — goes straight to `<instance ip>:8080`. The agent is not in the data
//! path, so apps keep serving while it restarts, and traffic survives `kill -9`.
//!
//! Nothing flows the other way unless the operator (or the controller, per app) allows it:
//! an instance has no default route, packets from a `dh*` interface to the host itself are
//! dropped (except replies), and forwarding from one is dropped unless an egress rule — CF's
//! application security groups: protocol, destination CIDR or range, ports — accepts it; then
//! the instance gets a default route and its traffic is masqueraded.
//!
//! Addresses are taken host-wide under a lock file and checked against the addresses the
//! kernel already has, so several agents (or test runs) on one host never collide; host
//! ports are reserved with a bound (never listening) socket for as long as the instance runs.
//! Each agent has its own nftables table (named after its state directory); its chains are
//! rewritten at start, its map elements — the published instances — are left alone, since
//! the instances they lead to outlive the agent.

use crate::config::{EgressProtocol, EgressRule};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

/// The port apps listen on inside their network namespace.
pub const CONTAINER_PORT: u16 = 8080;

/// Why an instance's network could not be set up or torn down.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("no free address left in {subnet}")]
    NoAddress { subnet: String },
    #[error("no free host port in {first}-{last}")]
    NoPort { first: u16, last: u16 },
    #[error("host port {port} is taken: {source}")]
    PortTaken {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid egress rule {rule}: {reason}")]
    BadRule { rule: String, reason: String },
    #[error("invalid instances.network {0:?} (want an IPv4 CIDR of /8 to /28)")]
    BadSubnet(String),
    #[error("network lock {path}: {source}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The network settings of one agent.
#[derive(Debug, Clone)]
pub struct NetworkSettings {
    /// Where instance addresses come from (one /30 each).
    pub subnet: String,
    /// Host ports handed out when a start asks for none.
    pub port_range: (u16, u16),
    /// The host address ports are published on (`0.0.0.0`: every local address).
    pub publish_address: Ipv4Addr,
    /// Egress every instance is allowed (the platform-wide security groups).
    pub egress: Vec<EgressRule>,
    /// This agent's nftables table.
    pub table: String,
}

impl NetworkSettings {
    /// The table name for an agent whose state lives in `base_dir`.
    pub fn table_for(base_dir: &Path) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(base_dir.as_os_str().as_encoded_bytes());
        format!("dea_{}", &hex::encode(digest)[..10])
    }
}

/// An instance's network as set up, recorded in the snapshot so a restarted agent can
/// re-attach or tear it down.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Attached {
    pub host_if: String,
    pub host_ip: String,
    pub container_ip: String,
    pub host_port: u16,
    /// Whether the instance has a route out (some egress rule applies).
    pub egress: bool,
}

impl Attached {
    /// `ip:8080`, where the host reaches the app directly (health checks).
    pub fn app_address(&self) -> String {
        format!("{}:{CONTAINER_PORT}", self.container_ip)
    }
}

/// Keeps a host port taken while its instance runs: a bound socket that never listens, so
/// nobody else can bind the port, and a connection that somehow escaped the DNAT is refused
/// rather than left hanging.
#[derive(Debug)]
pub struct PortReservation(#[allow(dead_code)] Option<socket2::Socket>);

/// One agent's view of instance networking.
#[derive(Debug)]
pub struct Network {
    settings: NetworkSettings,
    base: u32,
    blocks: u32,
}

const LOCK_PATH: &str = "/run/lock/dea-network.lock";

impl Network {
    pub fn new(settings: NetworkSettings) -> Result<Network, NetworkError> {
        let bad = || NetworkError::BadSubnet(settings.subnet.clone());
        let (addr, prefix) = settings.subnet.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u32 = prefix.parse().map_err(|_| bad())?;
        if !(8..=28).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        for rule in &settings.egress {
            nft_match(rule)?;
        }
        Ok(Network {
            base: u32::from(addr) & mask,
            blocks: 1 << (30 - prefix),
            settings,
        })
    }

    pub fn settings(&self) -> &NetworkSettings {
        &self.settings
    }

    /// Creates (or rewrites) this agent's table and chains. Map elements, the published
    /// instances, are kept: their instances may have outlived a previous agent.
    pub fn install(&self) -> Result<(), NetworkError> {
        let t = &self.settings.table;
        let publish = match self.settings.publish_address {
            any if any.is_unspecified() => "fib daddr type local tcp dport map @published_any",
            _ => "ip daddr . tcp dport map @published",
        };
        let script = format!(
            "add table ip {t}
add map ip {t} published {{ type ipv4_addr . inet_service : ipv4_addr . inet_service; }}
add map ip {t} published_any {{ type inet_service : ipv4_addr . inet_service; }}
add map ip {t} egress {{ type ifname : verdict; }}
add set ip {t} ifaces {{ type ifname; }}
add chain ip {t} output {{ type nat hook output priority -100; policy accept; }}
add chain ip {t} prerouting {{ type nat hook prerouting priority -100; policy accept; }}
add chain ip {t} postrouting {{ type nat hook postrouting priority 100; policy accept; }}
add chain ip {t} input {{ type filter hook input priority 0; policy accept; }}
add chain ip {t} forward {{ type filter hook forward priority 0; policy accept; }}
flush chain ip {t} output
flush chain ip {t} prerouting
flush chain ip {t} postrouting
flush chain ip {t} input
flush chain ip {t} forward
add rule ip {t} output dnat ip to {publish}
add rule ip {t} prerouting dnat ip to {publish}
add rule ip {t} postrouting oifname @ifaces ip saddr 127.0.0.0/8 masquerade
add rule ip {t} postrouting iifname @ifaces oifname != @ifaces masquerade
add rule ip {t} input iifname @ifaces ct state established,related accept
add rule ip {t} input iifname @ifaces drop
add rule ip {t} forward oifname @ifaces ct state established,related accept
add rule ip {t} forward oifname @ifaces ct status dnat accept
add rule ip {t} forward iifname @ifaces ct state established,related accept
add rule ip {t} forward iifname @ifaces iifname vmap @egress
add rule ip {t} forward iifname @ifaces drop
add rule ip {t} forward oifname @ifaces drop
"
        );
        nft(&script)
    }

    /// Removes this agent's table, unless some instance is still published through it
    /// (another `dea run` sharing the state directory, say).
    pub fn uninstall(&self) -> Result<(), NetworkError> {
        let t = &self.settings.table;
        for map in ["published", "published_any"] {
            let listing = run("nft", &["list", "map", "ip", t, map])?;
            if listing.contains("elements") {
                return Ok(());
            }
        }
        nft(&format!("delete table ip {t}"))
    }

    /// Gives the instance in network namespace `netns` its veth pair, address, published
    /// port (reserved with [`Network::reserve_port`]) and egress. Blocking.
    pub fn attach(
        &self,
        netns: &str,
        instance_id: &str,
        port: (PortReservation, u16),
        app_egress: &[EgressRule],
    ) -> Result<(Attached, PortReservation), NetworkError> {
        for rule in app_egress {
            nft_match(rule)?;
        }
        let host_if = interface_name(instance_id);
        let lock = HostLock::acquire()?;
        let (host_ip, container_ip) = self.free_block()?;
        let reservation = port;
        // One `ip` process per side of the pair, not one per step: each costs a
        // millisecond or more of an instance's start.
        ip_batch(
            None,
            &[
                format!("link add {host_if} type veth peer name eth0 netns {netns}"),
                format!("addr add {host_ip}/30 dev {host_if}"),
                format!("link set {host_if} up"),
            ],
        )?;
        drop(lock);
        let host_port = reservation.1;
        let attached = Attached {
            host_if: host_if.clone(),
            host_ip: host_ip.to_string(),
            container_ip: container_ip.to_string(),
            host_port,
            egress: !(self.settings.egress.is_empty() && app_egress.is_empty()),
        };
        let result = self.finish_attach(netns, &attached, app_egress);
        if let Err(e) = result {
            self.detach(&attached);
            return Err(e);
        }
        Ok((attached, reservation.0))
    }

    fn finish_attach(
        &self,
        netns: &str,
        attached: &Attached,
        app_egress: &[EgressRule],
    ) -> Result<(), NetworkError> {
        let host_if = &attached.host_if;
        // Locally sent packets to 127.0.0.1 are DNATed to the instance: this interface must
        // accept routing a loopback source (masqueraded on the way out).
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{host_if}/route_localnet"),
            "1",
        );
        let mut inside = vec![
            format!("addr add {}/30 dev eth0", attached.container_ip),
            "link set eth0 up".to_string(),
        ];
        if attached.egress {
            inside.push(format!("route add default via {}", attached.host_ip));
        }
        // The namespace's side and the host's rules do not depend on each other: the two
        // processes run at once (each is milliseconds of a start).
        let configured = std::thread::scope(|scope| {
            let inside = scope.spawn(|| ip_batch(Some(netns), &inside));
            let rules = self
                .rules_for(attached, app_egress)
                .and_then(|script| nft(&script));
            let inside = inside.join().unwrap_or_else(|_| {
                Err(NetworkError::Command {
                    command: format!("ip -n {netns} -batch -"),
                    message: "thread panicked".into(),
                })
            });
            rules.and(inside)
        });
        configured?;
        if attached.egress {
            // Egress leaves through the host: it must forward (for these rules only; the
            // forward chain drops everything else from an instance).
            let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
        }
        Ok(())
    }

    /// The nftables script that publishes an attached instance and applies its egress.
    fn rules_for(
        &self,
        attached: &Attached,
        app_egress: &[EgressRule],
    ) -> Result<String, NetworkError> {
        let host_if = &attached.host_if;
        let t = &self.settings.table;
        // The interface joins this agent's set first: every rule of this table matches it by
        // that set, so other agents' tables (on the same host) never judge its traffic.
        let mut script = format!("add element ip {t} ifaces {{ \"{host_if}\" }}\n");
        script.push_str(&self.publish_element("add", attached));
        if attached.egress {
            let chain = egress_chain(host_if);
            script.push_str(&format!(
                "add chain ip {t} {chain}\nflush chain ip {t} {chain}\n"
            ));
            for rule in self.settings.egress.iter().chain(app_egress) {
                script.push_str(&format!(
                    "add rule ip {t} {chain} {} accept\n",
                    nft_match(rule)?
                ));
            }
            script.push_str(&format!(
                "add element ip {t} egress {{ \"{host_if}\" : jump {chain} }}\n"
            ));
        }
        Ok(script)
    }

    fn publish_element(&self, verb: &str, attached: &Attached) -> String {
        let t = &self.settings.table;
        let target = format!("{} . {CONTAINER_PORT}", attached.container_ip);
        match self.settings.publish_address {
            any if any.is_unspecified() => format!(
                "{verb} element ip {t} published_any {{ {} : {target} }}\n",
                attached.host_port
            ),
            address => format!(
                "{verb} element ip {t} published {{ {address} . {} : {target} }}\n",
                attached.host_port
            ),
        }
    }

    /// After an agent restart: checks the instance's interface is still there, re-reserves
    /// its port and puts its DNAT element back if it went missing.
    pub fn reattach(&self, attached: &Attached) -> Result<PortReservation, NetworkError> {
        if !Path::new("/sys/class/net").join(&attached.host_if).exists() {
            return Err(NetworkError::Command {
                command: format!("ip link show {}", attached.host_if),
                message: "the instance's interface is gone".into(),
            });
        }
        // Another process may have bound the port while no agent held it: the instance's
        // traffic still reaches it through its DNAT element, so it keeps running (killing
        // a healthy app over a listener nobody is sent traffic for would be worse), and
        // only the reservation is missing.
        let reservation = match bind_port(self.settings.publish_address, attached.host_port) {
            Ok(reservation) => reservation,
            Err(e) => {
                tracing::warn!(
                    "instance port {} is bound by another process; re-attached without \
                     holding it: {e}",
                    attached.host_port
                );
                PortReservation(None)
            }
        };
        let t = &self.settings.table;
        let mut script = format!("add element ip {t} ifaces {{ \"{}\" }}\n", attached.host_if);
        script.push_str(&self.publish_element("add", attached));
        nft(&script)?;
        Ok(reservation)
    }

    /// Removes the instance's DNAT element, egress chain and interface; whatever is already
    /// gone is fine. The namespace itself goes with [`crate::netns::NetNamespace`].
    pub fn detach(&self, attached: &Attached) {
        let t = &self.settings.table;
        let mut script = self.publish_element("delete", attached);
        script.push_str(&format!(
            "delete element ip {t} ifaces {{ \"{}\" }}\n",
            attached.host_if
        ));
        if attached.egress {
            let chain = egress_chain(&attached.host_if);
            script.push_str(&format!(
                "delete element ip {t} egress {{ \"{}\" }}\n",
                attached.host_if
            ));
            script.push_str(&format!("delete chain ip {t} {chain}\n"));
        }
        // One statement at a time: a missing element must not keep the rest from going.
        for line in script.lines() {
            let _ = nft(line);
        }
        let _ = ip(&["link", "del", &attached.host_if]);
    }

    /// The first /30 of the subnet that no interface on this host uses.
    fn free_block(&self) -> Result<(Ipv4Addr, Ipv4Addr), NetworkError> {
        let taken = host_addresses()?;
        for block in 0..self.blocks {
            let start = self.base + block * 4;
            let used = (start..start + 4).any(|a| taken.contains(&Ipv4Addr::from(a)));
            if !used {
                return Ok((Ipv4Addr::from(start + 1), Ipv4Addr::from(start + 2)));
            }
        }
        Err(NetworkError::NoAddress {
            subnet: self.settings.subnet.clone(),
        })
    }

    /// Holds `requested` (or, for 0, the first free port of the range) on the publish
    /// address until the instance's rules take over.
    pub fn reserve_port(
        &self,
        requested: u16,
        published: &std::collections::HashSet<u16>,
    ) -> Result<(PortReservation, u16), NetworkError> {
        let address = self.settings.publish_address;
        if requested != 0 {
            return bind_port(address, requested).map(|r| (r, requested));
        }
        let (first, last) = self.settings.port_range;
        // Ports of this agent's instances are skipped even when they could be bound: one
        // re-attached without its reservation still owns its DNAT element.
        for port in (first..=last).filter(|port| !published.contains(port)) {
            if let Ok(reservation) = bind_port(address, port) {
                return Ok((reservation, port));
            }
        }
        Err(NetworkError::NoPort { first, last })
    }
}

/// `dh` + 12 hex digits of the instance id: unique on the host, within IFNAMSIZ.
fn interface_name(instance_id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(instance_id.as_bytes());
    format!("dh{}", &hex::encode(digest)[..12])
}

fn egress_chain(host_if: &str) -> String {
    format!("egress_{host_if}")
}

fn bind_port(address: Ipv4Addr, port: u16) -> Result<PortReservation, NetworkError> {
    let taken = |source| NetworkError::PortTaken { port, source };
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).map_err(taken)?;
    let address = std::net::SocketAddr::from((address, port));
    socket.bind(&address.into()).map_err(taken)?;
    Ok(PortReservation(Some(socket)))
}

/// The nftables match for one egress rule, built only from parsed values (the rule's text
/// never reaches nft as it came).
fn nft_match(rule: &EgressRule) -> Result<String, NetworkError> {
    let bad = |reason: &str| NetworkError::BadRule {
        rule: format!("{rule:?}"),
        reason: reason.to_string(),
    };
    let destination = match rule.destination.split_once('-') {
        Some((from, to)) => {
            let from: Ipv4Addr = from.trim().parse().map_err(|_| bad("bad range start"))?;
            let to: Ipv4Addr = to.trim().parse().map_err(|_| bad("bad range end"))?;
            if u32::from(from) > u32::from(to) {
                return Err(bad("range ends before it starts"));
            }
            format!("{from}-{to}")
        }
        None => match rule.destination.split_once('/') {
            Some((address, prefix)) => {
                let address: Ipv4Addr = address.parse().map_err(|_| bad("bad address"))?;
                let prefix: u8 = prefix.parse().map_err(|_| bad("bad prefix"))?;
                if prefix > 32 {
                    return Err(bad("prefix over 32"));
                }
                let mask = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - prefix)
                };
                format!("{}/{prefix}", Ipv4Addr::from(u32::from(address) & mask))
            }
            None => rule
                .destination
                .trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| bad("bad address"))?
                .to_string(),
        },
    };
    let ports = match &rule.ports {
        None => None,
        Some(text) if text.trim().is_empty() => None,
        Some(text) => {
            let mut parts = Vec::new();
            for part in text.split(',') {
                let part = part.trim();
                let parsed = match part.split_once('-') {
                    Some((a, b)) => {
                        let a: u16 = a.trim().parse().map_err(|_| bad("bad port"))?;
                        let b: u16 = b.trim().parse().map_err(|_| bad("bad port"))?;
                        if a > b {
                            return Err(bad("port range ends before it starts"));
                        }
                        format!("{a}-{b}")
                    }
                    None => part
                        .parse::<u16>()
                        .map_err(|_| bad("bad port"))?
                        .to_string(),
                };
                parts.push(parsed);
            }
            Some(parts.join(", "))
        }
    };
    let protocol = match (rule.protocol, ports) {
        (EgressProtocol::Tcp, Some(ports)) => format!(" tcp dport {{ {ports} }}"),
        (EgressProtocol::Udp, Some(ports)) => format!(" udp dport {{ {ports} }}"),
        (EgressProtocol::Tcp, None) => " ip protocol tcp".into(),
        (EgressProtocol::Udp, None) => " ip protocol udp".into(),
        (EgressProtocol::Icmp, _) => " ip protocol icmp".into(),
        (EgressProtocol::All, Some(_)) => return Err(bad("ports need tcp or udp")),
        (EgressProtocol::All, None) => String::new(),
    };
    Ok(format!("ip daddr {destination}{protocol}"))
}

/// IPv4 addresses configured on this host's interfaces.
fn host_addresses() -> Result<HashSet<Ipv4Addr>, NetworkError> {
    // getifaddrs(3) (one netlink dump), not `ip -4 addr show`: a process per start.
    let addresses = nix::ifaddrs::getifaddrs().map_err(|e| NetworkError::Command {
        command: "getifaddrs".into(),
        message: e.to_string(),
    })?;
    Ok(addresses
        .filter_map(|interface| {
            let address = interface.address?;
            address.as_sockaddr_in().map(|inet| inet.ip())
        })
        .collect())
}

/// A host-wide lock around taking addresses and ports (other agents, other test runs).
struct HostLock(#[allow(dead_code)] std::fs::File);

impl HostLock {
    fn acquire() -> Result<HostLock, NetworkError> {
        let lock_err = |source| NetworkError::Lock {
            path: LOCK_PATH.into(),
            source,
        };
        if let Some(dir) = Path::new(LOCK_PATH).parent() {
            std::fs::create_dir_all(dir).map_err(lock_err)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_PATH)
            .map_err(lock_err)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| lock_err(e.into()))?;
        Ok(HostLock(file))
    }
}

fn ip(args: &[&str]) -> Result<(), NetworkError> {
    run("ip", args).map(|_| ())
}

/// Runs `ip` commands (without the leading `ip`) in order in one process, in namespace
/// `netns` when given; stops at the first that fails. The names and addresses in them are
/// the agent's own (interface names from instance ids, addresses from its subnet), never a
/// tenant's words, so a line cannot be split or extended.
fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<(), NetworkError> {
    let mut args = Vec::new();
    if let Some(netns) = netns {
        args.extend(["-n", netns]);
    }
    args.extend(["-batch", "-"]);
    let script = lines.join("\n") + "\n";
    piped("ip", &args, &script)
}

fn run(program: &str, args: &[&str]) -> Result<String, NetworkError> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetworkError::Command {
            command: format!("{program} {}", args.join(" ")),
            message: e.to_string(),
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(NetworkError::Command {
            command: format!("{program} {}", args.join(" ")),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Runs an nftables script (`nft -f -`), atomically.
fn nft(script: &str) -> Result<(), NetworkError> {
    piped("nft", &["-f", "-"], script)
}

/// Runs `program` with `script` on its standard input; its error output (and the script)
/// make the error.
fn piped(program: &str, args: &[&str], script: &str) -> Result<(), NetworkError> {
    let failed = |message: String| NetworkError::Command {
        command: format!("{program} {}", args.join(" ")),
        message,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("{e} (is {program} installed?)")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| failed(e.to_string()))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(failed(format!(
            "{}\n{script}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(protocol: EgressProtocol, destination: &str, ports: Option<&str>) -> EgressRule {
        EgressRule {
            protocol,
            destination: destination.into(),
            ports: ports.map(str::to_string),
        }
    }

    #[test]
    fn egress_rules_become_matches_built_from_parsed_values() {
        assert_eq!(
            nft_match(&rule(
                EgressProtocol::Tcp,
                "10.1.2.3/16",
                Some("80, 8000-9000")
            ))
            .expect("valid"),
            "ip daddr 10.1.0.0/16 tcp dport { 80, 8000-9000 }"
        );
        assert_eq!(
            nft_match(&rule(EgressProtocol::All, "10.0.0.1-10.0.0.9", None)).expect("valid"),
            "ip daddr 10.0.0.1-10.0.0.9"
        );
        for (destination, ports) in [
            ("10.0.0.1; flush ruleset", None),
            ("10.0.0.0/33", None),
            ("10.0.0.9-10.0.0.1", None),
            ("10.0.0.1", Some("80 } accept; drop {")),
            ("10.0.0.1", Some("70000")),
        ] {
            assert!(
                nft_match(&rule(EgressProtocol::Tcp, destination, ports)).is_err(),
                "{destination} {ports:?}"
            );
        }
    }

    #[test]
    fn subnets_and_names() {
        let settings = |subnet: &str| NetworkSettings {
            subnet: subnet.into(),
            port_range: (61001, 65535),
            publish_address: Ipv4Addr::LOCALHOST,
            egress: Vec::new(),
            table: "t".into(),
        };
        let network = Network::new(settings("10.254.7.9/16")).expect("valid");
        assert_eq!(network.blocks, 16384);
        assert_eq!(Ipv4Addr::from(network.base), Ipv4Addr::new(10, 254, 0, 0));
        assert!(Network::new(settings("10.254.0.0/30")).is_err());
        assert!(Network::new(settings("nonsense")).is_err());
        assert_eq!(interface_name("abc").len(), 14);
        assert!(NetworkSettings::table_for(Path::new("/var/lib/dea")).starts_with("dea_"));
    }
}
