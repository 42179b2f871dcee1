//! `/v1/tenants`: the platform's customers.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use super::AppState;
use super::extract::{JsonBody, P, Page, Q, Tenant};
use super::openapi::{
    BadRequest, Conflict, NotFound, PayloadTooLarge, RequestTimeout, TenantPath, Unprocessable,
};
use super::problem::{FieldError, Problem};
use super::views::{ListView, TenantView};
use crate::model::TenantRecord;
use crate::store::CatalogError;

pub const MAX_NAME_LEN: usize = 256;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1-64 of `[A-Za-z0-9_.-]`, starting with a letter or digit.
    pub id: String,
    /// Defaults to the id.
    #[serde(default)]
    pub name: Option<String>,
    /// Overrides `delivery.disable_after` for this tenant (`"2d"`).
    #[serde(default)]
    pub disable_after: Option<String>,
}

/// A partial update: absent fields keep their value; `"disable_after": null` returns the tenant to the
/// daemon's setting.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub disable_after: Option<Option<String>>,
}

/// Tells a field given as `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Shortest and longest `disable_after` a tenant may set.
const DISABLE_AFTER_RANGE: (std::time::Duration, std::time::Duration) =
    (std::time::Duration::from_secs(1), std::time::Duration::from_secs(365 * 86_400));

fn parse_disable_after(text: &str, errors: &mut Vec<FieldError>) -> Option<u64> {
    match text.parse::<crate::config::HumanDuration>() {
        Ok(d) if (DISABLE_AFTER_RANGE.0..=DISABLE_AFTER_RANGE.1).contains(&d.0) => {
            Some(d.0.as_millis() as u64)
        }
        Ok(_) => {
            errors.push(FieldError::new("disable_after", "must be between 1s and 365d"));
            None
        }
        Err(_) => {
            errors.push(FieldError::new("disable_after", "must be a duration such as \"5d\" or \"12h\""));
            None
        }
    }
}

/// Tenant ids are the platform's own: 1-64 of `[A-Za-z0-9_.-]`, starting with a letter or digit.
pub fn valid_tenant_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn check_name(name: &str, errors: &mut Vec<FieldError>) {
    if name.chars().count() > MAX_NAME_LEN {
        errors.push(FieldError::new("name", format!("at most {MAX_NAME_LEN} characters")));
    }
}

#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = CreateTenant, responses(
    (status = 201, description = "Created.", body = TenantView),
    (status = 400, response = BadRequest), (status = 409, response = Conflict),
    (status = 408, response = RequestTimeout), (status = 413, response = PayloadTooLarge), (status = 422, response = Unprocessable),
))]
pub async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateTenant>,
) -> Result<(StatusCode, Json<TenantView>), Problem> {
    let mut errors = Vec::new();
    if !valid_tenant_id(&body.id) {
        errors.push(FieldError::new(
            "id",
            "must be 1-64 characters of [A-Za-z0-9_.-], starting with a letter or digit",
        ));
    }
    let name = body.name.unwrap_or_else(|| body.id.clone());
    check_name(&name, &mut errors);
    let disable_after_ms = body.disable_after.as_deref().and_then(|t| parse_disable_after(t, &mut errors));
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let now = crate::time::now_ms();
    let record = state.registry.mutate(|reg, store| -> Result<TenantRecord, CatalogError> {
        if reg.tenant(&body.id).is_some() {
            return Err(CatalogError::Conflict);
        }
        let rec = TenantRecord {
            serial: store.generate_serial()?,
            id: body.id.clone(),
            name,
            created_at: now,
            updated_at: now,
            disable_after_ms,
        };
        store.create_tenant(&rec)?;
        reg.put_tenant(rec.clone());
        Ok(rec)
    });
    match record {
        Ok(rec) => Ok((StatusCode::CREATED, Json(TenantView::from(&rec)))),
        Err(CatalogError::Conflict) => Err(Problem::conflict(format!("tenant {} already exists", body.id))),
        Err(CatalogError::Store(e)) => Err(e.into()),
    }
}

