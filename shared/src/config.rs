//! Configuration: documented defaults, overridden by the environment, validated at start-up.
//! README.md's configuration table lists the names and defaults below.

use std::net::SocketAddr;
use std::time::Duration;

use crate::domain::fees::{self, FeeSchedule};
use crate::domain::money::Amount;
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}={value:?}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

/// Where the process runs. Only development accepts the public development defaults of the
/// secrets; anywhere else a missing secret stops the process at start-up, naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// A laptop: `paystream up` sets it for everything it starts, or `PAYSTREAM_ENV=development`.
    Development,
    /// Anything else (`PAYSTREAM_ENV` unset or `production`): every secret must be set.
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Production => "production",
        }
    }
}

/// The variable that selects the [`Environment`].
pub const ENV_VAR: &str = "PAYSTREAM_ENV";

#[derive(Debug, Clone)]
pub struct Config {
    /// Development or production (`PAYSTREAM_ENV`); decides whether secrets have defaults.
    pub environment: Environment,
    pub database_url: Secret<String>,
    /// `NATS_URL` as given: one server or a comma-separated list of seeds. Child processes
    /// are handed it unchanged; [`Config::nats`] is its parsed form.
    pub nats_url: String,
    /// The seeds, credentials, TLS and stream replicas (`crate::nats_settings`).
    pub nats: crate::nats_settings::NatsSettings,
    pub api_addr: SocketAddr,
    pub vault_addr: SocketAddr,
    /// Where paystream's processes call the vault (`PAYSTREAM_VAULT_URL`; default `http://`
    /// + `PAYSTREAM_VAULT_ADDR`).
    pub vault_url: String,
    /// The service credential presented to the vault's internal calls
    /// (`PAYSTREAM_VAULT_SERVICE_TOKEN`). Optional here, because most processes never call the
    /// vault; the development value applies in development mode. A caller without it answers
    /// its vault calls with a 503 naming the variable.
    pub vault_service_token: Option<Secret<String>>,
    pub acquirer_url: String,
    pub bootstrap_api_key: Option<Secret<String>>,
    /// The base of every backoff schedule; tests shrink it.
    pub retry_base: Duration,
    /// Prefixes stream and consumer names, so test runs and tenants never share a stream.
    pub stream_prefix: String,
    pub webhook_allow_private: bool,
    /// How long a dead idempotency-key holder keeps the key locked.
    pub idempotency_lock_ttl: Duration,
    /// Secret shared with the acquirer for its signed notifications.
    pub acquirer_webhook_secret: Secret<String>,
    /// How long one call to the acquirer may take before it counts as a (transient) timeout.
    pub acquirer_timeout: Duration,
    /// AES-256-GCM key that seals webhook signing secrets at rest (32 bytes, base64 in the
    /// environment). The development default is public: set your own outside development.
    pub webhook_secret_key: Secret<[u8; 32]>,
    /// The sealing key before the current one, still opened (never used to seal) while
    /// `paystream keys rotate-sealing` re-seals what it sealed (docs/pci-scope.md, "Keys").
    pub webhook_secret_key_previous: Option<Secret<[u8; 32]>>,
    /// How long one webhook delivery attempt may take (10 s, docs/webhooks.md; tests shrink it).
    pub webhook_timeout: Duration,
    /// How often the scheduler's leader reconciles with the acquirer (default 15 minutes).
    pub reconcile_interval: Duration,
    /// How long an intent may sit in `processing`, or a refund in `pending`, before
    /// reconciliation asks the acquirer about it (default 5 minutes).
    pub reconcile_stuck_after: Duration,
    /// How long an intent may sit in `requires_payment_method`, `requires_confirmation` or
    /// `requires_action` before the scheduler cancels it as `abandoned` (default 24 hours).
    pub abandon_after: Duration,
    /// Connections each process may hold to PostgreSQL. Every replica of every process has its
    /// own pool, so their sum must stay under the server's `max_connections`.
    pub db_pool_size: u32,
    /// Requests per second each API key may make to one API process (a token bucket holding
    /// one second's worth); 0 turns the limit off. Per process: N replicas allow N times this.
    pub rate_limit_per_sec: u32,
    /// Where a worker process serves `/healthz` and `/metrics` (`PAYSTREAM_HEALTH_ADDR`);
    /// unset, it serves nothing and only logs its counters. `paystream up` gives each worker
    /// one and waits on it before printing READY.
    pub health_addr: Option<SocketAddr>,
    /// What a captured payment costs the merchant (`PAYSTREAM_FEE_PERCENT_BPS`,
    /// `PAYSTREAM_FEE_FIXED`; 290 bps + 30 minor units). `domain::fees` says what a minor unit
    /// is for each currency.
    pub fees: FeeSchedule,
    /// What a lost dispute costs the merchant, in minor units (`PAYSTREAM_DISPUTE_FEE`, 1500).
    pub dispute_fee: Amount,

