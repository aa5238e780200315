//! The proxy's certificate authority: created when the agent starts, trusted only inside the
//! containers it serves, and used to issue a certificate for each host a buildpack asks for,
//! so HTTPS downloads can be rewritten to mirrors like plain HTTP ones.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Why the CA could not do its job.
#[derive(Debug, thiserror::Error)]
#[error("proxy certificate authority: {0}")]
pub struct CaError(String);

/// A CA plus a cache of per-host TLS server configs.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    configs: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
}

impl CertificateAuthority {
    /// A new CA with a fresh key.
    pub fn generate() -> Result<CertificateAuthority, CaError> {
        let err = |e: rcgen::Error| CaError(e.to_string());
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "dea fetch proxy CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(CertificateAuthority {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
            configs: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate, PEM, for containers to trust.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A TLS server config presenting a certificate for `host` (a name or an IP address).
    pub fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, CaError> {
        let mut configs = match self.configs.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(config) = configs.get(host) {
            return Ok(config.clone());
        }
        let err = |e: rcgen::Error| CaError(e.to_string());
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(vec![host.to_string()]).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, host);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        let chain = vec![CertificateDer::from(cert.der().to_vec())];
        let key_der =
            PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| CaError(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| CaError(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| CaError(e.to_string()))?;
        let config = Arc::new(config);
        configs.insert(host.to_string(), config.clone());
        Ok(config)
    }
}
