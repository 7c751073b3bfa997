//! The issuer's 3-D Secure challenge, as the cardholder's browser sees it at the charge's
//! `redirectUrl` (`/sim/3ds/{charge id}`):
//! - `GET` is an HTML page (no scripts, no external assets) naming the amount and the
//!   merchant's reference, with two buttons, "Complete authentication" and "Fail
//!   authentication"; each is a plain form posting `result=succeeded` / `result=failed` back
//!   to the same URL, so it works in any browser and with plain HTTP.
//! - `POST` decides the charge: a success authorizes it (and captures it when the payment asked
//!   for capture), a failure declines it with `authentication_failed`. The outcome is announced
//!   by notification, under the notification faults, and the browser is sent (303) to
//!   paystream's callback with the signed result token
//!   (`paystream_domain::three_ds::ResultToken`). Posting again to a decided challenge changes
//!   nothing and answers the same 303.

use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::{Data, Form, Path};
use poem::{handler, Response};
use serde::Deserialize;

use paystream_domain::money::{Amount, Currency, Money};
use paystream_domain::three_ds::{
    ChallengeOutcome, ResultToken, AUTHENTICATION_FAILED, AUTHENTICATION_FAILED_MESSAGE,
};

use crate::cards::Decline;
use crate::ledger::{Charge, ChargeStatus};
use crate::Sim;

const AUTHENTICATION_FAILED_DECLINE: Decline = Decline {
    code: AUTHENTICATION_FAILED,
    decline_code: AUTHENTICATION_FAILED,
    message: AUTHENTICATION_FAILED_MESSAGE,
};

#[derive(Deserialize)]
pub(crate) struct ChallengeForm {
    result: String,
}

/// Escapes text for an HTML body or a double-quoted attribute.
fn escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
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

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let document = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title></head>\n<body style=\"font-family: sans-serif; max-width: 32em; margin: 3em auto\">\n\
         <h1>{title}</h1>\n{body}\n</body></html>\n",
        title = escape(title),
    );
    Response::builder()
        .status(status)
        .content_type("text/html; charset=utf-8")
        .header("cache-control", "no-store")
        .body(document)
}

fn not_found() -> Response {
    html(
        StatusCode::NOT_FOUND,
        "No such authentication",
        "<p>There is no 3-D Secure challenge here.</p>",
    )
}

fn amount_text(charge: &Charge) -> String {
    match Currency::parse(charge.currency) {
        Ok(currency) => Money::new(Amount::from_stored(charge.amount), currency).to_string(),
        Err(_) => format!("{} {}", charge.amount, charge.currency),
    }
}

#[handler]
pub(crate) fn page(Data(sim): Data<&Arc<Sim>>, Path(id): Path<String>) -> Response {
    let Some(charge) = sim.ledger().charge_mut(&id).map(|c| c.clone()) else {
        return not_found();
    };
    let action = format!("/sim/3ds/{}", charge.id);
    let state = match (&charge.challenge_result, charge.status) {
        (Some(_), _) => "<p><strong>This authentication has already been answered.</strong></p>",
        (None, ChargeStatus::RequiresAction) => "",
        (None, _) => "<p><strong>This payment is not waiting for authentication.</strong></p>",
    };
    let body = format!(
        "<p>Confirm the payment of <strong>{amount}</strong> to the merchant, reference \
         <code>{reference}</code>.</p>\n{state}\n\
         <form method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"result\" value=\"succeeded\">\
         <button type=\"submit\">Complete authentication</button></form>\n\
         <form method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"result\" value=\"failed\">\
         <button type=\"submit\">Fail authentication</button></form>",
        amount = escape(&amount_text(&charge)),
        reference = escape(&charge.reference),
        action = escape(&action),
    );
    html(StatusCode::OK, "3-D Secure authentication", &body)
}

#[handler]
pub(crate) fn complete(
    Data(sim): Data<&Arc<Sim>>,
    Path(id): Path<String>,
    Form(form): Form<ChallengeForm>,
) -> Response {
    let succeeded = match form.result.as_str() {
        "succeeded" => true,
        "failed" => false,
        _ => {
            return html(
                StatusCode::BAD_REQUEST,
                "Invalid answer",
                "<p>The form field <code>result</code> must be <code>succeeded</code> or \
                 <code>failed</code>.</p>",
            )
        }
    };
    let (token, decided) = {
        let mut ledger = sim.ledger();
        let Some(charge) = ledger.charge_mut(&id) else {
            return not_found();
        };
        if let Some(token) = &charge.challenge_result {
            // Already answered (a double click, a reload): the same answer, nothing moves.
            (token.clone(), None)
        } else if charge.status != ChargeStatus::RequiresAction {
            return html(
                StatusCode::CONFLICT,
                "Not waiting for authentication",
                "<p>This payment is not waiting for 3-D Secure authentication.</p>",
            );
        } else {
            let outcome = if !succeeded {
                charge.status = ChargeStatus::Declined;
                charge.decline = Some(AUTHENTICATION_FAILED_DECLINE);
                ChallengeOutcome::Failed
            } else if charge.capture {
                charge.status = ChargeStatus::Captured;
                charge.amount_captured = charge.amount;
                ChallengeOutcome::Captured
            } else {
                charge.status = ChargeStatus::Authorized;
                ChallengeOutcome::Authorized
            };
            charge.redirect_url = None;
            let token = ResultToken::new(
                &charge.reference,
                &charge.id,
                outcome,
                Amount::from_stored(charge.amount),
                chrono::Utc::now(),
            );
            charge.challenge_result = Some(token.clone());
            tracing::info!(charge = %charge.id, status = charge.status.as_str(), "3-D Secure challenge completed");
            (token, Some(charge.clone()))
        }
    };
    if let Some(charge) = &decided {
        sim.notify_charge(charge);
    }
    let return_url = sim
        .ledger()
        .charge_mut(&id)
        .and_then(|c| c.return_url.clone());
    let location = match (sim.callback_base(), return_url) {
        (Some(base), _) => format!(
            "{base}/api/payment-intents/{}/3ds/callback?result={}",
            token.reference,
            token.sign(sim.config.notify_secret.expose().as_bytes())
        ),
        (None, Some(url)) => url,
        (None, None) => {
            return html(
                StatusCode::OK,
                "Authentication answered",
                "<p>You may close this window.</p>",
            )
        }
    };
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header("location", location)
        .finish()
}
