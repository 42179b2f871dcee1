//! The OpenAPI 3.1 document of the API, served at `GET /openapi.json`, generated with `utoipa` from the
//! handlers' own `#[utoipa::path]` annotations and the request and view types' `ToSchema` derives, so
//! that it describes what the code does.
//!
//! Every `/v1` operation gets the bearer security requirement and the 401/403 problem responses from
//! [`V1Auth`]; errors are RFC 9457 problem details ([`Problem`]) referenced from `components/responses`.
//!
//! **Adding a route:** annotate its handler with `#[utoipa::path(method, path = "/v1/…", …)]` (the same
//! path as in `api::router`, with its `/v1`), list the handler in [`ApiDoc`]'s `paths(…)`, and add its line
//! to `auth::ROUTES`; `api::tests::the_document_lists_exactly_the_routes_of_the_router` fails until all agree.
//!
//! The record types of [`crate::model`] and the ids of [`crate::ids`] get their schemas here, by hand,
//! each from its serde form; the tests check every variant and field against serde.

use axum::Json;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, KnownFormat, ObjectBuilder, Ref, RefOr, ResponseBuilder, Schema,
    SchemaFormat, Type,
};
use utoipa::{IntoParams, Modify, OpenApi, PartialSchema, ToResponse, ToSchema};

use super::problem::{FieldError, Problem};
use super::{activity, api_keys, attempts, audit, endpoints, event_types, events, ops, resend, tenants};
use crate::ids::{AttemptId, AuditId, BatchId, EndpointId, EventId};
use crate::model::{
    BatchPolicy, DeliveryState, HttpMethod, PayloadFormat, RateLimit, RetryPolicy, Scope, Trigger,
};

/// The name of the security scheme every `/v1` operation requires.
pub const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hookd",
        description = "Webhook delivery daemon: durable ingest, fan-out, signed delivery with retries. \
                       Errors are RFC 9457 problem details (application/problem+json).",
    ),
    paths(
        tenants::create, tenants::list, tenants::get, tenants::update, tenants::delete,
        event_types::list, event_types::get, event_types::put, event_types::delete,
        events::ingest_one, events::list, events::ingest_batch, events::get,
        endpoints::create, endpoints::list, endpoints::get, endpoints::update, endpoints::delete,
        endpoints::secret, endpoints::rotate_secret, endpoints::test_send,
        attempts::list, attempts::get, resend::resend_attempt, resend::resend_event,
        resend::recover, resend::endpoint_stats, activity::stream,
        api_keys::create, api_keys::list, api_keys::get, api_keys::update, api_keys::revoke,
        api_keys::regenerate,
        audit::list,
        ops::healthz, ops::readyz, ops::openapi_json, ops::metrics,
    ),
    components(
        schemas(Problem, FieldError),
        responses(BadRequest, Unauthorized, Forbidden, NotFound, Conflict, RequestTimeout, Damaged, PayloadTooLarge, Unprocessable,
                  Unavailable),
    ),
    modifiers(&V1Auth),
    tags(
        (name = "tenants", description = "The platform's customers (operator only)."),
        (name = "event-types", description = "The event catalog."),
        (name = "events", description = "Ingest (the hot path) and the event log."),
        (name = "endpoints", description = "Where a tenant's events are delivered, and how."),
        (name = "attempts", description = "The delivery history: one entry per HTTP request made."),
        (name = "api-keys", description = "Scoped API keys."),
        (name = "audit", description = "Every authenticated write."),
        (name = "operations", description = "Health, readiness, metrics and this document; no token."),
    ),
)]
pub struct ApiDoc;

/// The document as served; built once per request (it is small, and rarely asked for).
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /openapi.json`.
pub async fn serve() -> Response {
    ([(header::CACHE_CONTROL, "public, max-age=300")], Json(document())).into_response()
}

/// Adds the bearer scheme, and to every `/v1` operation its requirement and the 401/403 answers that
/// [`super::auth::Authenticate`] gives before any handler runs.
pub struct V1Auth;

impl Modify for V1Auth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The operator's admin token (auth.admin_token) or an API key (hk_…)."))
                    .build(),
            ),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
                &mut item.trace,
            ];
            for op in operations.into_iter().flatten() {
                require_bearer(op);
            }
        }
    }
}

fn require_bearer(op: &mut Operation) {
    op.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
    for (status, name) in [("401", Unauthorized::NAME), ("403", Forbidden::NAME)] {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
    }
}

// ---- error responses ----

/// A problem+json response of one status, reusable from `#[utoipa::path(responses(…))]` as
/// `(status = 404, response = NotFound)`.
macro_rules! problem_response {
    ($(#[$doc:meta])* $name:ident, $description:literal) => {
        $(#[$doc])*
        pub struct $name;

        impl $name {
            pub const NAME: &'static str = stringify!($name);
        }

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
                (Self::NAME, problem($description, false).into())
            }
        }
    };
}

