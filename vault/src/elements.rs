//! `GET /vault/elements?key=pk_...&origin=https://shop.example`: the card fields, as a page on
//! the vault's own origin that a checkout page embeds in an iframe. The shopper types the card
//! into this page; its script sends it to `POST /vault/tokens` (same origin, no CORS) and hands
//! only the `tok_` to the embedding page by `postMessage`, addressed to that page's origin.
//! So no script the merchant serves ever reads a card number, which is what puts such a
//! merchant in SAQ A (docs/pci-scope.md).
//!
//! The page is served only for a live publishable key whose origins list `origin`; it may be
//! framed by that origin alone (`Content-Security-Policy: frame-ancestors`), and it listens
//! only to messages from its parent at that origin.

use poem::http::StatusCode;
use poem::web::{Data, Query};
use poem::{handler, Response};
use serde::Deserialize;

use paystream_shared::store::merchants::{self, Role};

use crate::State;

#[derive(Deserialize)]
pub struct ElementsQuery {
    key: Option<String>,
    origin: Option<String>,
}

/// A string as a JavaScript literal inside `<script>`: JSON, with `<` escaped so no value can
/// close the script element.
fn js_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned())
        .to_string()
        .replace('<', "\\u003c")
}

fn refused(status: StatusCode, message: &str) -> Response {
    Response::builder()
        .status(status)
        .content_type("text/html; charset=utf-8")
        .header("X-Frame-Options", "DENY")
        .body(format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Card fields</title></head>\
             <body><p>{message}</p></body></html>\n"
        ))
}

#[handler]
pub async fn page(Data(state): Data<&State>, Query(query): Query<ElementsQuery>) -> Response {
    let (Some(key), Some(origin)) = (query.key, query.origin) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "This page needs ?key=pk_...&amp;origin=https://your.shop",
        );
    };
    let Ok(origin) = merchants::parse_origin(&origin) else {
        return refused(StatusCode::BAD_REQUEST, "`origin` is not an origin.");
    };
    let owner = match merchants::authenticate(&state.pool, &key).await {
        Ok(Some(owner)) => owner,
        Ok(None) => return refused(StatusCode::UNAUTHORIZED, "Invalid API key provided."),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the key for the card fields");
            return refused(StatusCode::SERVICE_UNAVAILABLE, "Try again later.");
        }
    };
    if owner.role != Role::Publishable || !owner.allowed_origins.contains(&origin) {
        return refused(
            StatusCode::FORBIDDEN,
            "This publishable key may not be used from that origin.",
        );
    }
    let csp = format!(
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
         connect-src 'self'; frame-ancestors {origin}"
    );
    Response::builder()
        .status(StatusCode::OK)
        .content_type("text/html; charset=utf-8")
        .header("Content-Security-Policy", csp)
        .header("Cache-Control", "no-store")
        .header("Referrer-Policy", "no-referrer")
        .body(document(&key, &origin))
}

fn document(key: &str, origin: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Card fields</title></head>
<body style="font-family: sans-serif; margin: 0">
<p><label>Card number<br><input id="number" inputmode="numeric" autocomplete="cc-number"></label></p>
<p><label>Expiry (MM/YY)<br><input id="expiry" placeholder="12/34" autocomplete="cc-exp"></label></p>
<p><label>CVC<br><input id="cvc" inputmode="numeric" autocomplete="cc-csc"></label></p>
<script>
const KEY = {key};
const PARENT = {origin};
function tell(message) {{ window.parent.postMessage(message, PARENT); }}
window.addEventListener("message", async (event) => {{
  if (event.origin !== PARENT || event.source !== window.parent) return;
  if (!event.data || event.data.type !== "paystream:tokenize") return;
  try {{
    const [month, year] = document.getElementById("expiry").value.split("/").map((s) => Number(s.trim()));
    const answer = await fetch("/vault/tokens", {{
      method: "POST",
      headers: {{"Authorization": "Bearer " + KEY, "Content-Type": "application/json"}},
      body: JSON.stringify({{card: {{
        number: document.getElementById("number").value.replace(/\s+/g, ""),
        expMonth: month, expYear: year < 100 ? 2000 + year : year,
        cvc: document.getElementById("cvc").value.trim()}}}}),
    }});
    const body = await answer.json();
    if (!answer.ok) {{ tell({{type: "paystream:error", message: body.error.message}}); return; }}
    tell({{type: "paystream:token", token: body.id}});
  }} catch (error) {{
    tell({{type: "paystream:error", message: "The card could not be sent to the vault."}});
  }}
}});
tell({{type: "paystream:ready"}});
</script>
</body></html>
"#,
        key = js_string(key),
        origin = js_string(origin),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cannot_close_the_script() {
        assert_eq!(js_string("</script>"), "\"\\u003c/script>\"");
        let html = document("pk_1", "https://shop.example");
        assert!(html.contains("const PARENT = \"https://shop.example\";"));
        assert!(html.contains("event.origin !== PARENT"));
    }
}
