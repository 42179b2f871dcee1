//! Payload filters: a condition on an event's `data` that must hold for an endpoint to receive the event.
//!
//! ```text
//! filter    = condition (";" condition)* [";"]
//! condition = path "=" regex
//! path      = segment ("." segment)*            at most MAX_PATH_SEGMENTS segments
//! segment   = name ["(" ("*" | name) ")"]
//! name      = one or more characters other than . ( ) = ; whitespace and control characters
//! regex     = everything up to the next `;` not preceded by `\` (so `\;` is a literal `;`)
//! ```
//!
//! Example: `role=MEMBER;addresses(is_main).zip_code=13.*` holds for a payload whose `role` is `MEMBER`
//! and one of whose `addresses` with `is_main: true` has a `zip_code` starting with `13`.
//!
//! Parsing, decided to keep filters predictable and cheap to evaluate:
//! - Nothing is trimmed: a space is part of the regex after `=`, and an error anywhere in the path. A
//!   single trailing `;` is ignored; any other empty condition (`a=1;;b=2`, `;a=1`) is an error, and so is
//!   the empty filter (callers represent "no filter" as `None`).
//! - The regex is the `regex` crate's syntax, compiled once at parse time and anchored at both ends: `13.*`
//!   means "starts with 13". `\;` is left as it is, the regex crate reads it as a literal `;`; `\\;` is an
//!   escaped backslash followed by the separator. An empty regex matches only the empty string.
//! - Each regex is compiled within a size limit ([`REGEX_SIZE_LIMIT`]), so a hostile filter such as
//!   `a=((a{100}){100}){100}` is an error rather than megabytes of automaton per endpoint.
//! - Errors carry the 1-based column, in characters of the whole filter text, of the offending character
//!   (one past the end when the text stops too early); a regex error points at the regex's first
//!   character.
//!
//! Evaluation walks each path from the root of the payload:
//! - `name` takes the field `name` of an object. `name(*)` takes the field, which must be an array, and
//!   continues with every element; `name(flag)` continues with the elements that are objects whose field
//!   `flag` is the boolean `true` (not the string `"true"`, nor any other truthy value). A condition holds
//!   if any value the path reaches matches, so wildcards are existential and may nest (`a(*).b(*).c`).
//! - The value reached must be a scalar: a string matches on its contents, a number on its JSON text as
//!   serde_json prints it (`42`, `1.5`, `1e+20`; so `1.50` in the payload reads `1.5`), a boolean on
//!   `true`/`false`, `null` on `null`. An object or an array never matches: arrays are iterated only
//!   where the path says `(*)` or `(flag)`, so a filter means the same thing whatever the array holds.
//! - A missing field or a value of the wrong type on the way reaches nothing, so the condition is false.
//! - All conditions must hold. Each payload node is visited at most once per condition, so the cost is
//!   bounded by the payload's size; evaluation allocates nothing except when formatting a number too
//!   long for a stack buffer.

use std::fmt::{self, Write as _};

use regex::{Regex, RegexBuilder};
use serde_json::Value;

/// Longest filter accepted, in bytes: a filter is configuration, not data.
pub const MAX_FILTER_LEN: usize = 4096;
/// Most conditions in one filter: each is a compiled regex kept for the endpoint's lifetime.
pub const MAX_CONDITIONS: usize = 32;
/// Most segments in one path; also bounds the recursion of evaluation.
pub const MAX_PATH_SEGMENTS: usize = 16;

/// Heap allowed for one compiled regex. Enough for a few Unicode classes (`\w+@\w+\.\w+` needs about
/// 150 KB: a Unicode `\w` alone is some 50 KB), small enough that 32 of them stay a few megabytes.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// Cache of the lazy DFA, per regex and thread; past it the regex falls back to slower engines.
const REGEX_DFA_SIZE_LIMIT: usize = 256 * 1024;

/// A parsed filter, ready to evaluate against event payloads.
#[derive(Debug, Clone)]
pub struct Filter {
    source: String,
    conditions: Vec<Condition>,
}

/// Why a filter text was rejected, with where: the API returns it as a 422.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct FilterError {
    /// 1-based, in characters of the whole filter text.
    pub column: usize,
    pub message: String,
}

#[derive(Debug, Clone)]
struct Condition {
    path: Vec<Segment>,
    value: Matcher,
}

