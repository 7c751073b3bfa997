//! How every process reaches NATS: the seed servers, the credentials, TLS, and how many
//! replicas each JetStream stream keeps (README "Configuration", "Running on a NATS cluster").
//!
//! Parsed once here so the API, the workers, the relay and the CLI all read the same variables
//! the same way; `paystream_nats::connect` turns them into client options.

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::secret::Secret;

pub const URL_VAR: &str = "NATS_URL";
pub const REPLICAS_VAR: &str = "PAYSTREAM_STREAM_REPLICAS";
pub const USER_VAR: &str = "PAYSTREAM_NATS_USER";
pub const PASSWORD_VAR: &str = "PAYSTREAM_NATS_PASSWORD";
pub const TOKEN_VAR: &str = "PAYSTREAM_NATS_TOKEN";
pub const NKEY_SEED_VAR: &str = "PAYSTREAM_NATS_NKEY_SEED";
pub const CREDS_FILE_VAR: &str = "PAYSTREAM_NATS_CREDS_FILE";
pub const CA_FILE_VAR: &str = "PAYSTREAM_NATS_CA_FILE";
pub const CLIENT_CERT_VAR: &str = "PAYSTREAM_NATS_CLIENT_CERT";
pub const CLIENT_KEY_VAR: &str = "PAYSTREAM_NATS_CLIENT_KEY";

/// Replica counts JetStream accepts for a stream that should survive losing a node (3) or two
/// (5); even counts buy no extra failure tolerance over the odd count below them.
pub const ALLOWED_REPLICAS: [usize; 3] = [1, 3, 5];

/// How the client proves who it is. At most one is configured; the server decides which it
/// accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    None,
    UserPassword {
        user: String,
        password: Secret<String>,
    },
    Token(Secret<String>),
    /// An nkey seed (`SU…`): the client signs the server's nonce with it.
    NkeySeed(Secret<String>),
    /// A `.creds` file (JWT and nkey seed) of a decentralized-auth account.
    CredsFile(PathBuf),
}

/// TLS to NATS. A `tls://` seed also turns it on, with the system roots unless a CA is given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// The CA that signed the servers' certificates (`PAYSTREAM_NATS_CA_FILE`).
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key, for servers that verify clients.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl NatsTls {
    /// Whether the connection must be TLS whatever the URL says.
    pub fn required(&self) -> bool {
        self.ca_file.is_some() || self.client_cert.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSettings {
    /// The seed servers, in the order given. The client learns the rest of the cluster from
    /// whichever answers first and reconnects to any live node.
    pub servers: Vec<String>,
    pub auth: NatsAuth,
    pub tls: NatsTls,
    /// Replicas of every stream and durable consumer (`PAYSTREAM_STREAM_REPLICAS`).
    pub stream_replicas: usize,
}

impl NatsSettings {
    /// One server, no credentials, one replica: what tests and the local default use.
    pub fn plain(url: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            servers: parse_servers(url)?,
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            stream_replicas: 1,
        })
    }

    pub fn from_lookup(
        lookup: &impl Fn(&str) -> Option<String>,
        default_url: &str,
    ) -> Result<Self, ConfigError> {
        let get = |var: &str| lookup(var).filter(|v| !v.trim().is_empty());
        let servers = parse_servers(&get(URL_VAR).unwrap_or_else(|| default_url.to_owned()))?;

        let replicas_raw = get(REPLICAS_VAR).unwrap_or_else(|| "1".to_owned());
        let stream_replicas = replicas_raw
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| ALLOWED_REPLICAS.contains(n))
            .ok_or_else(|| ConfigError {
                var: REPLICAS_VAR,
                value: replicas_raw.clone(),
                reason: "must be 1, 3 or 5 (3 needs a cluster of at least three nodes)".into(),
            })?;

        let user = get(USER_VAR);
        let password = get(PASSWORD_VAR);
        let token = get(TOKEN_VAR);
        let nkey = get(NKEY_SEED_VAR);
        let creds = get(CREDS_FILE_VAR);
        let chosen = [
            user.is_some(),
            token.is_some(),
            nkey.is_some(),
            creds.is_some(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count();
        if chosen > 1 {
            return Err(ConfigError {
                var: USER_VAR,
                value: "<hidden>".into(),
                reason: format!(
                    "set only one of {USER_VAR} (with {PASSWORD_VAR}), {TOKEN_VAR}, \
                     {NKEY_SEED_VAR} and {CREDS_FILE_VAR}"
                ),
            });
        }
        let auth = match (user, password, token, nkey, creds) {
            (Some(user), Some(password), ..) => NatsAuth::UserPassword {
                user,
                password: Secret::new(password),
            },
            (Some(_), None, ..) => {
                return Err(ConfigError {
                    var: PASSWORD_VAR,
                    value: "<unset>".into(),
                    reason: format!("must be set with {USER_VAR}"),
                })
            }
            (None, Some(_), ..) => {
                return Err(ConfigError {
                    var: PASSWORD_VAR,
                    value: "<hidden>".into(),
                    reason: format!("needs {USER_VAR} beside it"),
                })
            }
            (None, None, Some(token), ..) => NatsAuth::Token(Secret::new(token)),
            (None, None, None, Some(seed), _) => {
                if !seed.trim().starts_with('S') {
                    return Err(ConfigError {
                        var: NKEY_SEED_VAR,
                        value: "<hidden>".into(),
                        reason: "is not an nkey seed (a seed starts with S, e.g. SUA…)".into(),
                    });
                }
                NatsAuth::NkeySeed(Secret::new(seed.trim().to_owned()))
            }
            (None, None, None, None, Some(path)) => {
                NatsAuth::CredsFile(existing_file(CREDS_FILE_VAR, &path)?)
            }
            (None, None, None, None, None) => NatsAuth::None,
        };

        let ca_file = get(CA_FILE_VAR)
            .map(|p| existing_file(CA_FILE_VAR, &p))
            .transpose()?;
        let client_cert = match (get(CLIENT_CERT_VAR), get(CLIENT_KEY_VAR)) {
            (Some(cert), Some(key)) => Some((
                existing_file(CLIENT_CERT_VAR, &cert)?,
                existing_file(CLIENT_KEY_VAR, &key)?,
            )),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError {
                    var: CLIENT_KEY_VAR,
                    value: "<unset>".into(),
                    reason: format!("must be set with {CLIENT_CERT_VAR}"),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError {
                    var: CLIENT_CERT_VAR,
                    value: "<unset>".into(),
                    reason: format!("must be set with {CLIENT_KEY_VAR}"),
                })
            }
        };
        Ok(Self {
            servers,
            auth,
            tls: NatsTls {
                ca_file,
                client_cert,
            },
            stream_replicas,
        })
    }

    /// The seeds as one `NATS_URL` value, for child processes.
    pub fn url_list(&self) -> String {
        self.servers.join(",")
    }
}

