//! The DNS resolver every delivery connects through. It resolves the endpoint's host and
//! drops every address a delivery may not reach (`is_forbidden_ip`), so the check applies to
//! the address the socket actually connects to. Checking the URL's text, or resolving once to
//! check and letting the client resolve again to connect, would let a name that answers a
//! public address first and 127.0.0.1 second (DNS rebinding) through.
//!
//! Literal IP hosts never reach a resolver (the HTTP connector parses them itself), so the
//! delivery step checks those on the URL before sending.

use std::net::SocketAddr;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use paystream_shared::domain::webhook::is_forbidden_ip;

/// Why a delivery was refused before connecting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused to connect: {host} resolves only to loopback, private, link-local or reserved addresses")]
pub struct BlockedAddress {
    pub host: String,
}

#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    allow_private: bool,
}

impl GuardedResolver {
    pub fn new(allow_private: bool) -> Self {
        Self { allow_private }
    }

    /// Keeps the addresses a delivery may connect to; an empty result is a refusal.
    pub fn filter(
        &self,
        host: &str,
        addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, BlockedAddress> {
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| self.allow_private || !is_forbidden_ip(a.ip()))
            .collect();
        if allowed.is_empty() {
            return Err(BlockedAddress {
                host: host.to_owned(),
            });
        }
        Ok(allowed)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = *self;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            // Port 0: the connector puts the URL's port in.
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = this.filter(&host, resolved)?;
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter()
            .map(|ip| SocketAddr::new(ip.parse().unwrap(), 0))
            .collect()
    }

    #[test]
    fn private_addresses_are_dropped_public_ones_kept() {
        let guard = GuardedResolver::new(false);
        let kept = guard
            .filter("mixed.example", addrs(&["10.0.0.1", "93.184.215.14"]))
            .unwrap();
        assert_eq!(kept, addrs(&["93.184.215.14"]));
        let err = guard
            .filter("meta.example", addrs(&["169.254.169.254", "::1"]))
            .unwrap_err();
        assert_eq!(err.host, "meta.example");
        assert!(err.to_string().contains("meta.example"));
        assert!(guard.filter("none.example", vec![]).is_err());
        let open = GuardedResolver::new(true);
        assert_eq!(
            open.filter("lo", addrs(&["127.0.0.1"])).unwrap(),
            addrs(&["127.0.0.1"])
        );
    }

    #[tokio::test]
    async fn localhost_is_refused_at_resolution() {
        let name: Name = "localhost".parse().unwrap();
        let err = match GuardedResolver::new(false).resolve(name).await {
            Ok(_) => panic!("localhost must not resolve to anything usable"),
            Err(e) => e,
        };
        assert!(err.downcast_ref::<BlockedAddress>().is_some(), "{err}");
        let name: Name = "localhost".parse().unwrap();
        let addrs: Vec<_> = GuardedResolver::new(true)
            .resolve(name)
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
