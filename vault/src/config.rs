//! The vault's configuration: the settings every process shares come from
//! `paystream_shared::config` (one rule in one place); the keys that only the vault holds are
//! read here, so no other process ever parses them.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use paystream_shared::config::{Config, ConfigError};
use paystream_shared::secret::Secret;

use crate::crypto::Kek;

/// base64 of the 32 bytes `paystream vault development kek!`. Public, so it is accepted only
/// in development mode (`PAYSTREAM_ENV=development`, which `paystream up` sets).
pub const DEVELOPMENT_KEK: &str = "cGF5c3RyZWFtIHZhdWx0IGRldmVsb3BtZW50IGtlayE=";
/// The service credential's development value, accepted only in development mode.
pub const DEVELOPMENT_SERVICE_TOKEN: &str =
    paystream_shared::config::DEVELOPMENT_VAULT_SERVICE_TOKEN;

#[derive(Clone)]
pub struct VaultConfig {
    pub database_url: Secret<String>,
    pub addr: SocketAddr,
    pub acquirer_url: String,
    pub acquirer_timeout: Duration,
    pub db_pool_size: u32,
    /// Wraps every data key written from now on.
    pub kek: Kek,
    /// Still unwraps data keys it wrapped, until `paystream vault rotate-kek` has re-wrapped
    /// them all under `kek`.
    pub kek_previous: Option<Kek>,
    /// What the rest of paystream presents to call `/vault/internal/...`.
    pub service_token: Secret<String>,
    pub development: bool,
    /// The listener's certificate and trusted proxies, and the CA its acquirer client trusts.
    pub tls: paystream_shared::tls::TlsSettings,
}

impl std::fmt::Debug for VaultConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultConfig")
            .field("addr", &self.addr)
            .field("acquirer_url", &self.acquirer_url)
            .field("kek", &self.kek.id())
            .field("kek_previous", &self.kek_previous.as_ref().map(Kek::id))
            .field("development", &self.development)
            .finish_non_exhaustive()
    }
}

impl VaultConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        // The vault shares paystream's addresses and pool settings but none of its secrets
        // (the webhook sealing key, the acquirer's notification secret), so those are read in
        // development mode: their rule is not the vault's to enforce. The vault's own secrets
        // follow the same rule below, on the real PAYSTREAM_ENV.
        let shared = Config::from_lookup(|k| {
            if k == paystream_shared::config::ENV_VAR {
                Some("development".to_owned())
            } else {
                lookup(k)
            }
        })?;
        let get = |var: &str| lookup(var).filter(|v| !v.is_empty());
        let development = get("PAYSTREAM_ENV").as_deref() == Some("development");
        let required = |var: &'static str, dev_default: &str, what: &str| {
            match get(var) {
                // Outside development a public value is as good as none.
                Some(v) if !development && v.trim() == dev_default => Err(public_value(var)),
                Some(v) => Ok(v),
                None if development => Ok(dev_default.to_owned()),
                None => Err(ConfigError {
                    var,
                    value: String::new(),
                    reason: format!(
                        "must be set ({what}); a public development value is used only with PAYSTREAM_ENV=development"
                    ),
                }),
            }
        };
        let kek = parse_kek(
            "PAYSTREAM_VAULT_KEK",
            &required(
                "PAYSTREAM_VAULT_KEK",
                DEVELOPMENT_KEK,
                "base64 of 32 random bytes, e.g. `openssl rand -base64 32`",
            )?,
        )?;
        let kek_previous = get("PAYSTREAM_VAULT_KEK_PREVIOUS")
            .map(|raw| parse_kek("PAYSTREAM_VAULT_KEK_PREVIOUS", &raw))
            .transpose()?
            // The same key twice is no rotation; keeping it would only hide a mistake.
            .filter(|prev| prev.id() != kek.id());
        let service_token = service_token(&lookup)?;
        Ok(VaultConfig {
            database_url: shared.database_url,
            addr: shared.vault_addr,
            acquirer_url: shared.acquirer_url.trim_end_matches('/').to_owned(),
            acquirer_timeout: shared.acquirer_timeout,
            db_pool_size: shared.db_pool_size,
            kek,
            kek_previous,
            service_token,
            development,
            tls: shared.tls,
        })
    }
}