fn problem(description: &str, retry_after: bool) -> utoipa::openapi::Response {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name(Problem::name()))).build();
    let mut response =
        ResponseBuilder::new().description(description).content("application/problem+json", content);
    if retry_after {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)))
                .description(Some("Seconds to wait before trying again."))
                .build(),
        );
    }
    response.build()
}

problem_response!(BadRequest, "The body is not JSON, or a path or query parameter is malformed.");
problem_response!(Unauthorized, "The bearer token is missing, malformed, unknown, expired or revoked.");
problem_response!(
    Forbidden,
    "The credential lacks a scope, is bound to another tenant, or is used from an address it is not allowed from."
);
problem_response!(NotFound, "The tenant or object does not exist (or belongs to another tenant).");
problem_response!(Conflict, "The object already exists, or its state does not allow the change.");
problem_response!(PayloadTooLarge, "The body exceeds the route's size limit.");
problem_response!(
    RequestTimeout,
    "The body did not arrive within `server.body_read_timeout` of the request's headers; nothing was stored."
);
problem_response!(
    Damaged,
    "The record's stored bytes are damaged and cannot be read (`type` `urn:hookd:problem:damaged`); the \
     operator's log names the file, and `hookd repair` quarantines it."
);
problem_response!(Unprocessable, "Fields are invalid; `errors` names each one.");

/// 503 with `Retry-After`: ingest is paused (disk cap or free-space floor reached, or shutting down).
pub struct Unavailable;

impl Unavailable {
    pub const NAME: &'static str = "Unavailable";
}

impl<'r> ToResponse<'r> for Unavailable {
    fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
        let text = "Ingest is paused: the database reached storage.max_log_bytes, the disk has less than \
                    storage.min_free_bytes free, or hookd is shutting down. Retry after Retry-After seconds.";
        (Self::NAME, problem(text, true).into())
    }
}

// ---- path parameters and shapes the handlers build with `json!` or read loosely ----

/// `{tenant}` in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantPath {
    /// The tenant's id.
    pub tenant: String,
}

/// The body of `PATCH /v1/api-keys/{id}` (a JSON Merge Patch; `name` is the only field that changes).
#[derive(ToSchema)]
pub struct RenameKey {
    pub name: String,
}

/// `202` of `POST …/events`.
#[derive(ToSchema, serde::Serialize)]
pub struct Accepted {
    pub id: EventId,
    /// RFC 3339.
    pub received_at: String,
}

/// `202` of `POST …/events/batch`: one entry per event, in the order posted.
#[derive(ToSchema, serde::Serialize)]
pub struct BatchAccepted {
    pub data: Vec<Accepted>,
}

/// `201` of `POST …/endpoints`: the endpoint and, this once, its signing secret.
#[derive(ToSchema, serde::Serialize)]
pub struct EndpointCreated {
    #[schema(inline)]
    #[serde(flatten)]
    pub endpoint: super::views::EndpointView,
    /// `whsec_…`.
    pub secret: String,
}

/// `GET …/endpoints/{id}/secret`.
#[derive(ToSchema)]
pub struct EndpointSecret {
    /// `whsec_…`.
    pub key: String,
}

/// `POST …/endpoints/{id}/secret/rotate`.
#[derive(ToSchema)]
pub struct RotatedSecret {
    /// The new `whsec_…` secret.
    pub key: String,
    /// RFC 3339: until then the previous secret signs too.
    pub previous_signs_until: String,
}

/// `GET /healthz`.
#[derive(ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// `GET /readyz`.
#[derive(ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// The database is at or over `storage.max_log_bytes`.
    pub log_full: bool,
    /// The data dir's filesystem has less than `storage.min_free_bytes` free.
    pub disk_low: bool,
    /// Why not ready; absent when ready.
    pub reason: Option<String>,
}

/// An attempt's own outcome.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum AttemptStatus {
    Succeeded,
    Failed,
}

// ---- schemas of `crate::model` and `crate::ids` types ----

/// A string enum schema of `values`, the serde forms of a Rust enum's variants.
fn string_enum<T: serde::Serialize>(description: &str, variants: &[T]) -> RefOr<Schema> {
    let values: Vec<String> =
        variants.iter().filter_map(|v| serde_json::to_value(v).ok()?.as_str().map(str::to_owned)).collect();
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(values))
        .into()
}

/// Every variant, by an exhaustive match: a new variant does not compile until it is listed.
const fn http_methods() -> [HttpMethod; 3] {
    const fn index(m: HttpMethod) -> usize {
        match m {
            HttpMethod::Post => 0,
            HttpMethod::Put => 1,
            HttpMethod::Get => 2,
        }
    }
    let all = [HttpMethod::Post, HttpMethod::Put, HttpMethod::Get];
    assert!(index(all[0]) == 0 && index(all[1]) == 1 && index(all[2]) == 2);
    all
}

const fn payload_formats() -> [PayloadFormat; 2] {
    const fn index(f: PayloadFormat) -> usize {
        match f {
            PayloadFormat::Json => 0,
            PayloadFormat::Form => 1,
        }
    }
    let all = [PayloadFormat::Json, PayloadFormat::Form];
    assert!(index(all[0]) == 0 && index(all[1]) == 1);
    all
}

