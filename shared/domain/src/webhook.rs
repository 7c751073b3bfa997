//! Webhooks to merchants, as domain values: the endpoint URL, the event types a subscription
//! selects, the signing secret and the Standard Webhooks signature, the delivery status, and
//! which IP addresses a delivery may never reach.
//!
//! Everything here is pure: no HTTP, no SQL, no clock except where a caller passes one in.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use super::DomainError;

/// The longest endpoint URL we accept (browsers and most proxies cap near here too).
pub const MAX_URL_LEN: usize = 2048;
/// The most event types one subscription may list (there are fewer distinct types than this).
pub const MAX_EVENT_TYPES: usize = 32;
/// Random bytes behind a new secret: above the contract's minimum of 24.
pub const SECRET_BYTES: usize = 32;
/// Secret keys shorter than this (after base64) are refused: too weak to sign with.
pub const MIN_SECRET_BYTES: usize = 24;
pub const SECRET_PREFIX: &str = "whsec_";

/// A merchant's endpoint: an absolute http(s) URL without credentials, at most 2048 bytes.
///
/// Whether its host may be reached is a separate question (see [`is_forbidden_ip`]): a URL
/// naming a private address literally is refused at subscribe time by the caller, and the
/// delivery worker checks every resolved address again at connect time.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl(url::Url);

