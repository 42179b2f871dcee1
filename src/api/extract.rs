//! Request extraction shared by the handlers: JSON bodies with precise errors, pagination, tenants.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::AppState;
use super::problem::{FieldError, Problem};
use crate::model::TenantRecord;
use std::sync::Arc;

/// A JSON body parsed into `T` (whatever the content-type says: curl's default is form-encoded). Syntax errors are 400; a body of the wrong shape is 422 naming the
/// field (`events[3].type`); a body over the route's limit is 413.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, _state: &AppState) -> Result<Self, Problem> {
        let bytes = read_body(req, ADMIN_BODY_LIMIT).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Bodies of the admin routes (endpoints, tenants, event types) are small.
pub const ADMIN_BODY_LIMIT: u64 = 1 << 20;

/// Reads a whole body, refusing it with 413 past `limit` bytes (without reading further).
pub async fn read_body(req: Request, limit: u64) -> Result<Bytes, Problem> {
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    if let Some(len) =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit
    {
        return Err(Problem::too_large(limit));
    }
    match axum::body::to_bytes(req.into_body(), limit_usize).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let source = std::error::Error::source(&e);
            // The body's own error is wrapped once per body layer (axum's body, the length limit).
            let mut chain = std::iter::successors(source, |e| e.source());
            if let Some(timeout) = chain.find_map(|s| s.downcast_ref::<crate::server::BodyTimeout>()) {
                return Err(Problem::body_timeout(timeout));
            }
            let too_large = source.is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_large {
                Err(Problem::too_large(limit))
            } else {
                Err(Problem::bad_request(format!("cannot read the body: {e}")))
            }
        }
    }
}

/// Parses a JSON object into `T`, naming the offending field on error. The body must be one JSON
/// object and nothing after it: serde would otherwise read an array as the struct's fields in order, and
/// ignore a second value after the first (a second event would be silently lost).
pub fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Problem> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        // Valid JSON of the wrong shape is a 422; anything else a 400, like any syntax error.
        Some(_) if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() => {
            return Err(Problem::invalid_field("body", "must be a JSON object"));
        }
        Some(_) => return Err(Problem::bad_request("the body is not a JSON object")),
        None => return Err(Problem::bad_request("the body is empty; a JSON object is expected")),
    }
    // The fast path: a valid body parses once, without tracking where the parser is. Only a body that
    // fails is parsed again, with the path tracked, to name the field in the error.
    if let Ok(value) = serde_json::from_slice::<T>(bytes) {
        return Ok(value);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut *de);
    let value = result.map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        data_or_syntax_problem(&path, &inner)
    })?;
    de.end().map_err(|e| Problem::bad_request(format!("the body holds more than one JSON value: {e}")))?;
    Ok(value)
}

fn data_or_syntax_problem(path: &str, inner: &serde_json::Error) -> Problem {
    use serde_json::error::Category;
    match inner.classify() {
        Category::Data => {
            let message = strip_position(&inner.to_string());
            // serde names a missing or unknown field only in its message; put it in `field` too.
            let named = ["missing field `", "unknown field `"]
                .iter()
                .find_map(|p| message.strip_prefix(p).and_then(|rest| rest.split('`').next()));
            let field = match (path, named) {
                (".", Some(name)) => name.to_owned(),
                (".", None) => "body".to_owned(),
                (p, Some(name)) if message.starts_with("missing") => format!("{p}.{name}"),
                (p, _) => p.to_owned(),
            };
            Problem::invalid(vec![FieldError::new(field, message)])
        }
        Category::Syntax | Category::Eof | Category::Io => {
            Problem::bad_request(format!("the body is not valid JSON: {inner}"))
        }
    }
}

/// serde's data errors end in "at line 1 column 42", which means nothing once the field is named.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// `Query<T>` whose rejection is a problem+json 400 (a repeated or malformed parameter).
pub struct Q<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for Q<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state).await.map(|q| Q(q.0)).map_err(|e| {
            let text = e.body_text();
            // A misspelt or unsupported parameter is named, like a body's unknown field.
            match text.split("unknown field `").nth(1).and_then(|rest| rest.split('`').next()) {
                Some(name) => Problem::invalid_field(name, "is not a parameter of this route"),
                None => Problem::bad_request(format!("invalid query string: {text}")),
            }
        })
    }
}

/// `Path<T>` whose rejection is a problem+json 400 (e.g. a segment that is not valid UTF-8).
pub struct P<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for P<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| P(p.0))
            .map_err(|e| Problem::bad_request(format!("invalid path: {}", e.body_text())))
    }
}

/// `?limit=&cursor=` of list routes. Unknown parameters are refused (`422` naming them): a misspelt
/// filter must not quietly list everything. A route with filters declares `limit` and `cursor` in its
/// own query struct (serde cannot refuse unknown fields across two) and builds a `Page` from them.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// 1 to 250; 50 when absent.
    pub limit: Option<String>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 250;

impl Page {
    pub fn limit(&self) -> Result<usize, Problem> {
        match &self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => {
                    Err(Problem::invalid_field("limit", format!("must be an integer from 1 to {MAX_LIMIT}")))
                }
            },
        }
    }
}

/// The tenant named in the path, which must exist.
pub struct Tenant(pub Arc<TenantRecord>);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        #[derive(Deserialize)]
        struct P {
            tenant: String,
        }
        let Path(P { tenant }) = Path::<P>::from_request_parts(parts, state)
            .await
            .map_err(|e| Problem::bad_request(e.body_text()))?;
        state
            .registry
            .snapshot()
            .tenant(&tenant)
            .cloned()
            .map(Tenant)
            .ok_or_else(|| Problem::not_found("tenant"))
    }
}

/// Parses an RFC 3339 query parameter.
pub fn time_param(name: &str, value: Option<&str>) -> Result<Option<u64>, Problem> {
    value
        .map(|v| {
            crate::time::parse_rfc3339(v).ok_or_else(|| {
                Problem::invalid_field(name, "must be an RFC 3339 time, e.g. 2026-11-22T18:13:22Z")
            })
        })
        .transpose()
}
