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

/// The checkout page. Its inputs have ids but no `name`, so even with scripts off the browser
/// has nothing to submit: the card goes to the vault from the script, or nowhere.
pub fn checkout(vault_url: &str, publishable_key: &str) -> Response {
    let amount = format!(
        "{}.{:02} {}",
        super::AMOUNT / 100,
        super::AMOUNT % 100,
        super::CURRENCY.to_uppercase()
    );
    let body = format!(
        r#"<p>Demo shop: one item, <strong>{amount}</strong>. Test card 4242 4242 4242 4242, or
4000 0027 6000 3184 for 3-D Secure; any future expiry, any CVC.</p>
<form id="checkout">
<p><label>Card number<br><input id="number" inputmode="numeric" autocomplete="cc-number" required></label></p>
<p><label>Expiry (MM/YY)<br><input id="expiry" placeholder="12/34" autocomplete="cc-exp" required></label></p>
<p><label>CVC<br><input id="cvc" inputmode="numeric" autocomplete="cc-csc" required></label></p>
<p><button id="pay" type="submit">Pay {amount}</button></p>
</form>
<p id="message" role="status"></p>
<script>
const VAULT = {vault};
const PUBLISHABLE_KEY = {key};
const form = document.getElementById("checkout");
const message = document.getElementById("message");
form.addEventListener("submit", async (event) => {{
  event.preventDefault();
  const pay = document.getElementById("pay");
  pay.disabled = true;
  try {{
    const [month, year] = document.getElementById("expiry").value.split("/").map((s) => Number(s.trim()));
    message.textContent = "Sending the card to the vault…";
    const tokenized = await fetch(VAULT + "/vault/tokens", {{
      method: "POST",
      headers: {{"Authorization": "Bearer " + PUBLISHABLE_KEY, "Content-Type": "application/json"}},
      body: JSON.stringify({{card: {{
        number: document.getElementById("number").value.replace(/\s+/g, ""),
        expMonth: month, expYear: year < 100 ? 2000 + year : year,
        cvc: document.getElementById("cvc").value.trim()}}}}),
    }});
    const token = await tokenized.json();
    if (!tokenized.ok) throw new Error(token.error.message);
    message.textContent = "Paying…";
    const paid = await fetch("/pay", {{
      method: "POST",
      headers: {{"Content-Type": "application/json"}},
      body: JSON.stringify({{token: token.id}}),
    }});
    const answer = await paid.json();
    if (!paid.ok) throw new Error(answer.error.message);
    window.location.assign(answer.redirect);
  }} catch (error) {{
    message.textContent = error.message;
    pay.disabled = false;
  }}
}});
</script>"#,
        vault = js_string(vault_url.trim_end_matches('/')),
        key = js_string(publishable_key),
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
