//! Transport security, one rule for every listener paystream opens (the API and the vault):
//! with `PAYSTREAM_TLS_CERT`/`PAYSTREAM_TLS_KEY` a listener speaks HTTPS only (rustls, TLS 1.2
//! and 1.3; rustls implements nothing older), reloading its certificate on SIGHUP. Without
//! them it may bind a loopback address, or run behind the proxies named in
//! `PAYSTREAM_TRUSTED_PROXIES`, which terminate TLS and say so with `X-Forwarded-Proto`;
//! anywhere else the process refuses to start (`check_listener`).
//!
//! `acceptor.rs` the TLS acceptor and its reloadable certificate, `guard.rs` the per-request
//! rule (HSTS, `tls_required`), `client.rs` the outbound side (trusting `PAYSTREAM_CA_CERT`).

mod acceptor;
mod client;
mod guard;
pub mod local_ca;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use poem::listener::TcpAcceptor;
use poem::{EndpointExt, IntoEndpoint, Server};
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;

pub use acceptor::{Certificates, TlsAcceptor, HANDSHAKE_TIMEOUT};
pub use client::{client_builder, root_certificates};
pub use guard::{Guard, HSTS};

/// The certificate chain and private key a listener serves, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything about transport security one process is told by its environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// `PAYSTREAM_TLS_CERT` and `PAYSTREAM_TLS_KEY`: set both, and the listener is HTTPS only.
    pub files: Option<TlsFiles>,
    /// `PAYSTREAM_TRUSTED_PROXIES`: comma-separated CIDRs of the proxies that terminate TLS in
    /// front of a plain listener.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `PAYSTREAM_CA_CERT`: a PEM bundle of extra roots paystream's own clients trust when they
    /// call an https URL (the vault, the acquirer), e.g. the local CA of `paystream up --tls`.
    pub ca_cert: Option<PathBuf>,
}

pub const TLS_CERT_VAR: &str = "PAYSTREAM_TLS_CERT";
pub const TLS_KEY_VAR: &str = "PAYSTREAM_TLS_KEY";
pub const TRUSTED_PROXIES_VAR: &str = "PAYSTREAM_TRUSTED_PROXIES";
pub const CA_CERT_VAR: &str = "PAYSTREAM_CA_CERT";

impl TlsSettings {
    /// Reads the four variables through `lookup`; an empty value counts as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |var: &str| lookup(var).filter(|v| !v.trim().is_empty());
        let files = match (get(TLS_CERT_VAR), get(TLS_KEY_VAR)) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.into(),
                key: key.into(),
            }),
            (None, None) => None,
            (Some(_), None) => return Err(half_set(TLS_KEY_VAR, TLS_CERT_VAR)),
            (None, Some(_)) => return Err(half_set(TLS_CERT_VAR, TLS_KEY_VAR)),
        };
        let trusted_proxies = match get(TRUSTED_PROXIES_VAR) {
            None => Vec::new(),
            Some(raw) => raw
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|cidr| parse_cidr(cidr, &raw))
                .collect::<Result<_, _>>()?,
        };
        Ok(TlsSettings {
            files,
            trusted_proxies,
            ca_cert: get(CA_CERT_VAR).map(PathBuf::from),
        })
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn is_trusted_proxy(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

fn half_set(missing: &'static str, set: &str) -> ConfigError {
    ConfigError {
        var: missing,
        value: "<unset>".into(),
        reason: format!("must be set together with {set} (PEM files: the certificate chain and its private key)"),
    }
}

/// A CIDR, or a bare address meaning just that host.
fn parse_cidr(cidr: &str, raw: &str) -> Result<ipnet::IpNet, ConfigError> {
    cidr.parse::<ipnet::IpNet>()
        .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| ConfigError {
            var: TRUSTED_PROXIES_VAR,
            value: raw.to_owned(),
            reason: format!("`{cidr}` is not a CIDR (e.g. 10.0.0.0/8, fd00::/8) or an address"),
        })
}

/// Why a listener may not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "{process} would listen on {addr} in plain HTTP, where anyone on the network could read \
         it: set {TLS_CERT_VAR} and {TLS_KEY_VAR} (PEM files) to serve HTTPS, or bind a loopback \
         address with {addr_var}, or name the proxies that terminate TLS in front of it in \
         {TRUSTED_PROXIES_VAR} (CIDRs)"
    )]
    PlaintextOnNetwork {
        process: &'static str,
        addr: SocketAddr,
        addr_var: &'static str,
    },
    #[error(transparent)]
    Tls(#[from] acceptor::TlsError),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: std::io::Error,
    },
}

/// The start-up rule: a plain listener only on loopback or behind trusted proxies.
pub fn check_listener(
    process: &'static str,
    addr_var: &'static str,
    addr: SocketAddr,
    settings: &TlsSettings,
) -> Result<(), ServeError> {
    if settings.files.is_some() || addr.ip().is_loopback() || !settings.trusted_proxies.is_empty() {
        return Ok(());
    }
    Err(ServeError::PlaintextOnNetwork {
        process,
        addr,
        addr_var,
    })
}

