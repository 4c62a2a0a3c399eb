//! `/v1/files`: upload (streamed, size-limited, validated), list, retrieve,
//! content, delete.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::multipart::Field;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use tokio::io::AsyncReadExt;

use super::page_request;
use crate::api::{
    FileDeleted, FileObject, FileStatus, FileTag, FileUpload, ListQuery, ListResponse,
};
use crate::auth::Caller;
use crate::blobs::{Blob, Upload};
use crate::engines::{FileCheck, FileValidator};
use crate::error::ApiError;
use crate::extract::{ApiMultipart, ApiPath, ApiQuery};
use crate::ids;
use crate::state::AppState;
use crate::store::{unix_now, FileRecord};

/// Purposes a client may upload with. `fine-tune-results` is made by the
/// server only.
const UPLOAD_PURPOSES: &[&str] = &[
    "fine-tune",
    "assistants",
    "batch",
    "user_data",
    "evals",
    "vision",
];

/// At most this many problems are written into `status_details`, followed
/// by a count of the rest: a file with a million bad lines must not make
/// every file listing a megabyte long.
const MAX_LISTED_PROBLEMS: usize = 1000;

/// Files list: OpenAI's default and maximum page size.
const FILES_PAGE_MAX: u32 = 10_000;

#[utoipa::path(
    post,
    path = "/v1/files",
    operation_id = "createFile",
    tag = "files",
    summary = "Upload a file (multipart: file, purpose); fine-tune files are validated at upload",
    request_body(content = FileUpload, content_type = "multipart/form-data"),
    responses((status = 200, description = "The stored file; a fine-tune file is `processed` or `error` already", body = FileObject))
)]
pub(super) async fn upload(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiMultipart(mut mp): ApiMultipart,
) -> Result<Json<FileObject>, ApiError> {
    let limit = st.config.max_upload_bytes;
    refuse_oversized_request(&headers, limit)?;
    let mut purpose: Option<String> = None;
    let mut file: Option<(Upload, String)> = None;
    while let Some(mut field) = mp
        .next_field()
        .await
        .map_err(|e| multipart_error(e, limit))?
    {
        match field.name() {
            Some("purpose") => purpose = Some(small_text(field, "purpose", limit).await?),
            Some("file") => {
                if file.is_some() {
                    return Err(ApiError::invalid("file", "Send exactly one `file` field."));
                }
                let name = field.file_name().unwrap_or("upload").to_string();
                let mut up = st.blobs.begin(limit).await?;
                while let Some(chunk) =
                    field.chunk().await.map_err(|e| multipart_error(e, limit))?
                {
                    up.write(&chunk).await?;
                }
                file = Some((up, name));
            }
            _ => {} // Other fields (e.g. `expires_after`) are accepted and ignored.
        }
    }
    let purpose = check_purpose(purpose)?;
    let (up, filename) =
        file.ok_or_else(|| ApiError::invalid("file", "Missing the `file` field."))?;
    let id = ids::file_id();
    let blob = up.commit(&st.blobs, &id).await?;
    let (status, status_details) = match (&st.engines.validator, purpose.as_str()) {
        (Some(v), "fine-tune") => check_file(v.clone(), &blob).await?,
        (None, "fine-tune") => (FileStatus::Uploaded, None),
        _ => (FileStatus::Processed, None),
    };
    let object = FileObject {
        id: id.clone(),
        object: FileTag,
        bytes: blob.bytes,
        created_at: unix_now(),
        filename,
        purpose,
        status,
        status_details,
        expires_at: None,
    };
    let record = FileRecord {
        object: object.clone(),
        project: caller.project,
        sha256: blob.sha256,
    };
    if let Err(e) = st.store.run(move |s| s.insert_file(&record)).await {
        let _ = st.blobs.delete(&id).await;
        return Err(e.into());
    }
    Ok(Json(object))
}

/// Answers 413 before reading a body whose declared length is already over.
fn refuse_oversized_request(headers: &HeaderMap, limit: u64) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit.saturating_add(super::MULTIPART_SLACK) => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        _ => Ok(()),
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: u64) -> ApiError {
    match ApiError::from(e) {
        ApiError::PayloadTooLarge { .. } => ApiError::PayloadTooLarge { limit },
        other => other,
    }
}

/// Reads a short text field, refusing one over 1 KiB.
async fn small_text(
    mut field: Field<'_>,
    name: &'static str,
    limit: u64,
) -> Result<String, ApiError> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
        buf.extend_from_slice(&chunk);
        if buf.len() > 1024 {
            return Err(ApiError::invalid(
                name,
                format!("The `{name}` field is too long."),
            ));
        }
    }
    String::from_utf8(buf)
        .map_err(|_| ApiError::invalid(name, format!("The `{name}` field is not UTF-8.")))
}

fn check_purpose(purpose: Option<String>) -> Result<String, ApiError> {
    let p = purpose.ok_or_else(|| ApiError::invalid("purpose", "Missing the `purpose` field."))?;
    let p = p.trim().to_string();
    if !UPLOAD_PURPOSES.contains(&p.as_str()) {
        return Err(ApiError::invalid(
            "purpose",
            format!(
                "Invalid purpose '{p}'. Use one of: {}.",
                UPLOAD_PURPOSES.join(", ")
            ),
        ));
    }
    Ok(p)
}