/// How a condition tests the value it reaches. Most filters compare with a literal (`role=MEMBER`,
/// `value=true`) or a literal prefix (`zip_code=13.*`); those are tested directly, without running a
/// regex — what matters when an event meets the filters of thousands of endpoints, each with regexes
/// (and lazy-DFA caches) of its own. The answers are exactly the regex's.
#[derive(Debug, Clone)]
enum Matcher {
    /// A regex without metacharacters: the value equals it.
    Exact(String),
    /// A literal followed by `.*`: the value starts with it, and has no `\n` after it (`.` does not
    /// match a line feed).
    Prefix(String),
    /// Anything else: the condition's regex wrapped in `^(?:…)$`.
    Regex(Regex),
}

impl Matcher {
    fn new(source: &str, regex: Regex) -> Matcher {
        let is_literal = |s: &str| regex::escape(s) == s;
        if is_literal(source) {
            Matcher::Exact(source.to_owned())
        } else if let Some(prefix) = source.strip_suffix(".*")
            && is_literal(prefix)
        {
            Matcher::Prefix(prefix.to_owned())
        } else {
            Matcher::Regex(regex)
        }
    }

    fn is_match(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(text) => value == text,
            Matcher::Prefix(prefix) => {
                value.strip_prefix(prefix.as_str()).is_some_and(|rest| !rest.contains('\n'))
            }
            Matcher::Regex(regex) => regex.is_match(value),
        }
    }
}

#[derive(Debug, Clone)]
struct Segment {
    field: String,
    elements: Option<Elements>,
}

/// Which elements of an array field a `(…)` segment continues with.
#[derive(Debug, Clone)]
enum Elements {
    /// `(*)`
    All,
    /// `(flag)`: the objects whose `flag` is `true`.
    Flagged(String),
}

impl Filter {
    /// Parses a filter and compiles its regexes, once: endpoints keep the result for every event.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.is_empty() {
            return Err(FilterError { column: 1, message: "empty filter".into() });
        }
        if text.len() > MAX_FILTER_LEN {
            let fitting =
                text.char_indices().take_while(|&(i, c)| i + c.len_utf8() <= MAX_FILTER_LEN).count();
            return Err(FilterError {
                column: fitting + 1,
                message: format!("filter longer than {MAX_FILTER_LEN} bytes"),
            });
        }
        let mut parser = Parser { text, pos: 0, column: 1 };
        let mut conditions = Vec::new();
        // `text` is not empty, so the loop ends at the end of the text only after a trailing `;`.
        while parser.peek().is_some() {
            if parser.peek() == Some(';') {
                return Err(parser.error("empty condition"));
            }
            if conditions.len() == MAX_CONDITIONS {
                return Err(parser.error(format!("too many conditions (at most {MAX_CONDITIONS})")));
            }
            conditions.push(parser.condition()?);
            // A condition ends at a `;` or at the end of the text.
            parser.bump();
        }
        Ok(Filter { source: text.to_owned(), conditions })
    }

    /// Does the payload satisfy every condition?
    pub fn matches(&self, data: &Value) -> bool {
        self.conditions.iter().all(|c| reaches_match(data, &c.path, &c.value))
    }

    /// The source text, as given.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// Does any value that `path` reaches from `value` match `regex`?
fn reaches_match(value: &Value, path: &[Segment], regex: &Matcher) -> bool {
    let Some((segment, rest)) = path.split_first() else {
        return scalar_matches(value, regex);
    };
    let Some(field) = value.get(segment.field.as_str()) else {
        return false;
    };
    match &segment.elements {
        None => reaches_match(field, rest, regex),
        Some(Elements::All) => {
            field.as_array().is_some_and(|items| items.iter().any(|item| reaches_match(item, rest, regex)))
        }
        Some(Elements::Flagged(flag)) => field.as_array().is_some_and(|items| {
            items.iter().any(|item| {
                item.get(flag.as_str()) == Some(&Value::Bool(true)) && reaches_match(item, rest, regex)
            })
        }),
    }
}

fn scalar_matches(value: &Value, regex: &Matcher) -> bool {
    match value {
        Value::String(s) => regex.is_match(s),
        Value::Bool(b) => regex.is_match(if *b { "true" } else { "false" }),
        Value::Null => regex.is_match("null"),
        Value::Number(n) => {
            let mut buf = StackStr::default();
            match write!(buf, "{n}") {
                Ok(()) => regex.is_match(buf.as_str()),
                // Only arbitrary-precision numbers get this long.
                Err(_) => regex.is_match(&n.to_string()),
            }
        }
        Value::Array(_) | Value::Object(_) => false,
    }
}