/// `NATS_URL`: one URL or a comma-separated list (`nats://a:4222,nats://b:4222`). Each entry
/// must name a host; a port is optional (4222).
pub fn parse_servers(raw: &str) -> Result<Vec<String>, ConfigError> {
    let servers: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let bad = |entry: &str, reason: &str| ConfigError {
        var: URL_VAR,
        // A URL may carry a user and password; never echo it.
        value: if entry.contains('@') {
            "<hidden>".into()
        } else {
            entry.to_owned()
        },
        reason: reason.to_owned(),
    };
    if servers.is_empty() {
        return Err(bad(
            raw,
            "must name at least one server, e.g. nats://127.0.0.1:4222",
        ));
    }
    for entry in &servers {
        let rest = match entry.split_once("://") {
            Some((scheme, rest)) => {
                if !matches!(scheme, "nats" | "tls" | "ws" | "wss") {
                    return Err(bad(
                        entry,
                        "scheme must be nats://, tls://, ws:// or wss://",
                    ));
                }
                rest
            }
            None => entry.as_str(),
        };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
        let (host, port) = match host_port.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
            _ => (host_port, None),
        };
        if host.is_empty() {
            return Err(bad(entry, "names no host"));
        }
        if host.contains(':') && !host.starts_with('[') {
            return Err(bad(
                entry,
                "has more than one port; separate several servers with commas",
            ));
        }
        if let Some(port) = port {
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(bad(
                    entry,
                    "has an invalid port; separate several servers with commas",
                ));
            }
        }
    }
    Ok(servers)
}

