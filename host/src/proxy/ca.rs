//! The proxy's certificate authority: created when the agent starts, trusted only inside the
//! containers it serves, and used to issue a certificate for each host a buildpack asks for,
//! so HTTPS downloads can be rewritten to mirrors like plain HTTP ones.
//!
//! The host names come from untrusted `CONNECT` requests, so a name is checked before anything
//! is issued for it, and the issued configs are kept in a bounded LRU cache: a buildpack that
//! CONNECTs to 40,000 made-up names costs key generations, not memory.

use crate::fetch::url_rules::valid_host;
use lru::LruCache;
use parking_lot::{Mutex, MutexGuard};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::num::NonZeroUsize;
use std::sync::Arc;

/// How many hosts' certificates are kept; the least recently used is issued again when it is
/// asked for after falling out.
pub const CACHED_HOSTS: NonZeroUsize = match NonZeroUsize::new(256) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

/// Why the CA could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("proxy certificate authority: {host:?} is not a DNS name or IP address")]
    InvalidHost { host: String },
    #[error("proxy certificate authority: issuing a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("proxy certificate authority: TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A CA plus a bounded cache of per-host TLS server configs.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    configs: Mutex<LruCache<String, Arc<rustls::ServerConfig>>>,
}

impl CertificateAuthority {
    /// A new CA with a fresh key.
    pub fn generate() -> Result<CertificateAuthority, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "dea fetch proxy CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
            configs: Mutex::new(LruCache::new(CACHED_HOSTS)),
        })
    }

    /// The CA certificate, PEM, for containers to trust.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// How many hosts' configs are cached now (at most [`CACHED_HOSTS`]).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<String, Arc<rustls::ServerConfig>>> {
        self.configs.lock()
    }

    /// A TLS server config presenting a certificate for `host` (a DNS name or an IP address,
    /// IPv6 without brackets).
    pub fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, CaError> {
        if !valid_host(host) {
            return Err(CaError::InvalidHost {
                host: crate::fetch::url_rules::sanitize(host),
            });
        }
        let host = host.to_ascii_lowercase();
        if let Some(config) = self.lock().get(&host) {
            return Ok(config.clone());
        }
        // Issued outside the lock: key generation takes a while and other connections need
        // not wait for it. Two racing issues for one host both work; the later one is kept.
        let config = Arc::new(self.issue(&host)?);
        self.lock().put(host, config.clone());
        Ok(config)
    }

    fn issue(&self, host: &str) -> Result<rustls::ServerConfig, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![host.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, host);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_and_names_are_checked() {
        let ca = CertificateAuthority::generate().expect("ca");
        for i in 0..CACHED_HOSTS.get() + 20 {
            ca.server_config(&format!("h{i}.example")).expect("issue");
        }
        assert_eq!(ca.len(), CACHED_HOSTS.get());
        ca.server_config("127.0.0.1").expect("IPv4");
        ca.server_config("::1").expect("IPv6");
        for bad in ["", "a..b", "bad!host", "-x.example", "a b", "x\u{1b}[31m"] {
            assert!(
                matches!(ca.server_config(bad), Err(CaError::InvalidHost { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(ca.len(), CACHED_HOSTS.get());
    }
}
