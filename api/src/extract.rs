//! Request and response payloads that keep the contract's error shape.
//!
//! `JsonBody<T>` parses with serde (not poem-openapi's own parser) so every mistake names the
//! offending field in `param`, unknown fields are refused as Stripe does, and an integer field
//! never accepts `10.5` or `"1099"`. `SerdeJson<T>` answers with serde too, so a response, its
//! idempotent replay and the event it caused share one serialization.
//!
//! Strings and object keys may not hold U+0000 or other control characters (tab, line feed and
//! carriage return excepted): PostgreSQL cannot store U+0000 at all, and the rest have no place
//! in ids, codes or descriptions. Refusing them here names the field; the mapping of
//! PostgreSQL's invalid-text errors in `error.rs` is the safety net for query and path values.

use poem::{IntoResponse, Request, RequestBody, Response};
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ApiError;
use crate::MAX_BODY_BYTES;

/// A JSON body. `REQUIRED` only says so in the API document: an empty body always parses as
/// `{}`, so an operation whose body has required fields answers a missing one with a 400.
pub struct JsonBody<T, const REQUIRED: bool = false>(pub T);

/// Parses a JSON body into `T`, mapping every failure to a 400 that names the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = paystream_shared::telemetry::scrub(&inner.to_string());
        if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            return ApiError::invalid(
                "invalid_json",
                format!("The request body is not valid JSON: {message}"),
            );
        }
        let prefix = if path == "." {
            String::new()
        } else {
            format!("{path}.")
        };
        if let Some(field) = backticked(&message, "missing field `") {
            return ApiError::invalid(
                "parameter_missing",
                format!("Missing required param: {prefix}{field}"),
            )
            .with_param(format!("{prefix}{field}"));
        }
        if backticked(&message, "unknown field `").is_some() {
            // For an unknown field the path already ends with the field's own name.
            return ApiError::invalid(
                "parameter_unknown",
                format!("Received unknown parameter: {path}"),
            )
            .with_param(path);
        }
        let err = ApiError::invalid("parameter_invalid", describe_invalid(&path, &message));
        if path == "." {
            err
        } else {
            err.with_param(path)
        }
    })?;
    de.end()
        .map_err(|_| ApiError::invalid("invalid_json", "Unexpected data after the JSON body"))?;
    reject_control_characters(bytes)?;
    Ok(value)
}

/// JSON forbids raw control characters inside strings, so one can only arrive as a `\u` escape:
/// a body without `\u` needs no second look.
fn reject_control_characters(bytes: &[u8]) -> Result<(), ApiError> {
    if !bytes.windows(2).any(|w| w == b"\\u") {
        return Ok(());
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Ok(());
    };
    let Some(path) = find_control_character(&value, "") else {
        return Ok(());
    };
    if path.is_empty() {
        return Err(ApiError::invalid(
            "parameter_invalid",
            "The request body contains a control character such as U+0000",
        ));
    }
    Err(ApiError::invalid(
        "parameter_invalid",
        format!("`{path}` contains a control character such as U+0000"),
    )
    .with_param(path))
}

fn is_refused(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

/// The path of the first string holding a refused character, in `serde_path_to_error`'s
/// notation (`metadata.note`, `events[2]`); a refused object key names the object itself.
fn find_control_character(value: &serde_json::Value, path: &str) -> Option<String> {
    match value {
        serde_json::Value::String(s) => s.chars().any(is_refused).then(|| path.to_owned()),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_control_character(v, &format!("{path}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.chars().any(is_refused) {
                return Some(path.to_owned());
            }
            let child = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            find_control_character(v, &child)
        }),
        _ => None,
    }
}

/// Body fields that hold money: an integer count of the currency's minor unit.
const MONEY_FIELDS: &[&str] = &["amount", "amountToCapture"];

/// Says what a field must hold, in the API's terms rather than the parser's ("expected i64 at
/// line 1 column 16" means nothing to a client). A money field says it is minor units.
fn describe_invalid(path: &str, message: &str) -> String {
    let message = message
        .rfind(" at line ")
        .map_or(message, |at| &message[..at]);
    let field = path.rsplit('.').next().unwrap_or(path);
    let expected = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|rest| rest.split_once(", expected "))
        .map(|(_, expected)| expected);
    let integer = |e: &str| matches!(e, "i64" | "u64" | "i32" | "u32" | "u16" | "u8" | "i16");
    match expected {
        Some(e) if MONEY_FIELDS.contains(&field) && integer(e) => format!(
            "`{path}` must be an integer count of the currency's minor unit, such as 1099 for 10.99 USD (no fractions, no strings)"
        ),
        Some(e) if integer(e) => format!("`{path}` must be an integer"),
        Some(e) if e.starts_with("struct ") || e == "a map" => {
            format!("`{path}` must be an object")
        }
        Some("a sequence") => format!("`{path}` must be an array"),
        Some(e) => format!("`{path}` must be {e}"),
        None if path == "." => format!("Invalid request body: {message}"),
        None => format!("Invalid value for `{path}`: {message}"),
    }
}

fn backticked<'a>(message: &'a str, lead: &str) -> Option<&'a str> {
    let start = message.find(lead)? + lead.len();
    let end = message[start..].find('`')? + start;
    Some(&message[start..end])
}

impl<'a, T: DeserializeOwned + Type + Send, const REQUIRED: bool> ApiExtractor<'a>
    for JsonBody<T, REQUIRED>
{
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: "application/json",
                schema: T::schema_ref(),
            }],
            required: REQUIRED,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        if let Some(ct) = request.content_type() {
            let is_json = ct.starts_with("application/json") || ct.contains("+json");
            if !is_json {
                return Err(ApiError::invalid(
                    "parameter_invalid",
                    "The request body must be JSON (Content-Type: application/json)",
                )
                .into());
            }
        }
        let bytes = body
            .take()?
            .into_bytes_limit(MAX_BODY_BYTES)
            .await
            .map_err(|_| ApiError::too_large(MAX_BODY_BYTES))?;
        Ok(JsonBody(parse_json(&bytes)?))
    }
}