/// The service credential (`PAYSTREAM_VAULT_SERVICE_TOKEN`), as the vault checks it and as
/// paystream's processes present it; the development value only in development mode.
pub fn service_token(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Secret<String>, ConfigError> {
    let var = "PAYSTREAM_VAULT_SERVICE_TOKEN";
    let development = lookup("PAYSTREAM_ENV").as_deref() == Some("development");
    let token = match lookup(var).filter(|v| !v.is_empty()) {
        Some(t) => t,
        None if development => DEVELOPMENT_SERVICE_TOKEN.to_owned(),
        None => {
            return Err(ConfigError {
                var,
                value: String::new(),
                reason: "must be set (the credential paystream's processes present to the vault); a public development value is used only with PAYSTREAM_ENV=development".into(),
            })
        }
    };
    if !development && token == DEVELOPMENT_SERVICE_TOKEN {
        return Err(public_value(var));
    }
    if token.len() < 16 {
        return Err(ConfigError {
            var,
            value: "<hidden>".into(),
            reason: "must be at least 16 characters".into(),
        });
    }
    Ok(Secret::new(token))
}

fn public_value(var: &'static str) -> ConfigError {
    ConfigError {
        var,
        value: "<hidden>".into(),
        reason: "is the public development value, accepted only with PAYSTREAM_ENV=development; \
                 set a secret of your own"
            .into(),
    }
}

fn parse_kek(var: &'static str, raw: &str) -> Result<Kek, ConfigError> {
    let bad = |reason: &str| ConfigError {
        var,
        // Never echo key material, not even a malformed one.
        value: "<hidden>".into(),
        reason: reason.to_owned(),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .map_err(|_| bad("must be base64"))?;
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| bad("must decode to exactly 32 bytes"))?;
    Ok(Kek::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn a_missing_kek_outside_development_names_the_variable() {
        let err = VaultConfig::from_lookup(lookup(&[])).unwrap_err();
        assert_eq!(err.var, "PAYSTREAM_VAULT_KEK");
        let own_kek = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
        let err =
            VaultConfig::from_lookup(lookup(&[("PAYSTREAM_VAULT_KEK", own_kek)])).unwrap_err();
        assert_eq!(err.var, "PAYSTREAM_VAULT_SERVICE_TOKEN");
    }

    #[test]
    fn development_values_are_refused_outside_development() {
        let own_kek = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
        let own_token = "vault_svc_0123456789abcdef";
        let err = VaultConfig::from_lookup(lookup(&[
            ("PAYSTREAM_VAULT_KEK", DEVELOPMENT_KEK),
            ("PAYSTREAM_VAULT_SERVICE_TOKEN", own_token),
        ]))
        .unwrap_err();
        assert_eq!(err.var, "PAYSTREAM_VAULT_KEK");
        assert!(
            err.to_string().contains("public development value"),
            "{err}"
        );
        let err = VaultConfig::from_lookup(lookup(&[
            ("PAYSTREAM_VAULT_KEK", own_kek),
            ("PAYSTREAM_VAULT_SERVICE_TOKEN", DEVELOPMENT_SERVICE_TOKEN),
        ]))
        .unwrap_err();
        assert_eq!(err.var, "PAYSTREAM_VAULT_SERVICE_TOKEN");
        let ok = VaultConfig::from_lookup(lookup(&[
            ("PAYSTREAM_VAULT_KEK", own_kek),
            ("PAYSTREAM_VAULT_SERVICE_TOKEN", own_token),
        ]))
        .unwrap();
        assert!(!ok.development && ok.tls.files.is_none());
        // The same values are fine on a laptop.
        assert!(VaultConfig::from_lookup(lookup(&[
            ("PAYSTREAM_ENV", "development"),
            ("PAYSTREAM_VAULT_KEK", DEVELOPMENT_KEK),
        ]))
        .is_ok());
    }

    #[test]
    fn development_mode_has_public_defaults() {
        let c = VaultConfig::from_lookup(lookup(&[("PAYSTREAM_ENV", "development")])).unwrap();
        assert!(c.development && c.kek_previous.is_none());
        assert_eq!(c.service_token.expose(), DEVELOPMENT_SERVICE_TOKEN);
        assert_eq!(c.addr.to_string(), "127.0.0.1:8081");
        assert_eq!(c.kek.id(), parse_kek("x", DEVELOPMENT_KEK).unwrap().id());
    }

    #[test]
    fn bad_keks_are_refused_without_echoing_them() {
        for bad in ["not base64!", "c2hvcnQ="] {
            let err = VaultConfig::from_lookup(lookup(&[
                ("PAYSTREAM_ENV", "development"),
                ("PAYSTREAM_VAULT_KEK_PREVIOUS", bad),
            ]))
            .unwrap_err();
            assert_eq!(err.var, "PAYSTREAM_VAULT_KEK_PREVIOUS");
            assert!(!err.to_string().contains(bad));
        }
    }
}
