//! RFC 9457 problem details: every error the API returns goes through [`Problem`].

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field's path in the request (`url`, `events[3].type`, `retry.max_ms`), or the header name.
    pub field: String,
    pub message: String,
    /// For a field holding a small language (a filter, a template): the 1-based character position of
    /// the error in its text, also given in the message, so a UI can point at it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), message: message.into(), position: None }
    }

    /// An error at a character position of the field's text.
    pub fn at(field: impl Into<String>, position: usize, message: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), message: message.into(), position: Some(position) }
    }
}

/// An `application/problem+json` response (RFC 9457).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:hookd:problem:<slug>` (`validation`, `not-found`, `unavailable`, …): what kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Every invalid field (422), absent otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip)]
    pub retry_after_secs: Option<u64>,
    /// Close the connection after answering: set when the request body was not read to its end, so
    /// that a keep-alive client is told rather than finding a dead connection on its next request.
    #[serde(skip)]
    pub close_connection: bool,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("urn:hookd:problem:{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after_secs: None,
            close_connection: false,
        }
    }

    /// 400: the body is not JSON at all, or not of the expected shape at the top.
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request", detail)
    }

    /// 422: the request is well-formed but fields are invalid.
    pub fn invalid(errors: Vec<FieldError>) -> Problem {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many => format!("{} fields are invalid", many.len()),
        };
        Problem {
            errors,
            ..Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", "Invalid request", detail)
        }
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem::invalid(vec![FieldError::new(field, message)])
    }

    pub fn not_found(what: &str) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", format!("{what} not found"))
    }

    pub fn conflict(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    pub fn too_large(limit: u64) -> Problem {
        let p = Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Request body too large",
            format!("the body exceeds the limit of {limit} bytes"),
        );
        Problem { close_connection: true, ..p }
    }

    /// 408: the body did not arrive within `server.body_read_timeout`; the connection is closed, since
    /// what is left of the body may still come.
    pub fn body_timeout(e: &crate::server::BodyTimeout) -> Problem {
        let p =
            Problem::new(StatusCode::REQUEST_TIMEOUT, "request-timeout", "Request timeout", e.to_string());
        Problem { close_connection: true, ..p }
    }

    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", detail)
    }

    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Problem {
        Problem {
            retry_after_secs: Some(retry_after_secs),
            ..Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", detail)
        }
    }

    /// 503 for a write refused because the disk is full: nothing was stored; retry later.
    pub fn disk_full() -> Problem {
        Problem::unavailable(
            "the disk is full: nothing was stored; retry later",
            crate::capacity::FULL_RETRY_AFTER_SECS,
        )
    }

    /// 500 for a storage or internal failure; the cause is logged, not shown.
    pub fn internal(error: &dyn std::error::Error) -> Problem {
        tracing::error!(error = %error, "internal error");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the request could not be completed",
        )
    }
}

impl From<crate::store::HistoryError> for Problem {
    fn from(e: crate::store::HistoryError) -> Problem {
        match e {
            crate::store::HistoryError::Store(e) => e.into(),
            e @ crate::store::HistoryError::WindowTooLarge => Problem::invalid_field("sort", e.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for Problem {
    fn from(e: crate::store::StoreError) -> Problem {
        // A full disk is back-pressure: nothing of the write was kept (the store undoes what it began).
        if e.is_full() {
            tracing::warn!(error = %e, "a write was refused: the disk is full");
            return Problem::disk_full();
        }
        match e {
            // Known and permanent, not an internal failure: the stored bytes of this record are damaged
            // (the operator has the file and offset in the log; `hookd repair` quarantines them).
            crate::store::StoreError::Damaged(d) => {
                tracing::error!(damage = %d, "a request reached a damaged record");
                Problem::new(
                    StatusCode::GONE,
                    "damaged",
                    "Stored record damaged",
                    "this record's stored bytes are damaged and cannot be read; the operator has been told which",
                )
            }
            e => Problem::internal(&e),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after_secs;
        let close = self.close_connection;
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if close {
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        // RFC 9110: a 401 names the scheme that would be accepted.
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
