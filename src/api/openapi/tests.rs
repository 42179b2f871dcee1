//! The served document: valid OpenAPI 3.1, every `$ref` resolved, and its schemas in step with what the
//! code serializes. That it lists exactly the router's routes is checked beside the router
//! (`api::tests::the_document_lists_exactly_the_routes_of_the_router`).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::*;
use crate::api::views::{EndpointView, EventView, TenantView};
use crate::model::{EndpointRecord, EventRecord, TenantRecord};

fn doc() -> Value {
    serde_json::to_value(document()).expect("the document serializes")
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let s = &doc["components"]["schemas"][name];
    assert!(s.is_object(), "no schema {name}");
    s
}

/// Every `$ref` in `value`, with where it was found.
fn refs(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    out.push((at.to_owned(), v.as_str().unwrap_or_default().to_owned()));
                } else {
                    refs(v, &format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                refs(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_document_is_openapi_3_1_and_every_ref_resolves() {
    let doc = doc();
    let text = serde_json::to_string(&doc).expect("serializes");
    let spec = oas3::from_json(&text).expect("the document deserializes as OpenAPI 3.1");
    assert!(spec.openapi.starts_with("3.1"), "{}", spec.openapi);
    assert!(spec.paths.as_ref().is_some_and(|p| p.len() >= 20), "paths are missing");
    let mut found = Vec::new();
    refs(&doc, "", &mut found);
    assert!(found.len() > 50, "suspiciously few $refs: {}", found.len());
    for (at, target) in &found {
        let pointer = target.strip_prefix('#').unwrap_or_else(|| panic!("{at}: external $ref {target}"));
        assert!(doc.pointer(pointer).is_some(), "{at}: $ref {target} resolves to nothing");
    }
    // What the API guide promises readers of the document.
    assert_eq!(doc["components"]["securitySchemes"][BEARER]["scheme"], "bearer");
    for name in ["Problem", "FieldError", "EndpointIn", "EventIn", "BatchIn", "EndpointView", "AttemptView"] {
        schema(&doc, name);
    }
}

#[test]
fn every_v1_operation_needs_the_bearer_token_and_the_operations_routes_none() {
    let doc = doc();
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            let security = &op["security"];
            if path.starts_with("/v1/") {
                assert_eq!(security, &json!([{ BEARER: [] }]), "{method} {path}");
                for status in ["401", "403"] {
                    assert!(op["responses"][status].is_object(), "{method} {path} lacks {status}");
                }
            } else {
                assert!(security.is_null(), "{method} {path} is served without a token");
            }
        }
    }
}

#[test]
fn every_path_parameter_is_declared_and_every_operation_has_a_success_answer() {
    let doc = doc();
    let placeholder = regex::Regex::new(r"\{([^}]+)\}").expect("regex");
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let names: BTreeSet<&str> =
            placeholder.captures_iter(path).filter_map(|c| c.get(1)).map(|m| m.as_str()).collect();
        for (method, op) in item.as_object().expect("path item") {
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str())
                .collect();
            assert_eq!(declared, names, "{method} {path}: path parameters");
            let responses = op["responses"].as_object().expect("responses");
            assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path}: no 2xx");
            assert!(op["tags"].as_array().is_some_and(|t| t.len() == 1), "{method} {path}: one tag");
        }
    }
}

#[test]
fn errors_are_problem_json_with_the_field_list_problem_rs_produces() {
    let doc = doc();
    for name in [
        "BadRequest",
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "Conflict",
        "PayloadTooLarge",
        "Unprocessable",
        "Unavailable",
    ] {
        let response = &doc["components"]["responses"][name];
        assert_eq!(
            response["content"]["application/problem+json"]["schema"]["$ref"], "#/components/schemas/Problem",
            "{name}"
        );
    }
    assert!(doc["components"]["responses"]["Unavailable"]["headers"]["Retry-After"].is_object());
    // Every status a handler answers with an error refers to the shared responses.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            for (status, response) in op["responses"].as_object().expect("responses") {
                if status.starts_with('4') && !(path == "/metrics" || path.starts_with("/v1/")) {
                    panic!("{method} {path}: unexpected {status}");
                }
                if status.starts_with('4') || status.starts_with('5') && path.starts_with("/v1/") {
                    let target = response["$ref"].as_str().unwrap_or_default();
                    assert!(target.starts_with("#/components/responses/"), "{method} {path} {status}");
                }
            }
        }
    }
    // The schema has what a real problem serializes to, `errors[]` with its positions included.
    let problem = Problem::invalid(vec![FieldError::at("url", 3, "bad"), FieldError::new("name", "long")]);
    assert_fits(&doc, "Problem", &serde_json::to_value(&problem).expect("serializes"));
    let required: Vec<&str> = schema(&doc, "Problem")["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, ["type", "title", "status", "detail"]);
    assert_fits(&doc, "Problem", &serde_json::to_value(Problem::not_found("tenant")).expect("serializes"));
}