/// A formatting target on the stack, for numbers: an `f64` prints in at most 24 bytes, an integer in 20.
#[derive(Default)]
struct StackStr {
    buf: [u8; 32],
    len: usize,
}

impl StackStr {
    fn as_str(&self) -> &str {
        self.buf.get(..self.len).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default()
    }
}

impl fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        self.buf.get_mut(self.len..end).ok_or(fmt::Error)?.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A cursor over the filter text that keeps the column of its position.
struct Parser<'a> {
    text: &'a str,
    /// Byte offset, always on a char boundary.
    pos: usize,
    /// 1-based column, in chars, of `pos`.
    column: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<char> {
        self.text.get(self.pos..).and_then(|rest| rest.chars().next())
    }

    fn bump(&mut self) {
        if let Some(c) = self.peek() {
            self.pos += c.len_utf8();
            self.column += 1;
        }
    }

    fn error(&self, message: impl Into<String>) -> FilterError {
        FilterError { column: self.column, message: message.into() }
    }

    /// An error in a path at the current character; whatever was expected there, whitespace or a control
    /// character is the more useful thing to report.
    fn path_error(&self, message: &str) -> FilterError {
        match self.peek() {
            Some(c) if c.is_whitespace() => self.error("whitespace is not allowed in a path"),
            Some(c) if c.is_control() => self.error("control character in a path"),
            _ => self.error(message),
        }
    }

    /// Parses `path=regex`, stopping before the `;` that ends it, or at the end of the text.
    fn condition(&mut self) -> Result<Condition, FilterError> {
        let path = self.path()?;
        // `path` returns only at a `=`.
        self.bump();
        let (start, column) = (self.pos, self.column);
        while let Some(c) = self.peek() {
            if c == ';' {
                break;
            }
            self.bump();
            if c == '\\' {
                self.bump();
            }
        }
        let source = self.text.get(start..self.pos).unwrap_or_default();
        // Compiled even when a literal test will do: the regex decides what is valid.
        let regex = compile(source).map_err(|message| FilterError { column, message })?;
        Ok(Condition { path, value: Matcher::new(source, regex) })
    }

    /// Parses a path, stopping at the `=` after it.
    fn path(&mut self) -> Result<Vec<Segment>, FilterError> {
        let mut path = Vec::new();
        loop {
            if path.len() == MAX_PATH_SEGMENTS {
                return Err(self.error(format!("too many path segments (at most {MAX_PATH_SEGMENTS})")));
            }
            let field = self.name();
            if field.is_empty() {
                return Err(match self.peek() {
                    Some('(') => self.error("`(` must follow a field name"),
                    _ => self.path_error("empty field name"),
                });
            }
            let elements = if self.peek() == Some('(') { Some(self.elements()?) } else { None };
            path.push(Segment { field: field.to_owned(), elements });
            match self.peek() {
                Some('.') => self.bump(),
                Some('=') => return Ok(path),
                None | Some(';') => return Err(self.error("expected `=` after the path")),
                Some(')') => return Err(self.error("unexpected `)`")),
                Some('(') => return Err(self.error("`(` must follow a field name")),
                // Only after a `)`: a name stops at nothing else.
                Some(_) => return Err(self.path_error("expected `.` or `=` after `)`")),
            }
        }
    }

    /// Parses `(*)` or `(flag)`, starting at the `(`.
    fn elements(&mut self) -> Result<Elements, FilterError> {
        self.bump();
        let elements = if self.peek() == Some('*') {
            self.bump();
            Elements::All
        } else {
            let flag = self.name();
            if flag.is_empty() {
                return Err(match self.peek() {
                    Some(')') => self.error(
                        "empty flag: write `(*)` for every element, `(field)` for those whose field is true",
                    ),
                    Some('(') => self.error("`(` must follow a field name"),
                    Some('.') => self.error("expected `*` or a field name after `(`"),
                    _ => self.path_error("unclosed `(`"),
                });
            }
            Elements::Flagged(flag.to_owned())
        };
        if self.peek() != Some(')') {
            return Err(self.path_error("unclosed `(`"));
        }
        self.bump();
        Ok(elements)
    }

    /// Consumes the longest run of name characters; empty if there is none.
    fn name(&mut self) -> &'a str {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if matches!(c, '.' | '(' | ')' | '=' | ';') || c.is_whitespace() || c.is_control() {
                break;
            }
            self.bump();
        }
        self.text.get(start..self.pos).unwrap_or_default()
    }
}