/// What a listener serves, and how its process names it in errors.
pub struct Listener {
    pub process: &'static str,
    /// The variable that sets its address, named when it may not serve there.
    pub addr_var: &'static str,
    pub listener: std::net::TcpListener,
}

/// Serves `app` on the listener under `settings` until `shutdown` fires, then lets requests in
/// flight finish for up to `drain`. The guard (HSTS, `tls_required`) wraps every route.
pub async fn serve(
    listener: Listener,
    settings: &TlsSettings,
    app: impl IntoEndpoint + 'static,
    shutdown: CancellationToken,
    drain: Duration,
) -> Result<(), ServeError> {
    let io = |context| move |source| ServeError::Io { context, source };
    let Listener {
        process,
        addr_var,
        listener,
    } = listener;
    listener
        .set_nonblocking(true)
        .map_err(io("cannot make the listener non-blocking"))?;
    let addr = listener
        .local_addr()
        .map_err(io("the listener has no local address"))?;
    check_listener(process, addr_var, addr, settings)?;
    let tcp = TcpAcceptor::from_std(listener).map_err(io("cannot adopt the listener"))?;
    let app = app
        .into_endpoint()
        .with(Guard::new(Arc::new(settings.clone())));
    let stopped = shutdown.clone().cancelled_owned();
    match &settings.files {
        Some(files) => {
            let certificates = Certificates::load(files.clone())?;
            // Registered before the first connection is accepted, so a SIGHUP from then on
            // reloads (and never falls back to the default action, which ends the process).
            let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(io("cannot listen for SIGHUP"))?;
            tokio::spawn(certificates.clone().reload_on_sighup(hangups, shutdown));
            tracing::info!(%addr, process, "listening, HTTPS only");
            Server::new_with_acceptor(TlsAcceptor::new(tcp, certificates))
                .run_with_graceful_shutdown(app, stopped, Some(drain))
                .await
        }
        None => {
            tracing::info!(%addr, process, behind_proxies = !settings.trusted_proxies.is_empty(), "listening, plain HTTP");
            Server::new_with_acceptor(tcp)
                .run_with_graceful_shutdown(app, stopped, Some(drain))
                .await
        }
    }
    .map_err(io("the server failed"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<TlsSettings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TlsSettings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn certificate_and_key_come_together() {
        assert_eq!(settings(&[]).unwrap(), TlsSettings::default());
        let err = settings(&[(TLS_CERT_VAR, "/c.pem")]).unwrap_err();
        assert_eq!(err.var, TLS_KEY_VAR);
        let err = settings(&[(TLS_KEY_VAR, "/k.pem")]).unwrap_err();
        assert_eq!(err.var, TLS_CERT_VAR);
        let both = settings(&[(TLS_CERT_VAR, "/c.pem"), (TLS_KEY_VAR, "/k.pem")]).unwrap();
        assert_eq!(both.files.unwrap().cert, PathBuf::from("/c.pem"));
    }

    #[test]
    fn trusted_proxies_are_cidrs_or_addresses() {
        let s = settings(&[(TRUSTED_PROXIES_VAR, "10.0.0.0/8, 192.168.1.7,fd00::/8")]).unwrap();
        assert!(s.is_trusted_proxy("10.1.2.3".parse().unwrap()));
        assert!(s.is_trusted_proxy("192.168.1.7".parse().unwrap()));
        assert!(!s.is_trusted_proxy("192.168.1.8".parse().unwrap()));
        // An IPv4 peer seen on a dual-stack socket is still that IPv4 address.
        assert!(s.is_trusted_proxy("::ffff:10.0.0.1".parse().unwrap()));
        assert!(s.is_trusted_proxy("fd00::1".parse().unwrap()));
        let err = settings(&[(TRUSTED_PROXIES_VAR, "10.0.0.0/8,nope")]).unwrap_err();
        assert_eq!(err.var, TRUSTED_PROXIES_VAR);
        assert!(err.to_string().contains("`nope`"), "{err}");
    }

    #[test]
    fn plain_http_only_on_loopback_or_behind_proxies() {
        let plain = TlsSettings::default();
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let lo6: SocketAddr = "[::1]:8080".parse().unwrap();
        assert!(check_listener("paystream-api", "PAYSTREAM_API_ADDR", lo, &plain).is_ok());
        assert!(check_listener("paystream-api", "PAYSTREAM_API_ADDR", lo6, &plain).is_ok());
        let err = check_listener("paystream-api", "PAYSTREAM_API_ADDR", any, &plain)
            .unwrap_err()
            .to_string();
        for needle in [
            TLS_CERT_VAR,
            TLS_KEY_VAR,
            TRUSTED_PROXIES_VAR,
            "PAYSTREAM_API_ADDR",
        ] {
            assert!(err.contains(needle), "{err} should name {needle}");
        }
        let proxied = settings(&[(TRUSTED_PROXIES_VAR, "10.0.0.0/8")]).unwrap();
        assert!(check_listener("vault", "PAYSTREAM_VAULT_ADDR", any, &proxied).is_ok());
        let tls = settings(&[(TLS_CERT_VAR, "/c"), (TLS_KEY_VAR, "/k")]).unwrap();
        assert!(check_listener("vault", "PAYSTREAM_VAULT_ADDR", any, &tls).is_ok());
    }
}
