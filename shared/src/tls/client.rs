//! The outbound half: paystream's own clients (to the vault, to the acquirer) trust the
//! system's roots plus `PAYSTREAM_CA_CERT`, so an https URL signed by a private CA (the local
//! one of `paystream up --tls`, or a company's) works without turning verification off.

use std::path::Path;

use crate::config::ConfigError;

/// The certificates of the PEM bundle at `path`.
pub fn root_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, ConfigError> {
    let bad = |reason: String| ConfigError {
        var: super::CA_CERT_VAR,
        value: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| bad(format!("not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// A reqwest builder that also trusts `ca_cert`, when one is configured.
pub fn client_builder(ca_cert: Option<&Path>) -> Result<reqwest::ClientBuilder, ConfigError> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = ca_cert {
        for cert in root_certificates(path)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}
