//! Dispute evidence: `POST /api/disputes/{id}/evidence` (multipart form data: the contract's
//! text fields and files) and `GET /api/disputes/{id}/files/{fileId}`.
//!
//! The form is read as a stream: each file is read chunk by chunk and refused as soon as it
//! passes [`MAX_FILE_BYTES`], so an oversized upload is never held whole; its first bytes decide
//! its type (PDF, PNG, JPEG), whatever it claims. Files are sealed with the webhook sealing key
//! (AES-256-GCM, the file id as associated data) before they reach the database. All checks
//! pass before anything is written: one transaction then stores the files and the text and
//! records the change.

use poem::web::Multipart;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Binary;
use poem_openapi::{ApiResponse, OpenApi};
use serde_json::{Map, Value};
use tokio::io::AsyncReadExt;

use paystream_shared::domain::dispute::{
    sniff, FILE_PURPOSES, MAX_FILES, MAX_FILE_BYTES, MAX_TEXT_CHARS, TEXT_FIELDS,
};
use paystream_shared::domain::ids::IdKind;
use paystream_shared::store::disputes::{self as store, StoredFile};
use paystream_shared::webhooks::secret_box::SecretBox;

use crate::auth::MerchantKey;
use crate::error::ApiError;
use crate::extract::SerdeJson;
use crate::responses::{Errors, CONFLICT, NOT_FOUND, READ, WRITE};
use crate::routes::disputes::{check_editable, lock, not_found, DisputeResponse};
use crate::routes::ApiTags;
use crate::AppState;

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid("parameter_invalid", message).with_param(param)
}

fn unreadable(e: impl std::fmt::Display) -> ApiError {
    tracing::info!(error = %e, "unreadable evidence form");
    ApiError::invalid(
        "body_invalid",
        "The body is not a readable multipart/form-data form",
    )
}

/// A file read from the form, checked and ready to seal.
struct Upload {
    purpose: String,
    filename: String,
    content_type: &'static str,
    bytes: Vec<u8>,
}

/// Reads the whole form, refusing on the first field that breaks a rule.
async fn read_form(mut form: Multipart) -> Result<(Map<String, Value>, Vec<Upload>), ApiError> {
    let mut text = Map::new();
    let mut uploads = Vec::new();
    while let Some(field) = form.next_field().await.map_err(unreadable)? {
        let name = field.name().unwrap_or_default().to_owned();
        if TEXT_FIELDS.contains(&name.as_str()) {
            let value = read_limited(field, MAX_TEXT_CHARS * 4, &name).await?;
            let value = String::from_utf8(value)
                .map_err(|_| bad(&name, format!("`{name}` must be UTF-8 text")))?;
            if value.chars().count() > MAX_TEXT_CHARS || value.contains('\0') {
                return Err(bad(
                    &name,
                    format!("`{name}` must be at most {MAX_TEXT_CHARS} characters of text"),
                ));
            }
            text.insert(name, Value::String(value));
        } else if FILE_PURPOSES.contains(&name.as_str()) {
            let filename = field
                .file_name()
                .unwrap_or("upload")
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect::<String>();
            let bytes = read_limited(field, MAX_FILE_BYTES, &name).await?;
            let content_type = sniff(&bytes).ok_or_else(|| {
                bad(
                    &name,
                    format!("`{name}` must be a PDF, PNG or JPEG file (checked by its content)"),
                )
            })?;
            uploads.push(Upload {
                purpose: name,
                filename,
                content_type,
                bytes,
            });
            if uploads.len() > MAX_FILES {
                return Err(bad(
                    "files",
                    format!("A dispute holds at most {MAX_FILES} files"),
                ));
            }
        } else {
            return Err(bad(
                &name,
                format!(
                    "`{}` is not an evidence field",
                    name.chars().take(60).collect::<String>()
                ),
            ));
        }
    }
    Ok((text, uploads))
}