/// `value` has no property `schema` lacks, and every property `schema` requires; nested objects and
/// arrays of `$ref`'d schemas are checked too.
fn assert_fits(doc: &Value, name: &str, value: &Value) {
    let schema = schema(doc, name);
    let properties = schema["properties"].as_object().unwrap_or_else(|| panic!("{name} has no properties"));
    let object = value.as_object().unwrap_or_else(|| panic!("{name}: {value} is not an object"));
    for key in object.keys() {
        assert!(properties.contains_key(key), "{name}: `{key}` is serialized but not in the schema");
    }
    for required in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        assert!(object.contains_key(required), "{name}: `{required}` is required but not serialized");
    }
    for (key, v) in object {
        let prop = &properties[key];
        let target = prop["$ref"].as_str().or_else(|| prop["items"]["$ref"].as_str());
        let Some(inner) = target.and_then(|t| t.strip_prefix("#/components/schemas/")) else { continue };
        let items: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        for item in items.into_iter().filter(|i| i.is_object()) {
            if schema_is_object(doc, inner) {
                assert_fits(doc, inner, item);
            }
        }
    }
}

fn schema_is_object(doc: &Value, name: &str) -> bool {
    schema(doc, name)["properties"].is_object()
}

#[test]
fn views_fit_their_schemas() {
    let doc = doc();
    let tenant = TenantRecord {
        serial: 1,
        id: "acme".into(),
        name: "Acme".into(),
        created_at: 1,
        updated_at: 2,
        disable_after_ms: Some(3_600_000),
    };
    assert_fits(&doc, "TenantView", &serde_json::to_value(TenantView::from(&tenant)).expect("serializes"));
    let mut endpoint =
        EndpointRecord::with_defaults(7, 1, "https://x.test/".into(), "whsec_x".into(), vec![], vec![]);
    endpoint.rate_limit = Some(RateLimit { per_second: 1, burst: 2 });
    endpoint.batch = Some(BatchPolicy { max_events: 10, max_wait_ms: 100 });
    let view = serde_json::to_value(EndpointView::from(&endpoint)).expect("serializes");
    assert_fits(&doc, "EndpointView", &view);
    let mut created = view.clone();
    created["secret"] = json!("whsec_x");
    let created_schema = &doc["components"]["schemas"]["EndpointCreated"];
    let flattened = created_schema["allOf"].as_array().map_or(0, Vec::len);
    assert!(flattened == 2, "EndpointCreated is EndpointView plus secret: {created_schema}");
    let event = EventRecord {
        event_type: "a.b".into(),
        channels: vec!["c".into()],
        payload: "{\"x\":1}".into(),
        received_at: 1,
        idempotency_key: None,
        routes: vec![7],
    };
    assert_fits(&doc, "EventView", &serde_json::to_value(EventView::new(9, &event)).expect("serializes"));
}

/// The hand-written schemas of model enums list exactly serde's names, each of which reads back.
#[test]
fn model_enum_schemas_are_serde_s_names() {
    fn check<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug + ToSchema>(
        all: &[T],
    ) {
        let schema = serde_json::to_value(T::schema()).expect("serializes");
        let values: Vec<Value> = schema["enum"].as_array().cloned().unwrap_or_default();
        assert_eq!(values.len(), all.len(), "{}: {schema}", T::name());
        for (variant, value) in all.iter().zip(&values) {
            assert_eq!(&serde_json::to_value(variant).expect("serializes"), value);
            assert_eq!(&serde_json::from_value::<T>(value.clone()).expect("reads back"), variant);
        }
    }
    check(&http_methods());
    check(&payload_formats());
    check(&delivery_states());
    check(&triggers());
    check(&scopes());
}

/// The hand-written schemas of model structs have exactly their serialized fields, all required, no
/// others allowed (the structs deny unknown fields).
#[test]
fn model_struct_schemas_have_exactly_the_serialized_fields() {
    fn check<T: serde::Serialize + ToSchema>(sample: T) {
        let schema = serde_json::to_value(T::schema()).expect("serializes");
        let value = serde_json::to_value(sample).expect("serializes");
        let fields: BTreeSet<&String> = value.as_object().expect("object").keys().collect();
        let properties: BTreeSet<&String> =
            schema["properties"].as_object().expect("properties").keys().collect();
        assert_eq!(fields, properties, "{}", T::name());
        let required: BTreeSet<&str> =
            schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        assert_eq!(required, fields.iter().map(|f| f.as_str()).collect(), "{}", T::name());
        assert_eq!(schema["additionalProperties"], false, "{}", T::name());
    }
    check(RetryPolicy::default());
    check(RateLimit { per_second: 1, burst: 1 });
    check(BatchPolicy { max_events: 1, max_wait_ms: 1 });
}

#[test]
fn id_schemas_match_the_ids_text() {
    fn check<T: ToSchema + std::fmt::Display>(id: T) {
        let schema = serde_json::to_value(T::schema()).expect("serializes");
        let pattern = schema["pattern"].as_str().expect("pattern");
        let re = regex::Regex::new(pattern).expect("pattern compiles");
        let text = id.to_string();
        assert!(re.is_match(&text), "{text} !~ {pattern}");
        assert!(!re.is_match(&format!("{text}0")), "{pattern} is not anchored");
    }
    for n in [0, 1, u64::MAX >> 1, u64::MAX] {
        check(EventId(n));
        check(EndpointId(n));
        check(AttemptId(n));
        check(BatchId(n));
        check(AuditId(n));
    }
}
