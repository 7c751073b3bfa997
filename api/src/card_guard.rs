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

/// Where a card number was found; named in the answer so a client can find its mistake.
fn refusal(place: &str) -> Response {
    tracing::info!(
        place,
        "request refused: it carries what looks like a card number"
    );
    to_contract_response(
        ApiError::invalid(
            CODE,
            format!(
                "The request's {place} contains what looks like a card number. Card numbers may \
             only be sent to the vault (POST /vault/tokens); use the token or payment method \
             it gives you."
            ),
        )
        .into(),
    )
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
    if find_pan(&decoded(req.uri().path())) {
        return Ok(refusal("path"));
    }
    if let Some(query) = req.uri().query() {
        if find_pan(&decoded(query)) {
            return Ok(refusal("query string"));
        }
    }
    if is_text_body(&req) {
        let body = req.take_body();
        let Ok(bytes) = body.into_bytes_limit(MAX_BODY_BYTES).await else {
            return Ok(to_contract_response(
                ApiError::too_large(MAX_BODY_BYTES).into(),
            ));
        };
        let text = String::from_utf8_lossy(&bytes);
        // JSON may spell digits as \u0034 escapes; a string that does is decoded first.
        let unescaped = if text.contains("\\u") {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .map(|v| v.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        if find_pan(&text) || find_pan(&unescaped) {
            return Ok(refusal("body"));
        }
        req.set_body(Body::from(bytes));
    }
    ep.call(req).await.map(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_paths_are_decoded_before_the_check() {
        assert_eq!(decoded("a=4242%204242+4242"), "a=4242 4242 4242");
        assert_eq!(decoded("%zz%4"), "%zz%4");
        assert!(find_pan(&decoded("customerId=4242%204242%204242%204242")));
        assert!(!find_pan(&decoded("customerId=cus_42&limit=10")));
    }
}