/// A JSON response serialized with serde.
pub struct SerdeJson<T>(pub T);

impl<T: Serialize + Send> IntoResponse for SerdeJson<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(bytes) => Response::builder()
                .content_type("application/json")
                .body(bytes),
            Err(e) => ApiError::internal(&e).into_response(),
        }
    }
}

impl<T: Type + Send> poem_openapi::payload::Payload for SerdeJson<T> {
    const CONTENT_TYPE: &'static str = "application/json";

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

/// Parses `limit` (1..=100, default 10), as every list takes it (docs/api.md).
pub fn parse_limit(raw: Option<&str>) -> Result<i64, ApiError> {
    match raw {
        None => Ok(10),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=100).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                "parameter_invalid",
                "`limit` must be an integer from 1 to 100",
            )
            .with_param("limit")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Req {
        amount: i64,
        #[allow(dead_code)]
        nested: Option<Nested>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Nested {
        #[allow(dead_code)]
        n: i64,
    }

    fn err(body: &str) -> ApiError {
        parse_json::<Req>(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn every_parse_failure_names_its_field() {
        assert_eq!(
            parse_json::<Req>(br#"{"amount": 1099}"#).unwrap().amount,
            1099
        );
        let e = err(r#"{"amount": 10.5}"#);
        assert_eq!(
            (e.code.as_str(), e.param.as_deref()),
            ("parameter_invalid", Some("amount"))
        );
        let e = err(r#"{"amount": "1099"}"#);
        assert_eq!(e.param.as_deref(), Some("amount"));
        let e = err(r#"{}"#);
        assert_eq!(
            (e.code.as_str(), e.param.as_deref()),
            ("parameter_missing", Some("amount"))
        );
        let e = err(r#"{"amount": 1, "colour": "red"}"#);
        assert_eq!(
            (e.code.as_str(), e.param.as_deref()),
            ("parameter_unknown", Some("colour"))
        );
        let e = err(r#"{"amount": 1, "nested": {}}"#);
        assert_eq!(e.param.as_deref(), Some("nested.n"));
        let e = err(r#"{"amount": 1,"#);
        assert_eq!(e.code, "invalid_json");
        let e = err(r#"{"amount": 1} trailing"#);
        assert_eq!(e.code, "invalid_json");
        let e = err("[1]");
        assert_eq!(
            (e.code.as_str(), e.param.as_deref()),
            ("parameter_invalid", None)
        );
    }

    #[test]
    fn a_fractional_or_string_amount_says_it_is_minor_units() {
        for body in [
            r#"{"amount": 10.99}"#,
            r#"{"amount": "1099"}"#,
            r#"{"amount": -1.5}"#,
        ] {
            let e = err(body);
            assert_eq!(
                (e.code.as_str(), e.param.as_deref()),
                ("parameter_invalid", Some("amount")),
                "{body}"
            );
            assert!(e.message.contains("minor unit"), "{}", e.message);
            assert!(e.message.contains("1099"), "{}", e.message);
            for internal in ["i64", "floating point", "line 1", "column"] {
                assert!(!e.message.contains(internal), "{}", e.message);
            }
        }
        let e = err(r#"{"amount": 1, "nested": {"n": 2.5}}"#);
        assert_eq!(e.message, "`nested.n` must be an integer");
        let e = err(r#"{"amount": 1, "nested": []}"#);
        assert!(!e.message.contains("line 1"), "{}", e.message);
    }

    #[test]
    fn error_messages_never_echo_a_card_number() {
        let e = err(r#"{"amount": "4242424242424242"}"#);
        assert!(!e.message.contains("4242424242424242"), "{}", e.message);
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Texts {
        #[allow(dead_code)]
        name: String,
        #[allow(dead_code)]
        tags: Option<Vec<String>>,
        #[allow(dead_code)]
        metadata: Option<std::collections::BTreeMap<String, String>>,
    }

    #[test]
    fn control_characters_are_refused_naming_the_field() {
        let param = |body: &str| {
            let e = parse_json::<Texts>(body.as_bytes()).unwrap_err();
            assert_eq!(e.code, "parameter_invalid", "{body}");
            e.param
        };
        assert_eq!(param(r#"{"name": "a\u0000b"}"#).as_deref(), Some("name"));
        assert_eq!(
            param(r#"{"name": "a", "tags": ["ok", "\u001b[31m"]}"#).as_deref(),
            Some("tags[1]")
        );
        assert_eq!(
            param(r#"{"name": "a", "metadata": {"note": "x\u0000"}}"#).as_deref(),
            Some("metadata.note")
        );
        assert_eq!(
            param(r#"{"name": "a", "metadata": {"k\u0000": "v"}}"#).as_deref(),
            Some("metadata")
        );
        // Escapes that are not control characters, and the whitespace ones, still parse.
        let fine = r#"{"name": "caf\u00e9 \u2603\ttab\nline\r\n", "tags": ["\\u0000 is text"]}"#;
        assert!(parse_json::<Texts>(fine.as_bytes()).is_ok());
    }

    #[test]
    fn limit_bounds() {
        assert_eq!(parse_limit(None).unwrap(), 10);
        assert_eq!(parse_limit(Some("100")).unwrap(), 100);
        assert!(parse_limit(Some("0")).is_err());
        assert!(parse_limit(Some("101")).is_err());
        assert!(parse_limit(Some("ten")).is_err());
    }
}