/// Compiles a condition's regex anchored at both ends, or says why it cannot be.
fn compile(source: &str) -> Result<Regex, String> {
    let build = |pattern: &str| {
        RegexBuilder::new(pattern).size_limit(REGEX_SIZE_LIMIT).dfa_size_limit(REGEX_DFA_SIZE_LIMIT).build()
    };
    // First on its own, though it costs a second compilation at parse time: wrapped, an unbalanced
    // `a)|(b` would compile to `^(?:a)|(b)$` and escape the anchors; and the regex crate's messages then
    // quote the user's text, not ours.
    build(source).map_err(describe)?;
    build(&format!("^(?:{source})$")).map_err(|e| match e {
        // Valid alone but not wrapped: the `)$` we add fell into a `(?x)` comment.
        regex::Error::Syntax(_) => "invalid regex: a `#` comment must end with a newline".to_owned(),
        other => describe(other),
    })
}

/// A one-line message for a regex error; the regex crate's own spans several lines to draw a caret.
fn describe(error: regex::Error) -> String {
    match error {
        regex::Error::CompiledTooBig(limit) => {
            format!("regex too big: it compiles to more than {limit} bytes")
        }
        regex::Error::Syntax(text) => {
            let reason = text.lines().find_map(|line| line.strip_prefix("error: "));
            match reason {
                Some(reason) => format!("invalid regex: {reason}"),
                None => format!("invalid regex: {}", text.split_whitespace().collect::<Vec<_>>().join(" ")),
            }
        }
        other => format!("invalid regex: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn matches(filter: &str, data: &Value) -> bool {
        Filter::parse(filter).unwrap().matches(data)
    }

    /// The column and message of a rejected filter.
    fn error(filter: &str) -> (usize, String) {
        let e = Filter::parse(filter).unwrap_err();
        (e.column, e.message)
    }

    fn contact(role: &str, main_zip: &str, other_zip: &str) -> Value {
        json!({
            "role": role,
            "addresses": [
                {"is_main": false, "zip_code": other_zip},
                {"is_main": true, "zip_code": main_zip},
            ],
        })
    }

    #[test]
    fn spec_example_role_and_main_address() {
        let f = Filter::parse("role=MEMBER;addresses(is_main).zip_code=13.*").unwrap();
        assert!(f.matches(&contact("MEMBER", "13008", "75001")));
        // The zip code starting with 13 is on the address that is not the main one.
        assert!(!f.matches(&contact("MEMBER", "75001", "13008")));
        assert!(!f.matches(&contact("ADMIN", "13008", "75001")));
        assert!(!f.matches(&json!({"role": "MEMBER"})));
        assert!(!f.matches(&json!({"role": "MEMBER", "addresses": []})));
        assert_eq!(f.as_str(), "role=MEMBER;addresses(is_main).zip_code=13.*");
    }

    #[test]
    fn spec_example_admin_doc_spelling() {
        let f = Filter::parse("role=MEMBER;addresses(isMain).zipCode=13.*").unwrap();
        let data = json!({"role": "MEMBER", "addresses": [{"isMain": true, "zipCode": "13100"}]});
        assert!(f.matches(&data));
        let f = Filter::parse("Indicators(*).value=true").unwrap();
        assert!(f.matches(&json!({"Indicators": [{"value": false}, {"value": true}]})));
        // Field names are case-sensitive.
        assert!(!f.matches(&json!({"indicators": [{"value": true}]})));
    }

    #[test]
    fn any_indicator_true() {
        let f = Filter::parse("indicators(*).value=true").unwrap();
        assert!(f.matches(&json!({"indicators": [{"value": false}, {"value": true}]})));
        assert!(f.matches(&json!({"indicators": [{"value": "true"}]})));
        assert!(!f.matches(&json!({"indicators": [{"value": false}, {"value": null}, {}]})));
        assert!(!f.matches(&json!({"indicators": []})));
        assert!(!f.matches(&json!({"indicators": {"value": true}})));
    }

    #[test]
    fn only_boolean_true_selects_flagged_elements() {
        let f = Filter::parse("a(on).v=1").unwrap();
        assert!(f.matches(&json!({"a": [{"on": true, "v": 1}]})));
        for on in [json!("true"), json!(1), json!(false), json!(null), json!([true])] {
            assert!(!f.matches(&json!({"a": [{"on": on, "v": 1}]})), "{on}");
        }
        assert!(!f.matches(&json!({"a": [{"v": 1}, 1, "on", null]})));
    }

    #[test]
    fn regex_is_anchored_at_both_ends() {
        let data = json!({"role": "MEMBER"});
        assert!(matches("role=MEMBER", &data));
        assert!(!matches("role=MEMB", &data));
        assert!(!matches("role=EMBER", &data));
        assert!(matches("role=MEMB.*", &data));
        assert!(matches("role=(?i)member", &data));
        // An alternation stays inside the anchors.
        assert!(!matches("role=X|MEMB", &data));
        assert!(matches("role=X|MEMBER", &data));
        // `$` does not match before a final newline, and `(?m)` stays inside the group.
        assert!(!matches("role=(?m)MEMBER", &json!({"role": "MEMBER\nX"})));
    }

    #[test]
    fn scalars_match_on_their_json_text() {
        let data = json!({"n": 42, "neg": -7, "f": 1.5, "big": 1e20, "t": true, "f2": false, "z": null});
        assert!(matches("n=42", &data));
        assert!(matches(r"n=\d+", &data));
        assert!(!matches("n=4", &data));
        assert!(matches("neg=-7", &data));
        assert!(matches(r"f=1\.5", &data));
        assert!(matches(r"big=1e\+20", &data));
        assert!(matches("t=true", &data));
        assert!(matches("f2=false", &data));
        assert!(matches("z=null", &data));
        assert!(!matches("z=", &data));
        assert!(matches(&format!("u={}", u64::MAX), &json!({"u": u64::MAX})));
        assert!(matches(&format!("i={}", i64::MIN), &json!({"i": i64::MIN})));
        assert!(matches(r"m=-1\.7976931348623157e\+308", &json!({"m": f64::MIN})));
        // Strings match on their contents, not their JSON text.
        assert!(matches("s=42", &json!({"s": "42"})));
        assert!(!matches("s=\"42\"", &json!({"s": "42"})));
    }

    #[test]
    fn objects_and_arrays_at_the_end_never_match() {
        assert!(!matches("a=.*", &json!({"a": {}})));
        assert!(!matches("a=.*", &json!({"a": {"b": 1}})));
        assert!(!matches("a=.*", &json!({"a": []})));
        assert!(!matches("a=1", &json!({"a": [1]})));
        assert!(!matches("a=.*", &json!({"a": ["x"]})));
        // Flagged elements are objects: the path must go on into them.
        assert!(!matches("a(on)=.*", &json!({"a": [{"on": true}]})));
        assert!(matches("a(*)=1", &json!({"a": [0, 1]})));
        assert!(!matches("a(*)=1", &json!({"a": [[1]]})));
    }

    #[test]
    fn missing_fields_and_wrong_types_reach_nothing() {
        assert!(!matches("a=.*", &json!({})));
        assert!(!matches("a.b=.*", &json!({"a": 1})));
        assert!(!matches("a.b=.*", &json!({"a": "b"})));
        assert!(!matches("a.b=.*", &json!({"a": [{"b": 1}]})));
        assert!(!matches("a(*).b=1", &json!({"a": {"b": 1}})));
        assert!(!matches("a(*)=1", &json!({"a": 1})));
        assert!(!matches("a(*)=.*", &json!({"a": "xyz"})));
        assert!(!matches("a=.*", &json!([{"a": 1}])));
        assert!(!matches("a=.*", &json!("a")));
        assert!(!matches("a=.*", &Value::Null));
    }

    #[test]
    fn nested_wildcards_are_existential() {
        let data = json!({"a": [
            {"b": [{"c": "x"}, {"c": "y"}]},
            {"b": [{"c": "z", "on": true}]},
            {"b": "not an array"},
            "not an object",
        ]});
        assert!(matches("a(*).b(*).c=z", &data));
        assert!(matches("a(*).b(*).c=y", &data));
        assert!(!matches("a(*).b(*).c=w", &data));
        assert!(matches("a(*).b(on).c=z", &data));
        assert!(!matches("a(*).b(on).c=x", &data));
    }

    #[test]
    fn all_conditions_must_hold() {
        let data = json!({"a": "1", "b": "2"});
        assert!(matches("a=1;b=2", &data));
        assert!(matches("a=1;b=2;", &data));
        assert!(!matches("a=1;b=3", &data));
        assert!(!matches("a=0;b=2", &data));
        // The same field twice.
        assert!(matches("a=1|2;a=1|3", &data));
        assert!(!matches("a=1|2;a=2|3", &data));
    }

    #[test]
    fn escaped_semicolon_is_part_of_the_regex() {
        let f = Filter::parse(r"a=x\;y;b=[\;]").unwrap();
        assert!(f.matches(&json!({"a": "x;y", "b": ";"})));
        assert!(!f.matches(&json!({"a": "x", "b": ";"})));
        // `\\;` is an escaped backslash, then the separator.
        let f = Filter::parse(r"a=x\\;b=1").unwrap();
        assert!(f.matches(&json!({"a": r"x\", "b": "1"})));
        // A trailing escaped `;` is not the ignored trailing separator.
        assert!(matches(r"a=1\;", &json!({"a": "1;"})));
        assert!(!matches(r"a=1\;", &json!({"a": "1"})));
    }

    #[test]
    fn unicode_and_punctuated_field_names() {
        let data = json!({
            "prénom": "Zoé",
            "contact-number": "0601",
            "données": {"clé_1": [{"ok": true, "v": "é"}]},
        });
        assert!(matches("prénom=Zo.", &data));
        assert!(matches(r"contact-number=06\d+", &data));
        assert!(matches("données.clé_1(ok).v=é", &data));
        assert!(matches("données.clé_1(*).v=\\w", &data));
        // Columns count characters, not bytes.
        assert_eq!(error("données.é é=1").0, 10);
    }

    #[test]
    fn empty_regex_matches_only_the_empty_string() {
        assert!(matches("nickname=", &json!({"nickname": ""})));
        assert!(!matches("nickname=", &json!({"nickname": "x"})));
        assert!(!matches("nickname=", &json!({"nickname": null})));
        assert!(!matches("nickname=", &json!({})));
        assert!(matches("nickname=;a=1", &json!({"nickname": "", "a": 1})));
    }

    #[test]
    fn whitespace_is_not_trimmed() {
        // After `=`, it is part of the regex.
        assert!(matches("role= MEMBER", &json!({"role": " MEMBER"})));
        assert!(!matches("role= MEMBER", &json!({"role": "MEMBER"})));
        assert!(!matches("role=MEMBER ", &json!({"role": "MEMBER"})));
        // In a path, it is an error.
        assert_eq!(error("role =MEMBER"), (5, "whitespace is not allowed in a path".into()));
        assert_eq!(error(" role=MEMBER"), (1, "whitespace is not allowed in a path".into()));
        assert_eq!(error("a=1; b=2"), (5, "whitespace is not allowed in a path".into()));
        assert_eq!(error("a(\t*)=1").0, 3);
        assert_eq!(error("a(*\n)=1").0, 4);
        assert_eq!(error("a\u{1}=1"), (2, "control character in a path".into()));
    }

    #[test]
    fn syntax_errors_point_at_the_offending_character() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 1, "empty filter"),
            ("role", 5, "expected `=` after the path"),
            ("a;b=1", 2, "expected `=` after the path"),
            ("a=1;b", 6, "expected `=` after the path"),
            ("=x", 1, "empty field name"),
            ("a..b=1", 3, "empty field name"),
            ("a.=1", 3, "empty field name"),
            ("a.", 3, "empty field name"),
            (".a=1", 1, "empty field name"),
            ("a(=1", 3, "unclosed `(`"),
            ("a(", 3, "unclosed `(`"),
            ("a(*=1", 4, "unclosed `(`"),
            ("a(b=1", 4, "unclosed `(`"),
            ("a(*", 4, "unclosed `(`"),
            ("a(b.c)=1", 4, "unclosed `(`"),
            ("a(.)=1", 3, "expected `*` or a field name after `(`"),
            (
                "a()=1",
                3,
                "empty flag: write `(*)` for every element, `(field)` for those whose field is true",
            ),
            ("(*)=1", 1, "`(` must follow a field name"),
            ("a.(*)=1", 3, "`(` must follow a field name"),
            ("a((*))=1", 3, "`(` must follow a field name"),
            ("a(*)(*)=1", 5, "`(` must follow a field name"),
            ("a(*)b=1", 5, "expected `.` or `=` after `)`"),
            ("a)=1", 2, "unexpected `)`"),
            ("a(*))=1", 5, "unexpected `)`"),
            ("a b=1", 2, "whitespace is not allowed in a path"),
            ("a=1;;b=2", 5, "empty condition"),
            (";a=1", 1, "empty condition"),
            (";", 1, "empty condition"),
            ("a=1;;", 5, "empty condition"),
        ];
        for &(filter, column, message) in cases {
            assert_eq!(error(filter), (column, message.to_owned()), "{filter:?}");
        }
    }

    #[test]
    fn regex_errors_point_at_the_regex() {
        assert_eq!(error("a=("), (3, "invalid regex: unclosed group".into()));
        assert_eq!(error("role=MEMBER;b.c=x)|(y"), (17, "invalid regex: unopened group".into()));
        assert_eq!(
            error(r"a=x\"),
            (3, "invalid regex: incomplete escape sequence, reached end of pattern prematurely".into())
        );
        assert_eq!(error("a=[a"), (3, "invalid regex: unclosed character class".into()));
        // Fine on its own, but our anchors would land in the comment.
        assert_eq!(error("a=(?x)b #c"), (3, "invalid regex: a `#` comment must end with a newline".into()));
        assert!(matches("a=(?x)b #c\n", &json!({"a": "b"})));
        for filter in ["a=(", "a=[", r"a=\p{Nope}", "a=x{2,1}", "a=*"] {
            assert!(error(filter).1.starts_with("invalid regex: "), "{filter}");
            assert!(!error(filter).1.contains('\n'), "{filter}");
        }
    }

    #[test]
    fn hostile_regexes_are_rejected_quickly() {
        let start = std::time::Instant::now();
        let (column, message) = error("a=1;b=(((a{100}){100}){100})");
        assert_eq!(column, 7);
        assert!(message.starts_with("regex too big"), "{message}");
        assert!(error(r"a=\w{500}").1.starts_with("regex too big"));
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        // Usual regexes, Unicode classes included, fit.
        for filter in [r"a=\w+@\w+\.\w+", r"a=.{0,100}", r"a=(?i)[\w.+-]+@[\w-]+\.[\w.]+", r"a=\d{5}"] {
            Filter::parse(filter).unwrap();
        }
    }

    #[test]
    fn length_limit() {
        let at_limit = format!("a={}", "x".repeat(MAX_FILTER_LEN - 2));
        assert!(Filter::parse(&at_limit).is_ok());
        let over = format!("{at_limit}x");
        assert_eq!(error(&over), (MAX_FILTER_LEN + 1, format!("filter longer than {MAX_FILTER_LEN} bytes")));
        // The column counts characters: `é` is two bytes, and the one straddling the limit is past it.
        // Here the `é` at byte MAX_FILTER_LEN - 1 is column MAX_FILTER_LEN / 2 + 1.
        let wide = format!("a{}", "é".repeat(MAX_FILTER_LEN / 2));
        assert_eq!(error(&wide).0, MAX_FILTER_LEN / 2 + 1);
    }

    #[test]
    fn condition_limit() {
        let conditions: Vec<String> = (0..MAX_CONDITIONS).map(|i| format!("f{i}={i}")).collect();
        let at_limit = conditions.join(";");
        assert!(Filter::parse(&at_limit).is_ok());
        assert!(Filter::parse(&format!("{at_limit};")).is_ok());
        let over = format!("{at_limit};z=1");
        assert_eq!(
            error(&over),
            (at_limit.chars().count() + 2, format!("too many conditions (at most {MAX_CONDITIONS})"))
        );
    }

    #[test]
    fn path_segment_limit() {
        let at_limit = vec!["s"; MAX_PATH_SEGMENTS].join(".");
        let data = (0..MAX_PATH_SEGMENTS).fold(json!("v"), |inner, _| json!({ "s": inner }));
        assert!(matches(&format!("{at_limit}=v"), &data));
        assert_eq!(
            error(&format!("{at_limit}.s=v")),
            (at_limit.len() + 2, format!("too many path segments (at most {MAX_PATH_SEGMENTS})"))
        );
    }

    #[test]
    fn error_display_names_the_column() {
        assert_eq!(
            Filter::parse("a b=1").unwrap_err().to_string(),
            "column 2: whitespace is not allowed in a path"
        );
    }

    #[test]
    fn stack_str_refuses_what_does_not_fit() {
        let mut buf = StackStr::default();
        assert!(write!(buf, "{}", "x".repeat(32)).is_ok());
        assert!(write!(buf, "x").is_err());
        assert_eq!(buf.as_str().len(), 32);
    }

    /// One segment of a generated path: its field name and what it does with arrays.
    #[derive(Debug, Clone)]
    enum Step {
        Field(String),
        Every(String),
        /// The field, and the flag; flags are upper case, so they never collide with fields.
        Flagged(String, String),
    }

    fn field_name() -> impl Strategy<Value = String> {
        "[a-z_é][a-z0-9_é*-]{0,6}"
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            field_name().prop_map(Step::Field),
            field_name().prop_map(Step::Every),
            (field_name(), "[A-Z]{1,4}").prop_map(|(f, flag)| Step::Flagged(f, flag)),
        ]
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            "[a-z;\\\\.*()= é]{0,10}".prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            Just(Value::Null),
        ]
    }

    /// A payload where `steps` reach `leaf`, with decoys on the way that must not reach it.
    fn payload(steps: &[Step], leaf: Value, decoy: &Value) -> Value {
        steps.iter().rev().fold(leaf, |inner, step| match step {
            Step::Field(f) => json!({ f.as_str(): inner }),
            Step::Every(f) => json!({ f.as_str(): [decoy, inner, decoy] }),
            Step::Flagged(f, flag) => {
                let mut selected = inner;
                let mut skipped = selected.clone();
                if let (Some(s), Some(k)) = (selected.as_object_mut(), skipped.as_object_mut()) {
                    s.insert(flag.clone(), Value::Bool(true));
                    k.insert(flag.clone(), Value::Bool(false));
                }
                json!({ f.as_str(): [skipped, selected] })
            }
        })
    }

    fn filter_text(steps: &[Step], regex: &str) -> String {
        let path: Vec<String> = steps
            .iter()
            .map(|s| match s {
                Step::Field(f) => f.clone(),
                Step::Every(f) => format!("{f}(*)"),
                Step::Flagged(f, flag) => format!("{f}({flag})"),
            })
            .collect();
        format!("{}={regex}", path.join("."))
    }

    /// The JSON text a scalar matches on, as a regex that matches exactly it.
    fn exact_regex(value: &Value) -> String {
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        regex::escape(&text).replace(';', r"\;")
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_errors_point_inside_the_text(text in ".{0,200}") {
            if let Err(e) = Filter::parse(&text) {
                prop_assert!((1..=text.chars().count() + 1).contains(&e.column), "{e}");
            }
        }

        #[test]
        fn parse_never_panics_on_filter_like_text(text in "[a-z().*;=\\\\]{0,40}") {
            match Filter::parse(&text) {
                Ok(f) => {
                    prop_assert_eq!(f.as_str(), text.as_str());
                    // Evaluating never panics either.
                    f.matches(&json!({"a": [{"b": true, "a": "x"}], "b": {"a": 1}}));
                }
                Err(e) => prop_assert!((1..=text.chars().count() + 1).contains(&e.column), "{e}"),
            }
        }

        #[test]
        fn a_filter_matches_the_payload_built_for_it(
            inner in proptest::collection::vec(step(), 0..MAX_PATH_SEGMENTS - 1),
            last in prop_oneof![field_name().prop_map(Step::Field), field_name().prop_map(Step::Every)],
            leaf in scalar(),
        ) {
            let mut steps = inner;
            steps.push(last);
            let text = filter_text(&steps, &exact_regex(&leaf));
            let filter = Filter::parse(&text).unwrap();
            let decoy = json!("decoy value");
            prop_assert!(filter.matches(&payload(&steps, leaf.clone(), &decoy)), "{text}");
            // Anchored: a longer value does not match, nor does the same value one level off.
            let longer = Value::from(format!("{}x", exact_text(&leaf)));
            prop_assert!(!filter.matches(&payload(&steps, longer, &decoy)), "{text}");
            prop_assert!(!filter.matches(&payload(&steps, json!([leaf.clone()]), &decoy)), "{text}");
            prop_assert!(!filter.matches(&payload(&steps[1..], leaf, &decoy)), "{text}");
        }
    }

    fn exact_text(value: &Value) -> String {
        match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}