/// Reads one field, refusing it as soon as it passes `limit` bytes.
async fn read_limited(
    field: poem::web::Field,
    limit: usize,
    name: &str,
) -> Result<Vec<u8>, ApiError> {
    let mut reader = Box::pin(field.into_async_read());
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut chunk).await.map_err(unreadable)?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > limit {
            return Err(bad(
                name,
                format!("`{name}` is larger than the {limit} bytes allowed"),
            ));
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

fn sealer(state: &AppState) -> SecretBox {
    SecretBox::from_config(&state.config)
}

#[derive(ApiResponse)]
pub enum FileResponse {
    /// The file's content, as uploaded.
    #[oai(status = 200)]
    Ok(
        Binary<Vec<u8>>,
        /// `application/pdf`, `image/png` or `image/jpeg`, by the file's content.
        #[oai(header = "X-Content-Type")]
        String,
        #[oai(header = "Content-Disposition")] String,
    ),
}

pub struct DisputeEvidenceApi;

#[OpenApi(tag = "ApiTags::Disputes")]
impl DisputeEvidenceApi {
    /// Add or replace evidence: `multipart/form-data` with any of the text fields
    /// `productDescription`, `customerCommunication`, `customerEmailAddress`,
    /// `shippingTrackingNumber`, `refundPolicy`, `uncategorizedText`, and files under
    /// `receipt`, `shippingDocumentation`, `customerCommunicationFile`, `uncategorizedFile`
    /// (PDF, PNG or JPEG by content, at most 5 MB each, 8 in all). Only while the dispute is
    /// `needs_response` and before `evidenceDueBy` (409 `dispute_not_editable`).
    #[oai(path = "/disputes/:id/evidence", method = "post")]
    async fn evidence(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        id: Path<String>,
        /// Accepted as on every POST, but an upload is streamed, not fingerprinted: it is not
        /// replayed under the key (docs/api.md). Sending a text field again replaces it.
        #[oai(name = "Idempotency-Key")]
        _idempotency_key: Header<Option<String>>,
        // Optional, so a body that is not multipart is our 400, not poem's 415.
        form: Option<Multipart>,
    ) -> Result<DisputeResponse, Errors<{ WRITE | NOT_FOUND | CONFLICT }>> {
        // Existence and state first, so a refused dispute costs no upload.
        let current = store::get(&state.pool, &auth.0.merchant_id, &id.0)
            .await?
            .ok_or_else(|| not_found(&id.0))?;
        check_editable(&current)?;
        let form = form.ok_or_else(|| {
            ApiError::invalid("body_invalid", "The body must be multipart/form-data")
        })?;
        let (text, uploads) = read_form(form).await?;
        let mut tx = state.pool.begin().await.map_err(ApiError::from)?;
        let dispute = lock(&mut tx, &auth.0, &id.0).await?;
        check_editable(&dispute)?;
        let held = store::file_count(&mut *tx, &dispute.id).await?;
        if usize::try_from(held).unwrap_or(usize::MAX) + uploads.len() > MAX_FILES {
            return Err(bad(
                "files",
                format!("A dispute holds at most {MAX_FILES} files; it has {held}"),
            )
            .into());
        }
        let boxed = sealer(&state);
        let mut added = Vec::with_capacity(uploads.len());
        for u in uploads {
            let file_id = IdKind::File.generate();
            let file = StoredFile {
                sealed: boxed.seal(&u.bytes, file_id.as_bytes()),
                id: file_id.clone(),
                dispute_id: dispute.id.clone(),
                purpose: u.purpose,
                filename: u.filename,
                content_type: u.content_type.to_owned(),
                size: i64::try_from(u.bytes.len()).unwrap_or(i64::MAX),
            };
            store::insert_file(&mut tx, &dispute.merchant_id, &file).await?;
            added.push(file_id);
        }
        let next =
            store::update_evidence(&mut tx, &dispute, &text, &added, &auth.0.actor()).await?;
        let view = store::view(&mut tx, &next).await?;
        tx.commit().await.map_err(ApiError::from)?;
        Ok(DisputeResponse::Ok(SerdeJson(view)))
    }

    /// Read an evidence file back (decrypted). Each read is audit-logged.
    #[oai(path = "/disputes/:id/files/:file_id", method = "get")]
    async fn file(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        id: Path<String>,
        file_id: Path<String>,
    ) -> Result<FileResponse, Errors<{ READ | NOT_FOUND }>> {
        let missing = || ApiError::not_found("file", &file_id.0).with_param("fileId");
        let file = store::file(&state.pool, &auth.0.merchant_id, &id.0, &file_id.0)
            .await?
            .ok_or_else(missing)?;
        let bytes = sealer(&state)
            .open(&file.sealed, file.id.as_bytes())
            .map_err(|e| ApiError::internal(&e))?;
        // A read of payment data: on the access audit like every other (README "Access audit").
        auth.0
            .record_read(
                &state,
                "dispute_evidence",
                &file.dispute_id,
                serde_json::json!([file.id]),
            )
            .await?;
        let disposition = format!(
            "attachment; filename=\"{}\"",
            file.filename.replace(['"', '\\'], "_")
        );
        Ok(FileResponse::Ok(
            Binary(bytes),
            file.content_type,
            disposition,
        ))
    }
}
