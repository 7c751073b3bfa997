//! The demo's three HTML pages, kept plain: no framework, no styles beyond a readable width,
//! and the one script the checkout needs.

use poem::http::StatusCode;
use poem::Response;
use serde_json::Value;

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A string as a JavaScript literal inside `<script>`: JSON, with `<` escaped so no value can
/// close the script element.
fn js_string(text: &str) -> String {
    Value::String(text.to_owned())
        .to_string()
        .replace('<', "\\u003c")
}

fn html(status: StatusCode, title: &str, head: &str, body: &str) -> Response {
    let document = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{head}\
         <title>{title}</title></head>\n\
         <body style=\"font-family: sans-serif; max-width: 32em; margin: 3em auto\">\n\
         <h1>{title}</h1>\n{body}\n</body></html>\n"
    );
    Response::builder()
        .status(status)
        .content_type("text/html; charset=utf-8")
        .body(document)
}

/// What the checkout page is made of: nothing secret but the one intent's client secret.
pub struct Checkout<'a> {
    pub api_url: &'a str,
    pub vault_url: &'a str,
    pub publishable_key: &'a str,
    pub intent_id: &'a str,
    pub client_secret: &'a str,
    pub return_url: &'a str,
}

/// The checkout page. It has no card input of its own: the card fields are the vault's page in
/// an iframe, which answers a `paystream:tokenize` message with a token. The script then
/// confirms the intent from the browser and follows where the intent says to go.
pub fn checkout(c: &Checkout<'_>) -> Response {
    let amount = format!(
        "{}.{:02} {}",
        super::AMOUNT / 100,
        super::AMOUNT % 100,
        super::CURRENCY.to_uppercase()
    );
    let body = format!(
        r#"<p>Demo shop: one item, <strong>{amount}</strong>. Test card 4242 4242 4242 4242, or
4000 0027 6000 3184 for 3-D Secure, 4000 0000 0000 0002 to be declined; any future expiry, any CVC.</p>
<form id="checkout">
<iframe id="card" title="Card details" style="border: 1px solid #ccc; width: 100%; height: 14em"></iframe>
<p><button id="pay" type="submit" disabled>Pay {amount}</button></p>
</form>
<p id="message" role="status"></p>
<script>
const API = {api};
const VAULT = {vault};
const PUBLISHABLE_KEY = {key};
const INTENT = {intent};
const CLIENT_SECRET = {secret};
const RETURN_URL = {return_url};
const VAULT_ORIGIN = new URL(VAULT).origin;
const frame = document.getElementById("card");
const pay = document.getElementById("pay");
const message = document.getElementById("message");
frame.src = VAULT + "/vault/elements?key=" + encodeURIComponent(PUBLISHABLE_KEY) +
  "&origin=" + encodeURIComponent(window.location.origin);
const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
async function api(path, init) {{
  const answer = await fetch(API + path, {{...init, headers: {{...(init.headers || {{}}),
    "Authorization": "Bearer " + PUBLISHABLE_KEY}}}});
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.error.message);
  return body;
}}
async function confirmWith(token) {{
  message.textContent = "Paying…";
  let intent = await api("/api/payment-intents/" + INTENT + "/confirm", {{
    method: "POST",
    headers: {{"Content-Type": "application/json", "Idempotency-Key": "confirm-" + token}},
    body: JSON.stringify({{clientSecret: CLIENT_SECRET, paymentMethod: {{type: "card", token}},
      returnUrl: RETURN_URL}}),
  }});
  while (intent.status === "processing") {{
    await sleep(250);
    intent = await api("/api/payment-intents/" + INTENT + "?clientSecret=" +
      encodeURIComponent(CLIENT_SECRET), {{method: "GET"}});
  }}
  if (intent.status === "requires_action" && intent.nextAction) {{
    window.location.assign(intent.nextAction.redirectToUrl.url);
    return;
  }}
  window.location.assign(RETURN_URL + "?payment_intent=" + encodeURIComponent(INTENT));
}}
window.addEventListener("message", async (event) => {{
  if (event.origin !== VAULT_ORIGIN || event.source !== frame.contentWindow) return;
  const m = event.data || {{}};
  if (m.type === "paystream:ready") {{ pay.disabled = false; return; }}
  if (m.type === "paystream:error") {{ message.textContent = m.message; pay.disabled = false; return; }}
  if (m.type !== "paystream:token") return;
  try {{ await confirmWith(m.token); }}
  catch (error) {{ message.textContent = error.message; pay.disabled = false; }}
}});
document.getElementById("checkout").addEventListener("submit", (event) => {{
  event.preventDefault();
  pay.disabled = true;
  message.textContent = "Sending the card to the vault…";
  frame.contentWindow.postMessage({{type: "paystream:tokenize"}}, VAULT_ORIGIN);
}});
</script>"#,
        api = js_string(c.api_url.trim_end_matches('/')),
        vault = js_string(c.vault_url.trim_end_matches('/')),
        key = js_string(c.publishable_key),
        intent = js_string(c.intent_id),
        secret = js_string(c.client_secret),
        return_url = js_string(c.return_url),
    );
    html(StatusCode::OK, "Checkout", "", &body)
}

/// The return URL's page: the intent's status and, for a failure, its error. While the intent
/// is still moving it refreshes itself every second.
pub fn outcome(id: &str, intent: &Value, moving: bool) -> Response {
    let status = intent["status"].as_str().unwrap_or("unknown");
    let mut body = format!(
        "<p>Payment <code id=\"intent\">{}</code>: <strong id=\"status\">{}</strong></p>",
        escape(id),
        escape(status)
    );
    if let Some(code) = intent["lastPaymentError"]["code"].as_str() {
        let message = intent["lastPaymentError"]["message"].as_str().unwrap_or("");
        body.push_str(&format!(
            "\n<p id=\"error\"><code>{}</code> {}</p>",
            escape(code),
            escape(message)
        ));
    }
    body.push_str("\n<p><a href=\"/\">Back to the shop</a></p>");
    let head = if moving {
        "<meta http-equiv=\"refresh\" content=\"1\">"
    } else {
        ""
    };
    html(StatusCode::OK, "Payment", head, &body)
}

pub fn problem(status: StatusCode, message: &str) -> Response {
    html(
        status,
        "Payment",
        "",
        &format!("<p>{}</p>", escape(message)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cannot_break_out_of_the_markup() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        assert_eq!(js_string("</script>\""), "\"\\u003c/script>\\\"\"");
    }
}
