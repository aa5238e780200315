//! The `directory_server` section of the agent's configuration.

use super::UrlSigner;
use serde::Deserialize;
use std::time::Duration;

/// The directory server: where it listens, how its URLs look, how long they live.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectoryServerConfig {
    /// Serve instance and staging files at all.
    pub enabled: bool,
    /// Address to bind. The router reaches the server here (the DEA binds its local IP).
    pub listen: String,
    /// Port to bind (the DEA's `v2_port`); 0 means any free port.
    pub port: u16,
    /// Scheme of the generated URLs (`http` or `https`, whatever the router speaks); the
    /// server itself speaks plain HTTP.
    pub protocol: String,
    /// URLs are `<protocol>://<uuid>.<domain>/…`, the uuid being the agent's directory-server id.
    pub domain: String,
    /// Signing key. Unset: a random key per process, as the DEA does, so URLs die with the
    /// process. Set: URLs survive a restart of the agent.
    pub hmac_key: Option<String>,
    /// Seconds a `tail` stream may stay idle before the connection is closed (0 means 60).
    pub streaming_timeout_secs: u64,
    /// Seconds a signed URL stays valid after its timestamp.
    pub url_lifetime_secs: u64,
    /// Seconds a client has to send a whole request head, counted from when the connection
    /// opens or its previous answer ends (0 means 20): a connection that sends nothing, or
    /// a head a byte at a time, is closed then.
    pub header_timeout_secs: u64,
    /// Seconds an answer may wait for a client that does not read before the connection is
    /// closed (0 means 60): no progress at all for that long, not the whole transfer.
    pub send_timeout_secs: u64,
    /// Connections served at once; more wait in the listen queue (0 means 1024).
    pub max_connections: u32,
}

impl Default for DirectoryServerConfig {
    fn default() -> Self {
        DirectoryServerConfig {
            enabled: true,
            listen: "127.0.0.1".into(),
            port: 34567,
            protocol: "http".into(),
            domain: "dea.local".into(),
            hmac_key: None,
            streaming_timeout_secs: 60,
            url_lifetime_secs: 3600,
            header_timeout_secs: 20,
            send_timeout_secs: 60,
            max_connections: 1024,
        }
    }
}

impl DirectoryServerConfig {
    /// The signer for this configuration: the configured key, else a fresh random one.
    pub fn signer(&self) -> UrlSigner {
        match &self.hmac_key {
            Some(key) => UrlSigner::new(key.as_bytes()),
            None => UrlSigner::random(),
        }
    }

    /// `<protocol>://<uuid>.<domain>`, the base of every URL this agent hands out.
    pub fn external_base(&self, uuid: &str) -> String {
        format!("{}://{uuid}.{}", self.protocol, self.domain)
    }

    /// A base URL reachable from this machine: the listen address, or loopback when the server
    /// listens on every address.
    pub fn local_base(&self, port: u16) -> String {
        let host = match self.listen.parse::<std::net::IpAddr>() {
            Ok(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
            Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
            _ => self.listen.clone(),
        };
        format!("http://{host}:{port}")
    }

    /// The idle limit of a `tail` stream; 0 means 60 s, as in the DEA's Go server.
    pub fn streaming_timeout(&self) -> Duration {
        match self.streaming_timeout_secs {
            0 => Duration::from_secs(60),
            secs => Duration::from_secs(secs),
        }
    }

    /// How long a request head may take; 0 means 20 s (nginx's `client_header_timeout` is
    /// 60 s; a signed GET's head is a few hundred bytes).
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(match self.header_timeout_secs {
            0 => 20,
            secs => secs,
        })
    }

    /// How long an answer may make no progress; 0 means 60 s (nginx's `send_timeout`).
    pub fn send_timeout(&self) -> Duration {
        Duration::from_secs(match self.send_timeout_secs {
            0 => 60,
            secs => secs,
        })
    }

    /// Connections served at once; 0 means 1024.
    pub fn max_connections(&self) -> usize {
        match self.max_connections {
            0 => 1024,
            n => n as usize,
        }
    }

    pub fn url_lifetime(&self) -> Duration {
        Duration::from_secs(self.url_lifetime_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let config: DirectoryServerConfig = serde_yaml_ng::from_str("{}").expect("parses");
        assert!(config.enabled);
        assert_eq!(config.port, 34567);
        assert_eq!(config.listen, "127.0.0.1");
        assert_eq!(config.streaming_timeout(), Duration::from_secs(60));
        assert_eq!(config.url_lifetime(), Duration::from_secs(3600));
        assert_eq!(config.external_base("u1"), "http://u1.dea.local");
        let config: DirectoryServerConfig = serde_yaml_ng::from_str(
            "streaming_timeout_secs: 0\nhmac_key: s3cret\nlisten: 0.0.0.0\n",
        )
        .expect("parses");
        assert_eq!(config.streaming_timeout(), Duration::from_secs(60));
        assert_eq!(config.signer().key(), b"s3cret");
        assert_eq!(config.local_base(8), "http://127.0.0.1:8");
        assert!(serde_yaml_ng::from_str::<DirectoryServerConfig>("prot: http\n").is_err());
    }
}