fn existing_file(var: &'static str, path: &str) -> Result<PathBuf, ConfigError> {
    let path = PathBuf::from(path);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ConfigError {
            var,
            value: path.display().to_string(),
            reason: "is not a readable file".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<NatsSettings, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        NatsSettings::from_lookup(
            &|k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            "nats://127.0.0.1:4222",
        )
    }

    #[test]
    fn a_comma_separated_list_of_seeds() {
        let s = settings(&[(
            URL_VAR,
            "nats://127.0.0.1:4222, nats://127.0.0.1:4223,127.0.0.1:4224",
        )])
        .unwrap();
        assert_eq!(
            s.servers,
            [
                "nats://127.0.0.1:4222",
                "nats://127.0.0.1:4223",
                "127.0.0.1:4224"
            ]
        );
        assert_eq!(
            s.url_list(),
            "nats://127.0.0.1:4222,nats://127.0.0.1:4223,127.0.0.1:4224"
        );
        assert_eq!(s.stream_replicas, 1);
        assert_eq!(s.auth, NatsAuth::None);
        assert!(!s.tls.required());
        assert_eq!(settings(&[]).unwrap().servers, ["nats://127.0.0.1:4222"]);
        assert_eq!(
            parse_servers("tls://[::1]:4222,nats://nats-1")
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn bad_seed_lists_are_refused_by_name() {
        for bad in [
            ",",
            "nats://127.0.0.1:4222:4223",
            "http://x:4222",
            "nats://:4222",
            "nats://h:0",
        ] {
            let e = settings(&[(URL_VAR, bad)]).unwrap_err();
            assert_eq!(e.var, URL_VAR, "{bad}");
        }
        let e = settings(&[(URL_VAR, "nats://u:pw@h:x")]).unwrap_err();
        assert_eq!(e.value, "<hidden>");
    }

    #[test]
    fn replicas_are_one_three_or_five() {
        for (raw, n) in [("1", 1), ("3", 3), ("5", 5), (" 3 ", 3)] {
            assert_eq!(settings(&[(REPLICAS_VAR, raw)]).unwrap().stream_replicas, n);
        }
        for bad in ["0", "2", "4", "7", "three", "-1"] {
            let e = settings(&[(REPLICAS_VAR, bad)]).unwrap_err();
            assert_eq!(e.var, REPLICAS_VAR);
            assert!(e.reason.contains("1, 3 or 5"), "{}", e.reason);
        }
    }

    #[test]
    fn one_kind_of_credentials() {
        let s = settings(&[(USER_VAR, "app"), (PASSWORD_VAR, "pw")]).unwrap();
        assert!(matches!(s.auth, NatsAuth::UserPassword { ref user, .. } if user == "app"));
        // The password never shows in a debug print of the settings.
        assert!(!format!("{s:?}").contains("pw\""));
        assert!(matches!(
            settings(&[(TOKEN_VAR, "t0k")]).unwrap().auth,
            NatsAuth::Token(_)
        ));
        assert!(matches!(
            settings(&[(NKEY_SEED_VAR, "SUAEXAMPLE")]).unwrap().auth,
            NatsAuth::NkeySeed(_)
        ));
        assert_eq!(
            settings(&[(NKEY_SEED_VAR, "UABC")]).unwrap_err().var,
            NKEY_SEED_VAR
        );
        assert_eq!(
            settings(&[(USER_VAR, "app")]).unwrap_err().var,
            PASSWORD_VAR
        );
        assert_eq!(
            settings(&[(PASSWORD_VAR, "pw")]).unwrap_err().var,
            PASSWORD_VAR
        );
        let both = settings(&[(TOKEN_VAR, "t"), (NKEY_SEED_VAR, "SU")]).unwrap_err();
        assert!(both.reason.contains("only one"), "{}", both.reason);
        assert_eq!(
            settings(&[(CREDS_FILE_VAR, "/nonexistent/x.creds")])
                .unwrap_err()
                .var,
            CREDS_FILE_VAR
        );
    }

    #[test]
    fn tls_files_must_exist_and_come_in_pairs() {
        let dir = std::env::temp_dir().join(format!("nats-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ca.pem");
        std::fs::write(&file, "x").unwrap();
        let f = file.to_str().unwrap();
        let s = settings(&[(CA_FILE_VAR, f), (CLIENT_CERT_VAR, f), (CLIENT_KEY_VAR, f)]).unwrap();
        assert!(s.tls.required());
        assert_eq!(s.tls.ca_file.as_deref(), Some(file.as_path()));
        assert_eq!(
            settings(&[(CLIENT_CERT_VAR, f)]).unwrap_err().var,
            CLIENT_KEY_VAR
        );
        assert_eq!(
            settings(&[(CLIENT_KEY_VAR, f)]).unwrap_err().var,
            CLIENT_CERT_VAR
        );
        assert_eq!(
            settings(&[(CA_FILE_VAR, "/nonexistent/ca.pem")])
                .unwrap_err()
                .var,
            CA_FILE_VAR
        );
        let creds = settings(&[(CREDS_FILE_VAR, f)]).unwrap();
        assert_eq!(creds.auth, NatsAuth::CredsFile(file.clone()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