impl WebhookUrl {
    pub fn parse(raw: &str) -> Result<WebhookUrl, DomainError> {
        let invalid = |why: &str| {
            DomainError::new(
                "url_invalid",
                Some("url".to_owned()),
                format!("`url` {why}"),
            )
        };
        if raw.len() > MAX_URL_LEN {
            return Err(invalid("may be at most 2048 characters long"));
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("must not contain whitespace"));
        }
        let url = url::Url::parse(raw).map_err(|_| invalid("must be an absolute http(s) URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("must use http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            // Credentials in a URL end up in logs and in every list response.
            return Err(invalid("must not carry credentials (user:password@)"));
        }
        match url.host() {
            None => return Err(invalid("must name a host")),
            Some(url::Host::Domain("")) => return Err(invalid("must name a host")),
            Some(_) => {}
        }
        if url.as_str().len() > MAX_URL_LEN {
            return Err(invalid("may be at most 2048 characters long"));
        }
        Ok(WebhookUrl(url))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The host when it is an IP address written literally (`http://10.0.0.1/`, `http://[::1]/`),
    /// which no resolver is asked about.
    pub fn literal_ip(&self) -> Option<IpAddr> {
        match self.0.host()? {
            url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
            url::Host::Domain(_) => None,
        }
    }

    /// Refuses a URL whose host is a literal address that [`is_forbidden_ip`] rejects, unless
    /// private addresses are allowed. Host names pass here; they are checked once resolved.
    pub fn ensure_reachable(&self, allow_private: bool) -> Result<(), DomainError> {
        match self.literal_ip() {
            Some(ip) if !allow_private && is_forbidden_ip(ip) => Err(DomainError::new(
                "url_not_allowed",
                Some("url".to_owned()),
                "`url` points at a loopback, private, link-local or otherwise reserved address",
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({})", self.as_str())
    }
}

/// Whether a delivery must never connect to `ip`: anything that is not a public unicast
/// address. Loopback, RFC 1918, link-local (and with it the cloud metadata service at
/// 169.254.169.254), carrier-grade NAT, unspecified, multicast, broadcast, documentation,
/// benchmarking and reserved ranges, IPv6 unique-local and link-local, and IPv6 forms that
/// embed an IPv4 address (mapped, compatible, NAT64) judged by the address they embed.
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0                                   // 0.0.0.0/8 "this network"
        || a == 10                           // 10/8
        || a == 127                          // loopback
        || (a == 100 && (64..=127).contains(&b)) // 100.64/10 carrier-grade NAT
        || (a == 169 && b == 254)            // link-local, cloud metadata
        || (a == 172 && (16..=31).contains(&b)) // 172.16/12
        || (a == 192 && b == 168)            // 192.168/16
        || (a == 192 && b == 0 && c == 0)    // 192.0.0/24 IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)    // TEST-NET-1
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113)  // TEST-NET-3
        || a >= 224 // multicast, reserved and broadcast
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_forbidden_v4(v4);
    }
    let seg = ip.segments();
    ip.is_unspecified()
        || ip.is_loopback()
        || (seg[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
        || (seg[0] & 0xffc0) == 0xfe80 // fe80::/10 link-local
        || (seg[0] & 0xffc0) == 0xfec0 // fec0::/10 site-local (deprecated, still routable inside)
        || (seg[0] & 0xff00) == 0xff00 // multicast
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        || (seg[0] == 0x0100 && seg[1] == 0 && seg[2] == 0 && seg[3] == 0) // discard-only
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`)
/// or NAT64 (`64:ff9b::a.b.c.d`) address, which a dual-stack socket would reach.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = ip.segments();
    let tail = || {
        let o = ip.octets();
        Ipv4Addr::new(o[12], o[13], o[14], o[15])
    };
    if seg[..5] == [0, 0, 0, 0, 0] && (seg[5] == 0xffff || (seg[5] == 0 && seg[6] != 0)) {
        return Some(tail());
    }
    if seg[0] == 0x0064 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
        return Some(tail());
    }
    None
}

/// Every event type (docs/webhooks.md).
pub const EVENT_TYPES: &[&str] = &[
    "payment_intent.created",
    "payment_intent.processing",
    "payment_intent.requires_action",
    "payment_intent.amount_capturable_updated",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "payment_intent.authorization_expiring",
    "refund.created",
    "refund.succeeded",
    "refund.failed",
    "dispute.created",
    "dispute.updated",
    "dispute.closed",
    "dispute.deadline_approaching",
    "dispute.funds_withdrawn",
    "dispute.funds_reinstated",
    "settlement.discrepancy_found",
];

/// One of the contract's event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventType(&'static str);

impl EventType {
    pub fn parse(raw: &str) -> Result<EventType, DomainError> {
        EVENT_TYPES
            .iter()
            .find(|t| **t == raw)
            .map(|t| EventType(t))
            .ok_or_else(|| {
                let shown = super::quote_input(raw, 64);
                DomainError::new(
                    "event_type_invalid",
                    Some("type".to_owned()),
                    format!("`{shown}` is not an event type; see the contract's list"),
                )
            })
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// What a subscription receives: every event (`["*"]`) or the listed types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSelection {
    All,
    Only(Vec<EventType>),
}

impl EventSelection {
    pub const WILDCARD: &'static str = "*";

    /// Parses the `events` list of a subscribe request: not empty, each a known type or `*`,
    /// `*` alone. Duplicates are dropped; the order of first appearance is kept.
    pub fn parse(raw: &[String]) -> Result<EventSelection, DomainError> {
        let param = |i: usize| Some(format!("events[{i}]"));
        if raw.is_empty() {
            return Err(DomainError::new(
                "parameter_invalid",
                Some("events".to_owned()),
                "`events` must list at least one event type, or `*` for all",
            ));
        }
        if raw.len() > MAX_EVENT_TYPES {
            return Err(DomainError::new(
                "parameter_invalid",
                Some("events".to_owned()),
                format!("`events` may list at most {MAX_EVENT_TYPES} types"),
            ));
        }
        if raw.iter().any(|e| e == Self::WILDCARD) {
            if raw.len() == 1 {
                return Ok(EventSelection::All);
            }
            let at = raw.iter().position(|e| e != Self::WILDCARD).unwrap_or(0);
            return Err(DomainError::new(
                "parameter_invalid",
                param(at),
                "`*` already selects every event; list it alone",
            ));
        }
        let mut types: Vec<EventType> = Vec::with_capacity(raw.len());
        for (i, r) in raw.iter().enumerate() {
            let t = EventType::parse(r).map_err(|e| e.for_param(&format!("events[{i}]")))?;
            if !types.contains(&t) {
                types.push(t);
            }
        }
        Ok(EventSelection::Only(types))
    }

    /// The stored and displayed form: `["*"]` or the type names.
    pub fn to_strings(&self) -> Vec<String> {
        match self {
            EventSelection::All => vec![Self::WILDCARD.to_owned()],
            EventSelection::Only(types) => types.iter().map(|t| t.as_str().to_owned()).collect(),
        }
    }

    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            EventSelection::All => true,
            EventSelection::Only(types) => types.iter().any(|t| t.as_str() == event_type),
        }
    }
}

/// A signing secret: `whsec_` + base64 of the key bytes. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    text: String,
    key: Vec<u8>,
}

impl WebhookSecret {
    /// A fresh secret of [`SECRET_BYTES`] random bytes from the OS generator.
    pub fn generate() -> WebhookSecret {
        let mut key = vec![0u8; SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut key);
        WebhookSecret {
            text: format!("{SECRET_PREFIX}{}", BASE64.encode(&key)),
            key,
        }
    }

    /// Parses `whsec_<base64>` (the form we hand out and the Standard Webhooks vectors use).
    pub fn parse(raw: &str) -> Result<WebhookSecret, DomainError> {
        let invalid = || {
            DomainError::new(
                "secret_invalid",
                None,
                "a webhook secret is `whsec_` followed by base64 of at least 24 bytes",
            )
        };
        let encoded = raw.strip_prefix(SECRET_PREFIX).ok_or_else(invalid)?;
        let key = BASE64.decode(encoded).map_err(|_| invalid())?;
        if key.len() < MIN_SECRET_BYTES {
            return Err(invalid());
        }
        Ok(WebhookSecret {
            text: raw.to_owned(),
            key,
        })
    }

    /// The one deliberate way to read the secret's text (shown to the merchant once).
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The HMAC key: the bytes the base64 after `whsec_` encodes.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), as Standard Webhooks says.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v1,{}",
            BASE64.encode(self.mac(msg_id, timestamp, body).finalize().into_bytes())
        )
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// Whether any `v1,` signature in a space-separated `webhook-signature` header was made
    /// with this secret. Constant time per signature (what a receiver should do too).
    pub fn verify(&self, msg_id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        header.split(' ').any(|sig| {
            let Some(b64) = sig.strip_prefix("v1,") else {
                return false;
            };
            let Ok(bytes) = BASE64.decode(b64) else {
                return false;
            };
            self.mac(msg_id, timestamp, body)
                .verify_slice(&bytes)
                .is_ok()
        })
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

/// The `webhook-signature` header: one signature per secret, space-separated. During a
/// rotation the new secret and the one it replaced both sign, so a receiver that still holds
/// the old secret keeps verifying until it switches.
pub fn signature_header(
    secrets: &[&WebhookSecret],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|s| s.sign(msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where one delivery (one event to one subscription) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 3] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Succeeded,
        DeliveryStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    /// `pending` ends in `succeeded` or `failed`; a redelivery (the API's, or a dead letter
    /// replayed) starts a new attempt cycle from either of those, back in `pending`.
    pub fn can_transition(self, to: DeliveryStatus) -> bool {
        use DeliveryStatus::*;
        matches!(
            (self, to),
            (Pending, Succeeded | Failed) | (Succeeded | Failed, Pending)
        )
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryStatus {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, DomainError> {
        DeliveryStatus::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| {
                DomainError::new(
                    "parameter_invalid",
                    Some("status".to_owned()),
                    "`status` must be `pending`, `succeeded` or `failed`",
                )
            })
    }
}

/// What an endpoint's HTTP answer means for the delivery (docs/webhooks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseClass {
    /// 2xx: delivered.
    Success,
    /// 5xx, 408, 429: try again later.
    Retry,
    /// 410: the endpoint is gone for good; the subscription is disabled.
    Gone,
    /// Any other answer (other 4xx, and 1xx/3xx since redirects are not followed): final.
    Final,
}

impl ResponseClass {
    pub fn of(status: u16) -> ResponseClass {
        match status {
            200..=299 => ResponseClass::Success,
            408 | 429 | 500..=599 => ResponseClass::Retry,
            410 => ResponseClass::Gone,
            _ => ResponseClass::Final,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_test_vector() {
        // Published by the Standard Webhooks specification.
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(secret.verify(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
            &format!("v1,bogus {sig}")
        ));
        assert!(!secret.verify("msg_other", 1614265330, br#"{"test": 2432232314}"#, &sig));
        assert!(!secret.verify("m", 1, b"", "v2,abc v1,!!notbase64"));
    }

    #[test]
    fn secrets_are_generated_parsed_and_never_printed() {
        let s = WebhookSecret::generate();
        assert!(s.expose().starts_with("whsec_"));
        assert_eq!(s.key().len(), SECRET_BYTES);
        assert_eq!(WebhookSecret::parse(s.expose()).unwrap(), s);
        assert_ne!(WebhookSecret::generate(), s);
        assert_eq!(format!("{s:?}"), "WebhookSecret(***)");
        assert!(WebhookSecret::parse("sk_abc").is_err());
        assert!(WebhookSecret::parse("whsec_!!!").is_err());
        // 16 bytes: too short to sign with.
        assert!(WebhookSecret::parse("whsec_AAAAAAAAAAAAAAAAAAAAAA==").is_err());
    }

    #[test]
    fn rotation_header_carries_both_signatures() {
        let (a, b) = (WebhookSecret::generate(), WebhookSecret::generate());
        let header = signature_header(&[&a, &b], "evt_1", 10, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(a.verify("evt_1", 10, b"{}", &header));
        assert!(b.verify("evt_1", 10, b"{}", &header));
        assert!(!WebhookSecret::generate().verify("evt_1", 10, b"{}", &header));
    }

    #[test]
    fn urls_are_http_without_credentials_and_bounded() {
        let u = WebhookUrl::parse("https://shop.example/hooks?x=1").unwrap();
        assert_eq!(u.as_str(), "https://shop.example/hooks?x=1");
        assert_eq!(u.to_string(), u.as_str());
        assert!(format!("{u:?}").contains("shop.example"));
        assert!(u.literal_ip().is_none());
        assert!(WebhookUrl::parse("http://127.0.0.1:8080/h").is_ok());
        for bad in [
            "ftp://shop.example/",
            "shop.example/hooks",
            "https://user:pw@shop.example/",
            "https://user@shop.example/",
            "https://",
            "http://:80/",
            "https://shop.example/a b",
            "javascript:alert(1)",
            "",
        ] {
            let e = WebhookUrl::parse(bad).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("url"), "{bad}");
        }
        let long = format!("https://shop.example/{}", "a".repeat(MAX_URL_LEN));
        assert!(WebhookUrl::parse(&long).is_err());
    }

    #[test]
    fn literal_private_hosts_are_refused_unless_allowed() {
        for host in [
            "http://127.0.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://10.1.2.3/",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://0.0.0.0/",
            "http://2130706433/", // 127.0.0.1 written as one number
            "http://[::ffff:192.168.1.1]/",
        ] {
            let u = WebhookUrl::parse(host).unwrap();
            assert!(u.literal_ip().is_some(), "{host}");
            assert_eq!(
                u.ensure_reachable(false).unwrap_err().code,
                "url_not_allowed",
                "{host}"
            );
            assert!(u.ensure_reachable(true).is_ok());
        }
        assert!(WebhookUrl::parse("https://93.184.215.14/")
            .unwrap()
            .ensure_reachable(false)
            .is_ok());
        // Names are checked after resolution, not here.
        assert!(WebhookUrl::parse("http://localhost/")
            .unwrap()
            .ensure_reachable(false)
            .is_ok());
    }

    #[test]
    fn forbidden_ranges() {
        let forbidden = [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.9.9.9",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.1",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fdff::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "100::1",
        ];
        for ip in forbidden {
            assert!(is_forbidden_ip(ip.parse().unwrap()), "{ip}");
        }
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "192.169.0.1",
            "169.253.0.1",
            "93.184.215.14",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ];
        for ip in public {
            assert!(!is_forbidden_ip(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn event_types_and_selections() {
        assert_eq!(
            EventType::parse("payment_intent.succeeded")
                .unwrap()
                .as_str(),
            "payment_intent.succeeded"
        );
        assert_eq!(
            EventType::parse("refund.created").unwrap().to_string(),
            "refund.created"
        );
        assert_eq!(
            EventType::parse("payment_intent.exploded")
                .unwrap_err()
                .code,
            "event_type_invalid"
        );
        let all = EventSelection::parse(&["*".to_owned()]).unwrap();
        assert_eq!(all, EventSelection::All);
        assert!(all.matches("anything.at_all"));
        assert_eq!(all.to_strings(), vec!["*"]);
        let some = EventSelection::parse(&[
            "refund.created".to_owned(),
            "payment_intent.succeeded".to_owned(),
            "refund.created".to_owned(),
        ])
        .unwrap();
        assert_eq!(
            some.to_strings(),
            vec!["refund.created", "payment_intent.succeeded"]
        );
        assert!(some.matches("payment_intent.succeeded"));
        assert!(!some.matches("payment_intent.created"));
        let e =
            EventSelection::parse(&["refund.created".to_owned(), "nope".to_owned()]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("events[1]"));
        assert!(EventSelection::parse(&[]).is_err());
        let e = EventSelection::parse(&["*".to_owned(), "refund.created".to_owned()]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("events[1]"));
        let many: Vec<String> = (0..=MAX_EVENT_TYPES)
            .map(|_| "refund.created".into())
            .collect();
        assert!(EventSelection::parse(&many).is_err());
    }

    #[test]
    fn delivery_status_machine() {
        use DeliveryStatus::*;
        assert!(Pending.can_transition(Succeeded));
        assert!(Pending.can_transition(Failed));
        assert!(Failed.can_transition(Pending));
        assert!(Succeeded.can_transition(Pending));
        assert!(!Succeeded.can_transition(Failed));
        assert!(!Pending.can_transition(Pending));
        for s in DeliveryStatus::ALL {
            assert_eq!(s.as_str().parse::<DeliveryStatus>().unwrap(), s);
            assert_eq!(s.to_string(), s.as_str());
        }
        assert_eq!(
            "done"
                .parse::<DeliveryStatus>()
                .unwrap_err()
                .param
                .as_deref(),
            Some("status")
        );
    }

    #[test]
    fn response_classes_follow_the_contract() {
        assert_eq!(ResponseClass::of(200), ResponseClass::Success);
        assert_eq!(ResponseClass::of(204), ResponseClass::Success);
        for retry in [408, 429, 500, 502, 503, 504] {
            assert_eq!(ResponseClass::of(retry), ResponseClass::Retry, "{retry}");
        }
        assert_eq!(ResponseClass::of(410), ResponseClass::Gone);
        for fin in [301, 302, 400, 401, 403, 404, 422] {
            assert_eq!(ResponseClass::of(fin), ResponseClass::Final, "{fin}");
        }
    }
}