    // Transport security (README "TLS"): the listeners' certificate, the proxies trusted to
    // terminate TLS in front of them, and the extra CA paystream's own clients trust.
    pub tls: crate::tls::TlsSettings,
    /// How long the acquirer may take to settle a capture before reconciliation calls it
    /// `missing_in_report` (`PAYSTREAM_SETTLEMENT_WINDOW_SECS`, two days: T+2).
    pub settlement_window: Duration,
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/paystream";
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// The longest `PAYSTREAM_ABANDON_AFTER_SECS` accepted: 100 years.
pub const MAX_ABANDON_AFTER: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
/// base64 of the 32 bytes `paystream local development key!`: fine on a laptop, public
/// everywhere else, so production sets `PAYSTREAM_WEBHOOK_SECRET_KEY` to its own random key.
pub const DEVELOPMENT_WEBHOOK_SECRET_KEY: &str = "cGF5c3RyZWFtIGxvY2FsIGRldmVsb3BtZW50IGtleSE=";
/// The acquirer notification secret of development; the simulator signs with it by default.
pub const DEVELOPMENT_ACQUIRER_WEBHOOK_SECRET: &str = "acq_whsec_local_development_only";
/// The vault's service credential in development; the vault accepts it only in development.
pub const DEVELOPMENT_VAULT_SERVICE_TOKEN: &str = "vault_svc_local_development_only";

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Every default, in development mode: the configuration of a laptop (and of tests that
    /// need a `Config` but no particular value).
    pub fn development_defaults() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| (k == ENV_VAR).then(|| Environment::Development.as_str().to_owned()))
    }

    /// Reads configuration through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |var: &'static str, default: &str| -> String {
            lookup(var)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        let environment = match get(ENV_VAR, "production").as_str() {
            "development" => Environment::Development,
            "production" => Environment::Production,
            other => {
                return Err(ConfigError {
                    var: ENV_VAR,
                    value: other.to_owned(),
                    reason: "must be `development` or `production` (unset means production)".into(),
                })
            }
        };
        // The one rule for secrets with a public development value: outside development the
        // variable must be set, and not to that public value.
        let secret = |var: &'static str, development_value: &str| -> Result<String, ConfigError> {
            match lookup(var).filter(|v| !v.is_empty()) {
                Some(v) if environment == Environment::Production && v == development_value => {
                    Err(ConfigError {
                        var,
                        value: "<hidden>".into(),
                        reason: "is the public development value; set a secret of your own \
                                 (or PAYSTREAM_ENV=development on a laptop)"
                            .into(),
                    })
                }
                Some(v) => Ok(v),
                None if environment == Environment::Development => Ok(development_value.to_owned()),
                None => Err(ConfigError {
                    var,
                    value: "<unset>".into(),
                    reason: "must be set outside development mode: its default is public. Set \
                             it, or PAYSTREAM_ENV=development on a laptop (`paystream up` \
                             sets that for what it starts)"
                        .into(),
                }),
            }
        };
        let addr = |var: &'static str, default: &str| -> Result<SocketAddr, ConfigError> {
            let value = get(var, default);
            value.parse().map_err(|e| ConfigError {
                var,
                value: value.clone(),
                reason: format!("not a socket address ({e})"),
            })
        };

        let health_addr = match lookup("PAYSTREAM_HEALTH_ADDR").filter(|v| !v.is_empty()) {
            None => None,
            Some(_) => Some(addr("PAYSTREAM_HEALTH_ADDR", "")?),
        };

        let database_url = get("DATABASE_URL", DEFAULT_DATABASE_URL);
        if !database_url.starts_with("postgres://") && !database_url.starts_with("postgresql://") {
            return Err(ConfigError {
                var: "DATABASE_URL",
                value: "<hidden>".into(),
                reason: "must start with postgres://".into(),
            });
        }
        let nats_url = get("NATS_URL", DEFAULT_NATS_URL);
        let nats = crate::nats_settings::NatsSettings::from_lookup(&lookup, DEFAULT_NATS_URL)?;
        let vault_addr = addr("PAYSTREAM_VAULT_ADDR", "127.0.0.1:8081")?;
        let vault_url = get("PAYSTREAM_VAULT_URL", &format!("http://{vault_addr}"));
        if !vault_url.starts_with("http://") && !vault_url.starts_with("https://") {
            return Err(ConfigError {
                var: "PAYSTREAM_VAULT_URL",
                value: vault_url,
                reason: "must be an http(s) URL".into(),
            });
        }
        let vault_service_token =
            match lookup("PAYSTREAM_VAULT_SERVICE_TOKEN").filter(|v| !v.is_empty()) {
                // Unset outside development: only the processes that call the vault need it.
                None if environment == Environment::Production => None,
                _ => Some(Secret::new(secret(
                    "PAYSTREAM_VAULT_SERVICE_TOKEN",
                    DEVELOPMENT_VAULT_SERVICE_TOKEN,
                )?)),
            };
        let acquirer_url = get("PAYSTREAM_ACQUIRER_URL", "http://127.0.0.1:8090");
        if !acquirer_url.starts_with("http://") && !acquirer_url.starts_with("https://") {
            return Err(ConfigError {
                var: "PAYSTREAM_ACQUIRER_URL",
                value: acquirer_url,
                reason: "must be an http(s) URL".into(),
            });
        }
        let retry_raw = get("PAYSTREAM_RETRY_BASE_MS", "1000");
        let retry_ms: u64 = retry_raw.parse().map_err(|_| ConfigError {
            var: "PAYSTREAM_RETRY_BASE_MS",
            value: retry_raw.clone(),
            reason: "must be a whole number of milliseconds".into(),
        })?;
        let stream_prefix = get("PAYSTREAM_STREAM_PREFIX", "");
        if !stream_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ConfigError {
                var: "PAYSTREAM_STREAM_PREFIX",
                value: stream_prefix,
                reason:
                    "may hold only letters, digits, `_` and `-` (it becomes part of stream names)"
                        .into(),
            });
        }
        let allow_raw = get("PAYSTREAM_WEBHOOK_ALLOW_PRIVATE", "false");
        let webhook_allow_private = parse_bool(&allow_raw).ok_or_else(|| ConfigError {
            var: "PAYSTREAM_WEBHOOK_ALLOW_PRIVATE",
            value: allow_raw.clone(),
            reason: "must be true or false".into(),
        })?;
        let ttl_raw = get("PAYSTREAM_IDEMPOTENCY_LOCK_TTL_MS", "30000");
        let ttl_ms: u64 = ttl_raw.parse().map_err(|_| ConfigError {
            var: "PAYSTREAM_IDEMPOTENCY_LOCK_TTL_MS",
            value: ttl_raw.clone(),
            reason: "must be a whole number of milliseconds".into(),
        })?;

        let acq_raw = get("PAYSTREAM_ACQUIRER_TIMEOUT_MS", "10000");
        let acq_ms: u64 = acq_raw.parse().map_err(|_| ConfigError {
            var: "PAYSTREAM_ACQUIRER_TIMEOUT_MS",
            value: acq_raw.clone(),
            reason: "must be a whole number of milliseconds".into(),
        })?;

        let secs = |var: &'static str, default: &str| -> Result<Duration, ConfigError> {
            let raw = get(var, default);
            raw.parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| ConfigError {
                    var,
                    value: raw.clone(),
                    reason: "must be a whole number of seconds".into(),
                })
        };
        let reconcile_interval = secs("PAYSTREAM_RECONCILE_INTERVAL_SECS", "900")?;
        let reconcile_stuck_after = secs("PAYSTREAM_RECONCILE_STUCK_AFTER_SECS", "300")?;
        let abandon_after = secs("PAYSTREAM_ABANDON_AFTER_SECS", "86400")?;
        let settlement_window = secs("PAYSTREAM_SETTLEMENT_WINDOW_SECS", "172800")?;
        if settlement_window > MAX_ABANDON_AFTER {
            return Err(ConfigError {
                var: "PAYSTREAM_SETTLEMENT_WINDOW_SECS",
                value: settlement_window.as_secs().to_string(),
                reason: "must be at most 100 years".into(),
            });
        }
        // Zero would cancel every intent the moment it is created; the upper bound keeps the
        // value representable as a time difference (anything longer means "never" anyway).
        if abandon_after.is_zero() || abandon_after > MAX_ABANDON_AFTER {
            return Err(ConfigError {
                var: "PAYSTREAM_ABANDON_AFTER_SECS",
                value: abandon_after.as_secs().to_string(),
                reason: format!(
                    "must be between 1 and {} seconds (100 years)",
                    MAX_ABANDON_AFTER.as_secs()
                ),
            });
        }
        let pool_raw = get("PAYSTREAM_DB_POOL_SIZE", "16");
        let db_pool_size = pool_raw
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ConfigError {
                var: "PAYSTREAM_DB_POOL_SIZE",
                value: pool_raw.clone(),
                reason: "must be a whole number above 0".into(),
            })?;

        let rate_raw = get("PAYSTREAM_RATE_LIMIT_PER_SEC", "1000");
        let rate_limit_per_sec = rate_raw.parse::<u32>().map_err(|_| ConfigError {
            var: "PAYSTREAM_RATE_LIMIT_PER_SEC",
            value: rate_raw.clone(),
            reason: "must be a whole number of requests per second (0 turns the limit off)".into(),
        })?;

        let webhook_secret_key = parse_webhook_key(
            "PAYSTREAM_WEBHOOK_SECRET_KEY",
            &secret(
                "PAYSTREAM_WEBHOOK_SECRET_KEY",
                DEVELOPMENT_WEBHOOK_SECRET_KEY,
            )?,
        )?;
        // Optional: set only while a rotation is under way. The public development key is as
        // good as no key outside development, here too.
        let webhook_secret_key_previous = match lookup("PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS")
            .filter(|v| !v.trim().is_empty())
        {
            Some(v)
                if environment == Environment::Production
                    && v.trim() == DEVELOPMENT_WEBHOOK_SECRET_KEY =>
            {
                return Err(ConfigError {
                    var: "PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS",
                    value: "<hidden>".into(),
                    reason: "is the public development value; it sealed nothing worth keeping \
                             outside development"
                        .into(),
                })
            }
            Some(v) => Some(parse_webhook_key(
                "PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS",
                &v,
            )?),
            None => None,
        };
        let acquirer_webhook_secret = secret(
            "PAYSTREAM_ACQUIRER_WEBHOOK_SECRET",
            DEVELOPMENT_ACQUIRER_WEBHOOK_SECRET,
        )?;
        let wh_raw = get("PAYSTREAM_WEBHOOK_TIMEOUT_MS", "10000");
        let webhook_timeout = match wh_raw.parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => {
                return Err(ConfigError {
                    var: "PAYSTREAM_WEBHOOK_TIMEOUT_MS",
                    value: wh_raw,
                    reason: "must be a positive whole number of milliseconds".into(),
                })
            }
        };

        let fees = fee_schedule_from(&lookup)?;
        let dispute_raw = get(
            "PAYSTREAM_DISPUTE_FEE",
            &fees::DEFAULT_DISPUTE_FEE.to_string(),
        );
        let dispute_fee = dispute_raw
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .map(Amount::from_stored)
            .ok_or_else(|| ConfigError {
                var: "PAYSTREAM_DISPUTE_FEE",
                value: dispute_raw.clone(),
                reason: "must be a whole, non-negative number of minor units".into(),
            })?;
        let tls = crate::tls::TlsSettings::from_lookup(&lookup)?;

        Ok(Config {
            environment,
            database_url: Secret::new(database_url),
            nats_url,
            nats,
            api_addr: addr("PAYSTREAM_API_ADDR", "127.0.0.1:8080")?,
            vault_addr,
            vault_url: vault_url.trim_end_matches('/').to_owned(),
            vault_service_token,
            acquirer_url,
            bootstrap_api_key: lookup("PAYSTREAM_BOOTSTRAP_API_KEY")
                .filter(|v| !v.is_empty())
                .map(Secret::new),
            retry_base: Duration::from_millis(retry_ms),
            stream_prefix,
            webhook_allow_private,
            idempotency_lock_ttl: Duration::from_millis(ttl_ms),
            acquirer_webhook_secret: Secret::new(acquirer_webhook_secret),
            acquirer_timeout: Duration::from_millis(acq_ms),
            webhook_secret_key,
            webhook_secret_key_previous,
            webhook_timeout,
            reconcile_interval,
            reconcile_stuck_after,
            abandon_after,
            db_pool_size,
            rate_limit_per_sec,
            health_addr,
            fees,
            dispute_fee,
            tls,
            settlement_window,
        })
    }
}