/// Runs the validator on the committed blob (blocking pool) and turns its
/// verdict into the file's status.
async fn check_file(
    v: Arc<dyn FileValidator>,
    blob: &Blob,
) -> Result<(FileStatus, Option<String>), ApiError> {
    let path = blob.path.clone();
    let check = tokio::task::spawn_blocking(move || v.check(&path))
        .await
        .map_err(|e| ApiError::internal(format!("validator task failed: {e}")))?
        .map_err(|e| ApiError::internal(format!("reading the uploaded file: {e}")))?;
    Ok(status_of(&check))
}

/// `processed` when there is no error; else `error` with every problem
/// (up to [`MAX_LISTED_PROBLEMS`]) on its own line.
pub(crate) fn status_of(check: &FileCheck) -> (FileStatus, Option<String>) {
    if check.errors.is_empty() {
        return (FileStatus::Processed, None);
    }
    let n = check.errors.len();
    let mut lines: Vec<String> = check
        .errors
        .iter()
        .take(MAX_LISTED_PROBLEMS)
        .map(|p| p.to_string())
        .collect();
    if n > MAX_LISTED_PROBLEMS {
        lines.push(format!("... and {} more errors", n - MAX_LISTED_PROBLEMS));
    }
    let head = format!(
        "{n} error{} found in the training file:",
        if n == 1 { "" } else { "s" }
    );
    (
        FileStatus::Error,
        Some(format!("{head}\n{}", lines.join("\n"))),
    )
}

#[utoipa::path(
    get,
    path = "/v1/files",
    operation_id = "listFiles",
    tag = "files",
    summary = "List files, newest first",
    params(ListQuery),
    responses((status = 200, description = "A page of files", body = ListResponse<FileObject>))
)]
pub(super) async fn list(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ListResponse<FileObject>>, ApiError> {
    let page = page_request(&q, FILES_PAGE_MAX, FILES_PAGE_MAX)?;
    let purpose = q.purpose.clone();
    let p = st
        .store
        .run(move |s| s.list_files(&caller.scope(), purpose.as_deref(), &page))
        .await?;
    Ok(Json(ListResponse::page(p.data, p.has_more)))
}

#[utoipa::path(
    get,
    path = "/v1/files/{id}",
    operation_id = "retrieveFile",
    tag = "files",
    summary = "Retrieve a file object",
    params(("id" = String, Path, description = "A file id")),
    responses((status = 200, description = "The file", body = FileObject))
)]
pub(super) async fn retrieve(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<FileObject>, ApiError> {
    let rec = st
        .store
        .run(move |s| s.get_file(&caller.scope(), &id))
        .await?;
    Ok(Json(rec.object))
}

/// Forgets the file, then removes its blob (after the commit, so a crash in
/// between leaves an orphan blob, never a record without content).
#[utoipa::path(
    delete,
    path = "/v1/files/{id}",
    operation_id = "deleteFile",
    tag = "files",
    summary = "Delete a file",
    params(("id" = String, Path, description = "A file id")),
    responses((status = 200, description = "Deleted", body = FileDeleted))
)]
pub(super) async fn delete(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<FileDeleted>, ApiError> {
    let del = id.clone();
    st.store
        .run(move |s| s.delete_file(&caller.scope(), &del))
        .await?;
    st.blobs.delete(&id).await?;
    Ok(Json(FileDeleted {
        id,
        object: FileTag,
        deleted: true,
    }))
}

/// Streams the raw bytes in 64 KiB chunks.
#[utoipa::path(
    get,
    path = "/v1/files/{id}/content",
    operation_id = "downloadFile",
    tag = "files",
    summary = "Download a file's raw bytes",
    params(("id" = String, Path, description = "A file id")),
    responses((status = 200, description = "The bytes as uploaded", body = [u8], content_type = "application/octet-stream"))
)]
pub(super) async fn content(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let rec = {
        let id = id.clone();
        st.store
            .run(move |s| s.get_file(&caller.scope(), &id))
            .await?
    };
    let file = st.blobs.open_read(&id).await?;
    let stream = futures_util::stream::unfold(Some(file), |state| async move {
        let mut f = state?;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&rec.object.bytes.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::FileProblem;

    fn problem(line: usize) -> FileProblem {
        FileProblem {
            line: Some(line),
            message: None,
            code: "missing_content".into(),
            text: "no content".into(),
        }
    }

    #[test]
    fn status_lists_every_problem_with_its_line() {
        let check = FileCheck {
            errors: vec![problem(2), problem(5)],
            warnings: vec![],
        };
        let (st, details) = status_of(&check);
        assert_eq!(st, FileStatus::Error);
        let d = details.unwrap();
        assert!(d.starts_with("2 errors"), "{d}");
        assert!(
            d.contains("line 2: missing_content") && d.contains("line 5: missing_content"),
            "{d}"
        );
        assert_eq!(
            status_of(&FileCheck::default()),
            (FileStatus::Processed, None)
        );
    }

    #[test]
    fn status_details_are_capped_with_a_count() {
        let check = FileCheck {
            errors: (1..=1005).map(problem).collect(),
            warnings: vec![],
        };
        let d = status_of(&check).1.unwrap();
        assert!(
            d.ends_with("... and 5 more errors"),
            "{}",
            &d[d.len() - 40..]
        );
    }
}