const fn delivery_states() -> [DeliveryState; 3] {
    const fn index(s: DeliveryState) -> usize {
        match s {
            DeliveryState::Pending => 0,
            DeliveryState::Succeeded => 1,
            DeliveryState::Failed => 2,
        }
    }
    let all = [DeliveryState::Pending, DeliveryState::Succeeded, DeliveryState::Failed];
    assert!(index(all[0]) == 0 && index(all[1]) == 1 && index(all[2]) == 2);
    all
}

const fn triggers() -> [Trigger; 4] {
    const fn index(t: Trigger) -> usize {
        match t {
            Trigger::Scheduled => 0,
            Trigger::Retry => 1,
            Trigger::Manual => 2,
            Trigger::Test => 3,
        }
    }
    let all = [Trigger::Scheduled, Trigger::Retry, Trigger::Manual, Trigger::Test];
    assert!(index(all[0]) == 0 && index(all[1]) == 1 && index(all[2]) == 2 && index(all[3]) == 3);
    all
}

const fn scopes() -> [Scope; 4] {
    const fn index(s: Scope) -> usize {
        match s {
            Scope::Read => 0,
            Scope::Write => 1,
            Scope::Delete => 2,
            Scope::Admin => 3,
        }
    }
    let all = [Scope::Read, Scope::Write, Scope::Delete, Scope::Admin];
    assert!(index(all[0]) == 0 && index(all[1]) == 1 && index(all[2]) == 2 && index(all[3]) == 3);
    all
}

macro_rules! enum_schema {
    ($ty:ty, $variants:expr, $description:literal) => {
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                string_enum($description, &$variants)
            }
        }
        impl ToSchema for $ty {}
    };
}

enum_schema!(HttpMethod, http_methods(), "The HTTP method used to call the endpoint.");
enum_schema!(
    PayloadFormat,
    payload_formats(),
    "How a delivery body is encoded: JSON, or a form field `payload=<json>`."
);
enum_schema!(DeliveryState, delivery_states(), "Where a delivery stands.");
enum_schema!(Trigger, triggers(), "Why an attempt was made.");
enum_schema!(Scope, scopes(), "What an API key may do.");

fn integer(format: KnownFormat, minimum: Option<f64>, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(format)))
        .minimum(minimum)
        .description(Some(description))
}

/// An object of integer fields, closed like the `deny_unknown_fields` struct it describes.
fn integer_object(description: &str, fields: &[(&str, KnownFormat, &str)]) -> RefOr<Schema> {
    let mut object = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::FreeForm(false)));
    for (name, format, text) in fields {
        object = object.property(*name, integer(format.clone(), Some(0.0), text)).required(*name);
    }
    object.into()
}

impl PartialSchema for RetryPolicy {
    fn schema() -> RefOr<Schema> {
        integer_object(
            "Exponential backoff: delay n = min(max_ms, initial_ms × 2^(n-1)) ± 20 %.",
            &[
                ("max_attempts", KnownFormat::Int32, "Attempts in all, the first one included."),
                ("initial_ms", KnownFormat::Int64, "Delay before the first retry."),
                ("max_ms", KnownFormat::Int64, "Longest delay between attempts."),
            ],
        )
    }
}
impl ToSchema for RetryPolicy {}

impl PartialSchema for RateLimit {
    fn schema() -> RefOr<Schema> {
        integer_object(
            "Requests per second allowed to one endpoint (token bucket).",
            &[
                ("per_second", KnownFormat::Int32, "Sustained requests per second."),
                ("burst", KnownFormat::Int32, "Requests allowed at once."),
            ],
        )
    }
}
impl ToSchema for RateLimit {}

impl PartialSchema for BatchPolicy {
    fn schema() -> RefOr<Schema> {
        integer_object(
            "Several events in one request: sent when full or max_wait_ms after its first event.",
            &[
                ("max_events", KnownFormat::Int32, "Events per request at most."),
                ("max_wait_ms", KnownFormat::Int64, "How long the first event waits for others."),
            ],
        )
    }
}
impl ToSchema for BatchPolicy {}

/// `^evt_[0-9a-hjkmnp-tv-z]{13}$`: the prefix and 13 characters of lowercase Crockford base32.
fn id_pattern(prefix: &str) -> String {
    format!("^{prefix}[0-9a-hjkmnp-tv-z]{{13}}$")
}

macro_rules! id_schema {
    ($ty:ty, $description:literal) => {
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(id_pattern(<$ty>::PREFIX)))
                    .description(Some($description))
                    .into()
            }
        }
        impl ToSchema for $ty {}
    };
}

id_schema!(EventId, "An event id (`evt_…`).");
id_schema!(EndpointId, "An endpoint id (`ep_…`).");
id_schema!(AttemptId, "An attempt id (`att_…`).");
id_schema!(BatchId, "A batch id (`bat_…`): the webhook-id of a batch delivery.");
id_schema!(AuditId, "An audit trail entry id (`aud_…`).");

#[cfg(test)]
mod tests;