/// The fee schedule from `PAYSTREAM_FEE_PERCENT_BPS` (0..=10000, default 290) and
/// `PAYSTREAM_FEE_FIXED` (minor units, default 30). Also read by `ledger::fee_schedule`, so a
/// process that never installed its `Config`'s schedule still charges the configured one.
pub fn fee_schedule_from(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<FeeSchedule, ConfigError> {
    let get = |var: &'static str, default: String| -> String {
        lookup(var).filter(|v| !v.is_empty()).unwrap_or(default)
    };
    let bps_raw = get(
        "PAYSTREAM_FEE_PERCENT_BPS",
        fees::DEFAULT_PERCENT_BPS.to_string(),
    );
    let bps = bps_raw
        .parse::<u32>()
        .ok()
        .filter(|v| i64::from(*v) <= fees::BPS_PER_WHOLE)
        .ok_or_else(|| ConfigError {
            var: "PAYSTREAM_FEE_PERCENT_BPS",
            value: bps_raw.clone(),
            reason: "must be a whole number of basis points from 0 to 10000".into(),
        })?;
    let fixed_raw = get("PAYSTREAM_FEE_FIXED", fees::DEFAULT_FIXED.to_string());
    let fixed = fixed_raw
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .ok_or_else(|| ConfigError {
            var: "PAYSTREAM_FEE_FIXED",
            value: fixed_raw.clone(),
            reason: "must be a whole, non-negative number of minor units".into(),
        })?;
    FeeSchedule::new(bps, fixed).map_err(|e| ConfigError {
        var: "PAYSTREAM_FEE_PERCENT_BPS",
        value: bps_raw,
        reason: e.message,
    })
}

