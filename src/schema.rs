//! JSON Schemas of the event catalog: compiled once when an event type is written (or loaded), then
//! checked against every payload of that type at ingest.
//!
//! The `jsonschema` crate does the work. hookd sets what a shared service needs on top of it:
//! - no network or file access while compiling: `$ref` resolves only within the schema itself (the
//!   crate is built without its HTTP and file resolvers, so a remote `$ref` is a compile error);
//! - the `regex` crate for `pattern`, with size limits, instead of a backtracking engine: a hostile
//!   pattern cannot make ingest slow;
//! - a size cap on the schema text, and a cap on how many violations one payload reports.

use jsonschema::{PatternOptions, Validator};
use serde_json::Value;

/// Largest schema accepted, as JSON text.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// Violations listed for one payload; past this the producer has enough to fix.
pub const MAX_VIOLATIONS: usize = 20;

/// A compiled schema.
#[derive(Debug, Clone)]
pub struct PayloadSchema {
    validator: Validator,
}

/// One way a payload fails its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON Pointer to the offending value in the payload (`""` for the payload itself, `/items/0/sku`).
    pub pointer: String,
    pub message: String,
}

impl PayloadSchema {
    /// Compiles a schema; the error says what is wrong with it.
    pub fn compile(schema: &Value) -> Result<PayloadSchema, String> {
        if !schema.is_object() {
            return Err("must be a JSON Schema object".into());
        }
        let patterns = PatternOptions::regex().size_limit(256 * 1024).dfa_size_limit(256 * 1024);
        jsonschema::options()
            .with_pattern_options(patterns)
            .build(schema)
            .map(|validator| PayloadSchema { validator })
            .map_err(|e| e.to_string())
    }

    /// Compiles a schema stored as JSON text.
    pub fn compile_text(text: &str) -> Result<PayloadSchema, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        PayloadSchema::compile(&value)
    }

    /// Does the payload satisfy the schema? (The fast check; [`Self::violations`] says why not.)
    pub fn is_valid(&self, payload: &Value) -> bool {
        self.validator.is_valid(payload)
    }

    /// The payload's violations, at most [`MAX_VIOLATIONS`], in the order the validator finds them.
    pub fn violations(&self, payload: &Value) -> Vec<Violation> {
        self.validator
            .iter_errors(payload)
            .take(MAX_VIOLATIONS)
            .map(|e| Violation { pointer: e.instance_path().to_string(), message: e.to_string() })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> PayloadSchema {
        PayloadSchema::compile(&json!({
            "type": "object",
            "required": ["ticket_id", "seats"],
            "properties": {
                "ticket_id": {"type": "string", "pattern": "^T[0-9]+$"},
                "seats": {"type": "array", "items": {"type": "integer", "minimum": 1}},
            },
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_conforming_payload_passes() {
        let s = schema();
        let ok = json!({"ticket_id": "T12", "seats": [1, 2]});
        assert!(s.is_valid(&ok));
        assert!(s.violations(&ok).is_empty());
    }

    #[test]
    fn violations_point_at_the_offending_values() {
        let s = schema();
        let bad = json!({"ticket_id": "X1", "seats": [1, 0, "a"]});
        assert!(!s.is_valid(&bad));
        let mut pointers: Vec<String> = s.violations(&bad).into_iter().map(|v| v.pointer).collect();
        pointers.sort();
        assert_eq!(pointers, ["/seats/1", "/seats/2", "/ticket_id"]);
        let missing = s.violations(&json!({}));
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(missing.iter().all(|v| v.pointer.is_empty()), "{missing:?}");
        assert!(missing[0].message.contains("ticket_id"), "{missing:?}");
    }

    #[test]
    fn violations_are_capped() {
        let s = PayloadSchema::compile(&json!({"type": "array", "items": {"type": "string"}}))
            .unwrap_or_else(|e| panic!("{e}"));
        let many = Value::Array((0..100).map(|i| json!(i)).collect());
        assert_eq!(s.violations(&many).len(), MAX_VIOLATIONS);
    }

    #[test]
    fn bad_schemas_are_refused_with_a_reason() {
        for bad in [
            json!(["not", "an", "object"]),
            json!({"type": "no-such-type"}),
            json!({"$ref": "https://example.com/remote.json"}),
            json!({"$ref": "#/$defs/missing"}),
            json!({"type": "string", "pattern": "(unclosed"}),
        ] {
            let e = PayloadSchema::compile(&bad).err();
            assert!(e.as_deref().is_some_and(|e| !e.is_empty()), "{bad} accepted");
        }
        assert!(PayloadSchema::compile_text("{not json").is_err());
    }

    #[test]
    fn a_pattern_too_big_for_the_regex_limits_is_refused() {
        let huge = json!({"type": "string", "pattern": "((((a{100}){100}){100}){100})"});
        assert!(PayloadSchema::compile(&huge).is_err());
    }

    #[test]
    fn local_refs_resolve() {
        let s = PayloadSchema::compile(&json!({
            "$defs": {"id": {"type": "string", "minLength": 3}},
            "type": "object",
            "properties": {"id": {"$ref": "#/$defs/id"}},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.is_valid(&json!({"id": "abc"})));
        assert!(!s.is_valid(&json!({"id": "ab"})));
    }
}
