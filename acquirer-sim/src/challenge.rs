//! Completing a 3-D Secure challenge, as the cardholder's browser does on the issuer's page:
//! `POST /sim/3ds/{charge id}` with the form field `result=succeeded` or `result=failed`.
//!
//! A success authorizes the charge (and captures it when the payment asked for capture), a
//! failure declines it with `authentication_failed`; either way the outcome is announced by
//! notification, under the notification faults, so a test can drop it and see what paystream
//! does with an outcome it never heard of. The browser is then sent (303) to the payment's
//! `returnUrl`, when it has one.

use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::{Data, Form, Path};
use poem::{handler, IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::cards::Decline;
use crate::ledger::ChargeStatus;
use crate::Sim;

const AUTHENTICATION_FAILED: Decline = Decline {
    code: "authentication_failed",
    decline_code: "authentication_failed",
    message: "The cardholder failed 3-D Secure authentication.",
};

#[derive(Deserialize)]
pub(crate) struct ChallengeForm {
    result: String,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(
            json!({"error": {"type": "invalid_request_error", "code": code, "message": message}})
                .to_string(),
        )
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
            return error(
                StatusCode::BAD_REQUEST,
                "parameter_invalid",
                "`result` must be `succeeded` or `failed`",
            )
        }
    };
    let charge = {
        let mut ledger = sim.ledger();
        let Some(charge) = ledger.charge_mut(&id) else {
            return error(StatusCode::NOT_FOUND, "resource_missing", "No such charge.");
        };
        if charge.status != ChargeStatus::RequiresAction {
            return error(
                StatusCode::CONFLICT,
                "charge_not_awaiting_authentication",
                "This charge is not waiting for 3-D Secure authentication.",
            );
        }
        if !succeeded {
            charge.status = ChargeStatus::Declined;
            charge.decline = Some(AUTHENTICATION_FAILED);
        } else if charge.capture {
            charge.status = ChargeStatus::Captured;
            charge.amount_captured = charge.amount;
        } else {
            charge.status = ChargeStatus::Authorized;
        }
        charge.redirect_url = None;
        tracing::info!(charge = %charge.id, status = charge.status.as_str(), "3-D Secure challenge completed");
        charge.clone()
    };
    sim.notify_charge(&charge);
    match &charge.return_url {
        Some(url) => Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header("location", url.as_str())
            .finish(),
        None => json!({"id": charge.id, "status": charge.status.as_str()})
            .to_string()
            .with_content_type("application/json")
            .into_response(),
    }
}