#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", params(Page), responses(
    (status = 200, description = "Ordered by id.", body = ListView<TenantView>),
    (status = 400, response = BadRequest), (status = 422, response = Unprocessable),
))]
pub async fn list(
    State(state): State<AppState>,
    Q(page): Q<Page>,
) -> Result<Json<ListView<TenantView>>, Problem> {
    let limit = page.limit()?;
    let snapshot = state.registry.snapshot();
    // Ordered by id; the cursor is the last id of the previous page.
    let mut data: Vec<TenantView> = snapshot
        .tenants()
        .filter(|t| page.cursor.as_deref().is_none_or(|c| t.id.as_str() > c))
        .take(limit + 1)
        .map(|t| TenantView::from(t.as_ref()))
        .collect();
    let next_cursor = if data.len() > limit {
        data.truncate(limit);
        data.last().map(|t| t.id.clone())
    } else {
        None
    };
    Ok(Json(ListView { data, next_cursor }))
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}", tag = "tenants", params(TenantPath), responses(
    (status = 200, description = "The tenant.", body = TenantView), (status = 404, response = NotFound),
))]
pub async fn get(Tenant(t): Tenant) -> Json<TenantView> {
    Json(TenantView::from(t.as_ref()))
}

#[utoipa::path(patch, path = "/v1/tenants/{tenant}", tag = "tenants", params(TenantPath),
    request_body = UpdateTenant, responses(
    (status = 200, description = "Updated.", body = TenantView),
    (status = 400, response = BadRequest), (status = 404, response = NotFound),
    (status = 408, response = RequestTimeout), (status = 413, response = PayloadTooLarge), (status = 422, response = Unprocessable),
))]
pub async fn update(
    State(state): State<AppState>,
    Tenant(t): Tenant,
    JsonBody(body): JsonBody<UpdateTenant>,
) -> Result<Json<TenantView>, Problem> {
    let mut errors = Vec::new();
    if let Some(name) = &body.name {
        check_name(name, &mut errors);
    }
    let disable_after = body.disable_after.map(|d| d.and_then(|t| parse_disable_after(&t, &mut errors)));
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let rec = state.registry.mutate(|reg, store| -> Result<Option<TenantRecord>, Problem> {
        let Some(current) = reg.tenant(&t.id) else { return Ok(None) };
        let mut rec = TenantRecord::clone(current);
        if let Some(name) = body.name {
            rec.name = name;
        }
        if let Some(d) = disable_after {
            rec.disable_after_ms = d;
        }
        rec.updated_at = crate::time::now_ms();
        store.put_tenant(&rec)?;
        reg.put_tenant(rec.clone());
        Ok(Some(rec))
    })?;
    rec.map(|r| Json(TenantView::from(&r))).ok_or_else(|| Problem::not_found("tenant"))
}

/// Deletes the tenant and its endpoints. Its events and history become unreachable at once (a tenant
/// created again under the same id starts empty) and are purged from disk by retention.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}", tag = "tenants", params(TenantPath), responses(
    (status = 204, description = "Deleted."), (status = 404, response = NotFound),
))]
pub async fn delete(State(state): State<AppState>, P(id): P<String>) -> Result<StatusCode, Problem> {
    let deleted = state.registry.mutate(|reg, store| -> Result<bool, Problem> {
        let Some(t) = reg.tenant(&id).cloned() else { return Ok(false) };
        let endpoints: Vec<u64> = reg.tenant_endpoints(t.serial).map(|e| e.record.id).collect();
        store.delete_tenant(&id, &endpoints)?;
        reg.remove_tenant(&id);
        Ok(true)
    })?;
    if deleted { Ok(StatusCode::NO_CONTENT) } else { Err(Problem::not_found("tenant")) }
}