/// The webhook secret key: base64 of exactly 32 bytes. The error never shows the value.
fn parse_webhook_key(var: &'static str, raw: &str) -> Result<Secret<[u8; 32]>, ConfigError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .map(Secret::new)
        .ok_or_else(|| ConfigError {
            var,
            value: "<hidden>".into(),
            reason:
                "must be base64 of exactly 32 random bytes (for example `openssl rand -base64 32`)"
                    .into(),
        })
}

fn parse_bool(raw: &str) -> Option<bool> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// `pairs` in development mode, unless they set `PAYSTREAM_ENV` themselves.
    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.entry(ENV_VAR.to_owned())
            .or_insert_with(|| "development".to_owned());
        Config::from_lookup(|k| map.get(k).cloned())
    }

    fn production(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    const OWN_KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";

    #[test]
    fn the_fee_schedule_has_documented_defaults_and_refuses_nonsense() {
        let c = cfg(&[]).unwrap();
        assert_eq!(
            (c.fees.percent_bps(), c.fees.fixed().minor_units()),
            (290, 30)
        );
        assert_eq!(c.dispute_fee.minor_units(), 1500);
        let c = cfg(&[
            ("PAYSTREAM_FEE_PERCENT_BPS", "150"),
            ("PAYSTREAM_FEE_FIXED", "0"),
            ("PAYSTREAM_DISPUTE_FEE", "2000"),
        ])
        .unwrap();
        assert_eq!(
            (c.fees.percent_bps(), c.fees.fixed().minor_units()),
            (150, 0)
        );
        assert_eq!(c.dispute_fee.minor_units(), 2000);
        for (var, value) in [
            ("PAYSTREAM_FEE_PERCENT_BPS", "10001"),
            ("PAYSTREAM_FEE_PERCENT_BPS", "2.9"),
            ("PAYSTREAM_FEE_FIXED", "-1"),
            ("PAYSTREAM_FEE_FIXED", "0.30"),
            ("PAYSTREAM_DISPUTE_FEE", "-5"),
        ] {
            let err = cfg(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var, "{value}");
        }
    }

    #[test]
    fn development_secrets_are_refused_outside_development() {
        // Unset PAYSTREAM_ENV is production: each missing secret stops start-up, by name.
        let err = production(&[("PAYSTREAM_ACQUIRER_WEBHOOK_SECRET", "acq_own")]).unwrap_err();
        assert_eq!(err.var, "PAYSTREAM_WEBHOOK_SECRET_KEY");
        assert!(
            err.to_string().contains("PAYSTREAM_ENV=development"),
            "{err}"
        );
        let err = production(&[("PAYSTREAM_WEBHOOK_SECRET_KEY", OWN_KEY)]).unwrap_err();
        assert_eq!(err.var, "PAYSTREAM_ACQUIRER_WEBHOOK_SECRET");
        let err = production(&[
            ("PAYSTREAM_ENV", "production"),
            ("PAYSTREAM_WEBHOOK_SECRET_KEY", OWN_KEY),
            ("PAYSTREAM_ACQUIRER_WEBHOOK_SECRET", ""),
        ])
        .unwrap_err();
        assert_eq!(err.var, "PAYSTREAM_ACQUIRER_WEBHOOK_SECRET");
        // Nor may they be set to the public development values.
        let err = production(&[
            (
                "PAYSTREAM_WEBHOOK_SECRET_KEY",
                DEVELOPMENT_WEBHOOK_SECRET_KEY,
            ),
            ("PAYSTREAM_ACQUIRER_WEBHOOK_SECRET", "acq_own"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "PAYSTREAM_WEBHOOK_SECRET_KEY");
        assert!(!err.to_string().contains(DEVELOPMENT_WEBHOOK_SECRET_KEY));
        let err = production(&[
            ("PAYSTREAM_WEBHOOK_SECRET_KEY", OWN_KEY),
            (
                "PAYSTREAM_ACQUIRER_WEBHOOK_SECRET",
                DEVELOPMENT_ACQUIRER_WEBHOOK_SECRET,
            ),
        ])
        .unwrap_err();
        assert_eq!(err.var, "PAYSTREAM_ACQUIRER_WEBHOOK_SECRET");
        // Both set: production starts.
        let c = production(&[
            ("PAYSTREAM_WEBHOOK_SECRET_KEY", OWN_KEY),
            ("PAYSTREAM_ACQUIRER_WEBHOOK_SECRET", "acq_own"),
        ])
        .unwrap();
        assert_eq!(c.environment, Environment::Production);
        assert_eq!(c.acquirer_webhook_secret.expose(), "acq_own");
        // Development takes the defaults.
        let c = Config::development_defaults().unwrap();
        assert_eq!(c.environment, Environment::Development);
        assert_eq!(
            c.acquirer_webhook_secret.expose(),
            DEVELOPMENT_ACQUIRER_WEBHOOK_SECRET
        );
        // The vault credential: optional outside development, never the public value.
        assert!(c.vault_service_token.is_some());
        let err = production(&[
            ("PAYSTREAM_WEBHOOK_SECRET_KEY", OWN_KEY),
            ("PAYSTREAM_ACQUIRER_WEBHOOK_SECRET", "acq_own"),
            (
                "PAYSTREAM_VAULT_SERVICE_TOKEN",
                DEVELOPMENT_VAULT_SERVICE_TOKEN,
            ),
        ])
        .unwrap_err();
        assert_eq!(err.var, "PAYSTREAM_VAULT_SERVICE_TOKEN");
        // A misspelt environment is refused rather than guessed.
        let err = production(&[("PAYSTREAM_ENV", "dev")]).unwrap_err();
        assert_eq!(err.var, "PAYSTREAM_ENV");
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.database_url.expose(), DEFAULT_DATABASE_URL);
        assert_eq!(c.nats_url, DEFAULT_NATS_URL);
        assert_eq!(c.api_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.vault_addr.to_string(), "127.0.0.1:8081");
        assert_eq!(c.vault_url, "http://127.0.0.1:8081");
        let c = cfg(&[("PAYSTREAM_VAULT_ADDR", "127.0.0.1:9999")]).unwrap();
        assert_eq!(c.vault_url, "http://127.0.0.1:9999");
        let c = cfg(&[("PAYSTREAM_VAULT_URL", "https://vault.internal/")]).unwrap();
        assert_eq!(c.vault_url, "https://vault.internal");
        assert_eq!(c.acquirer_url, "http://127.0.0.1:8090");
        assert!(c.bootstrap_api_key.is_none());
        assert_eq!(c.retry_base, Duration::from_millis(1000));
        assert_eq!(c.stream_prefix, "");
        assert!(!c.webhook_allow_private);
        assert_eq!(c.idempotency_lock_ttl, Duration::from_secs(30));
        assert_eq!(c.acquirer_timeout, Duration::from_secs(10));
        assert_eq!(c.reconcile_interval, Duration::from_secs(900));
        assert_eq!(c.reconcile_stuck_after, Duration::from_secs(300));
        assert_eq!(c.abandon_after, Duration::from_secs(86_400));
        assert_eq!(c.settlement_window, Duration::from_secs(172_800));
        assert!(cfg(&[("PAYSTREAM_RECONCILE_INTERVAL_SECS", "often")]).is_err());
        assert_eq!(c.db_pool_size, 16);
        assert!(cfg(&[("PAYSTREAM_DB_POOL_SIZE", "0")]).is_err());
        assert_eq!(c.rate_limit_per_sec, 1000);
        assert_eq!(
            cfg(&[("PAYSTREAM_RATE_LIMIT_PER_SEC", "0")])
                .unwrap()
                .rate_limit_per_sec,
            0
        );
        assert!(cfg(&[("PAYSTREAM_RATE_LIMIT_PER_SEC", "-1")]).is_err());
        assert!(cfg(&[("PAYSTREAM_RATE_LIMIT_PER_SEC", "fast")]).is_err());
        assert_eq!(c.health_addr, None);
        assert_eq!(
            cfg(&[("PAYSTREAM_HEALTH_ADDR", "127.0.0.1:9101")])
                .unwrap()
                .health_addr
                .map(|a| a.port()),
            Some(9101)
        );
        assert!(cfg(&[("PAYSTREAM_HEALTH_ADDR", "nowhere")]).is_err());
    }

    #[test]
    fn environment_overrides_and_validation() {
        let c = cfg(&[
            ("PAYSTREAM_RETRY_BASE_MS", "5"),
            ("PAYSTREAM_WEBHOOK_ALLOW_PRIVATE", "true"),
            ("PAYSTREAM_STREAM_PREFIX", "t_1"),
        ])
        .unwrap();
        assert_eq!(c.retry_base, Duration::from_millis(5));
        assert!(c.webhook_allow_private);
        assert_eq!(c.stream_prefix, "t_1");
        assert!(cfg(&[("PAYSTREAM_RETRY_BASE_MS", "fast")]).is_err());
        assert!(cfg(&[("PAYSTREAM_API_ADDR", "nowhere")]).is_err());
        assert!(cfg(&[("PAYSTREAM_STREAM_PREFIX", "a.b")]).is_err());
        assert!(cfg(&[("DATABASE_URL", "mysql://x")]).is_err());
        assert!(cfg(&[("PAYSTREAM_ACQUIRER_URL", "ftp://x")]).is_err());
        assert!(cfg(&[("PAYSTREAM_WEBHOOK_ALLOW_PRIVATE", "maybe")]).is_err());
        assert!(cfg(&[("PAYSTREAM_IDEMPOTENCY_LOCK_TTL_MS", "-1")]).is_err());
    }

    #[test]
    fn abandonment_is_configurable_within_bounds() {
        let c = cfg(&[("PAYSTREAM_ABANDON_AFTER_SECS", "3600")]).unwrap();
        assert_eq!(c.abandon_after, Duration::from_secs(3600));
        for bad in ["0", "-1", "a day", "3153600001"] {
            let err = cfg(&[("PAYSTREAM_ABANDON_AFTER_SECS", bad)]).unwrap_err();
            assert_eq!(err.var, "PAYSTREAM_ABANDON_AFTER_SECS", "{bad}");
        }
        assert!(cfg(&[("PAYSTREAM_ABANDON_AFTER_SECS", "3153600000")]).is_ok());
    }

    #[test]
    fn the_settlement_window_is_configurable_within_bounds() {
        let c = cfg(&[("PAYSTREAM_SETTLEMENT_WINDOW_SECS", "2")]).unwrap();
        assert_eq!(c.settlement_window, Duration::from_secs(2));
        for bad in ["-1", "two days", "3153600001"] {
            let err = cfg(&[("PAYSTREAM_SETTLEMENT_WINDOW_SECS", bad)]).unwrap_err();
            assert_eq!(err.var, "PAYSTREAM_SETTLEMENT_WINDOW_SECS", "{bad}");
        }
    }

    #[test]
    fn webhook_settings() {
        let c = cfg(&[]).unwrap();
        assert_eq!(
            c.webhook_secret_key.expose(),
            b"paystream local development key!"
        );
        assert_eq!(c.webhook_timeout, Duration::from_secs(10));
        let c = cfg(&[
            ("PAYSTREAM_WEBHOOK_SECRET_KEY", OWN_KEY),
            ("PAYSTREAM_WEBHOOK_TIMEOUT_MS", "250"),
        ])
        .unwrap();
        assert_eq!(c.webhook_secret_key.expose()[0], 1);
        assert_eq!(c.webhook_timeout, Duration::from_millis(250));
        let short = cfg(&[("PAYSTREAM_WEBHOOK_SECRET_KEY", "c2hvcnQ=")]).unwrap_err();
        assert_eq!(short.var, "PAYSTREAM_WEBHOOK_SECRET_KEY");
        assert!(!short.to_string().contains("c2hvcnQ="));
        assert!(cfg(&[("PAYSTREAM_WEBHOOK_SECRET_KEY", "not base64!")]).is_err());
        assert!(cfg(&[("PAYSTREAM_WEBHOOK_TIMEOUT_MS", "0")]).is_err());
        assert!(cfg(&[("PAYSTREAM_WEBHOOK_TIMEOUT_MS", "soon")]).is_err());
    }

    #[test]
    fn the_previous_sealing_key_is_optional_parsed_and_never_the_public_one_in_production() {
        assert!(cfg(&[]).unwrap().webhook_secret_key_previous.is_none());
        let c = cfg(&[("PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS", OWN_KEY)]).unwrap();
        assert_eq!(
            c.webhook_secret_key_previous.as_ref().unwrap().expose()[0],
            1
        );
        let err = cfg(&[("PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS", "c2hvcnQ=")]).unwrap_err();
        assert_eq!(err.var, "PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS");
        assert!(!err.to_string().contains("c2hvcnQ="));
        // In development the public key may be the previous one (a laptop rotating off it).
        assert!(cfg(&[(
            "PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS",
            DEVELOPMENT_WEBHOOK_SECRET_KEY
        )])
        .is_ok());
        let err = production(&[
            ("PAYSTREAM_WEBHOOK_SECRET_KEY", OWN_KEY),
            ("PAYSTREAM_ACQUIRER_WEBHOOK_SECRET", "acq_own"),
            (
                "PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS",
                DEVELOPMENT_WEBHOOK_SECRET_KEY,
            ),
        ])
        .unwrap_err();
        assert_eq!(err.var, "PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS");
        assert!(!err.to_string().contains(DEVELOPMENT_WEBHOOK_SECRET_KEY));
    }

    #[test]
    fn errors_do_not_echo_the_database_url() {
        let err = cfg(&[("DATABASE_URL", "mysql://user:hunter2@db")]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
    }
}
