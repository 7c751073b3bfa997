//! The API refuses card numbers. Card data goes to the vault (`POST /vault/tokens`) and nowhere
//! else, so a request to this process whose path, query or body holds something that looks like
//! a card number is answered 400 `card_data_not_allowed` before any handler, log line, metric or
//! table sees it. This layer is the outermost one: the request span (which logs the path) and
//! the idempotency store (which keeps bodies) only ever see requests that passed it. The answer
//! never repeats the number.
//!
//! "Looks like a card number" is [`paystream_shared::domain::scrub::find_pan`]: a free-standing
//! run of 13 to 19 digits, optionally grouped by single spaces or dashes, that passes the Luhn
//! check. Bodies are checked when they are text (JSON, a form, or no declared type); a
//! multipart upload or other binary body is left to its handler, since file bytes are full of
//! digit runs that mean nothing.

use std::sync::Arc;

use poem::http::header::CONTENT_TYPE;
use poem::{Body, Endpoint, IntoResponse, Request, Response};

use paystream_shared::domain::scrub::find_pan;

use crate::error::{to_contract_response, ApiError};
use crate::MAX_BODY_BYTES;

pub const CODE: &str = "card_data_not_allowed";

/// Where a card number was found; named in the answer (and `param`, when a field holds it) so
/// a client can find its mistake.
fn refusal(place: &str, param: Option<String>) -> Response {
    tracing::info!(
        place,
        param = param.as_deref(),
        "request refused: it carries what looks like a card number"
    );
    let mut error = ApiError::invalid(
        CODE,
        format!(
            "The request's {place} contains what looks like a card number. Card numbers may \
             only be sent to the vault (POST /vault/tokens); use the token or payment method \
             it gives you."
        ),
    );
    if let Some(param) = param {
        error = error.with_param(param);
    }
    to_contract_response(error.into())
}

/// The dotted path of the first field (or key) of a JSON document that holds a card number,
/// e.g. `metadata.card`; `Some("")` when it is the document itself or a key.
fn json_field_with_pan(value: &serde_json::Value, path: &str) -> Option<String> {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        serde_json::Value::String(text) => find_pan(text).then(|| path.to_owned()),
        serde_json::Value::Number(n) => find_pan(&n.to_string()).then(|| path.to_owned()),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| json_field_with_pan(v, &join(&i.to_string()))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| {
            if find_pan(k) {
                Some(path.to_owned())
            } else {
                json_field_with_pan(v, &join(k))
            }
        }),
        _ => None,
    }
}

/// `Some(name)` for the first query parameter whose value holds a card number, `Some(None)`
/// when a name does; `None` when no pair does.
fn query_param_with_pan(query: &str) -> Option<Option<String>> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decoded(name);
        if find_pan(&name) {
            Some(None)
        } else if find_pan(&decoded(value)) {
            Some(Some(name))
        } else {
            None
        }
    })
}

fn is_text_body(req: &Request) -> bool {
    match req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(ct) => {
            let ct = ct.to_ascii_lowercase();
            ct.starts_with("application/json")
                || ct.starts_with("text/")
                || ct.starts_with("application/x-www-form-urlencoded")
                || ct.contains("+json")
        }
    }
}

/// Percent-decoding, so `4242%204242...` in a query or path is seen as the digits it is.
fn decoded(raw: &str) -> String {
    let plus_as_space = raw.replace('+', " ");
    percent_decode(&plus_as_space)
}

fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&raw[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn around<E: Endpoint>(ep: Arc<E>, mut req: Request) -> poem::Result<Response> {
    // The 3-D Secure callback is a browser page: it refuses with its own HTML 400.
    let in_browser = crate::routes::three_ds::is_callback_path(req.uri().path());
    let refuse = |place: &str, param: Option<String>| {
        let json = refusal(place, param);
        if in_browser {
            let mut page = crate::routes::three_ds::not_verified_page().into_response();
            page.set_status(json.status());
            page
        } else {
            json
        }
    };
    if find_pan(&decoded(req.uri().path())) {
        return Ok(refuse("path", None));
    }
    if let Some(query) = req.uri().query() {
        if let Some(param) = query_param_with_pan(query) {
            return Ok(refuse("query string", param));
        }
        if find_pan(&decoded(query)) {
            return Ok(refuse("query string", None));
        }
    }
    if is_text_body(&req) {
        let body = req.take_body();
        let Ok(bytes) = body.into_bytes_limit(MAX_BODY_BYTES).await else {
            return Ok(to_contract_response(
                ApiError::too_large(MAX_BODY_BYTES).into(),
            ));
        };
        // Parsed, the JSON's strings are seen as their characters (`\u0034` is a 4) and the
        // field holding a number can be named; the raw text is checked too, for what is not
        // JSON and for numbers spread over the syntax.
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            if let Some(field) = json_field_with_pan(&json, "") {
                return Ok(refusal("body", Some(field).filter(|f| !f.is_empty())));
            }
        }
        if find_pan(&String::from_utf8_lossy(&bytes)) {
            return Ok(refusal("body", None));
        }
        req.set_body(Body::from(bytes));
    }
    ep.call(req).await.map(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_holding_a_number_is_named() {
        let doc = serde_json::json!({"amount": 1099, "metadata": {"a": "x", "card": "4242 4242 4242 4242"}});
        assert_eq!(
            json_field_with_pan(&doc, "").as_deref(),
            Some("metadata.card")
        );
        let doc = serde_json::json!({"list": [1, "4000\u{30}00000000002"], "n": 2});
        assert_eq!(json_field_with_pan(&doc, "").as_deref(), Some("list.1"));
        let doc = serde_json::json!({"4242424242424242": 1});
        assert_eq!(json_field_with_pan(&doc, "").as_deref(), Some(""));
        let doc = serde_json::json!({"n": 4242424242424242_u64, "ok": true});
        assert_eq!(json_field_with_pan(&doc, "").as_deref(), Some("n"));
        assert_eq!(
            json_field_with_pan(&serde_json::json!({"a": null}), ""),
            None
        );
        assert_eq!(
            query_param_with_pan("limit=10&customerId=4242424242424242"),
            Some(Some("customerId".into()))
        );
        assert_eq!(query_param_with_pan("4242424242424242=1"), Some(None));
        assert_eq!(query_param_with_pan("limit=10"), None);
    }

    #[test]
    fn queries_and_paths_are_decoded_before_the_check() {
        assert_eq!(decoded("a=4242%204242+4242"), "a=4242 4242 4242");
        assert_eq!(decoded("%zz%4"), "%zz%4");
        assert!(find_pan(&decoded("customerId=4242%204242%204242%204242")));
        assert!(!find_pan(&decoded("customerId=cus_42&limit=10")));
    }
}
