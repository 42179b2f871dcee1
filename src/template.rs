//! `${path}` templates: endpoint URLs and payloads filled in from the delivered event.
//!
//! A placeholder is exactly `${` path `}`. The path starts at the delivered event object (`id`, `type`,
//! `timestamp`, `channels`, `data.…`) and is names separated by `.`, each one or more of `[A-Za-z0-9_-]`,
//! at most [`MAX_PATH_SEGMENTS`] of them. An all-digit name indexes an array when the value there is one
//! and is an object key otherwise (`data.items.0.sku`). A path that leads nowhere is *missing*, which is
//! not an error: events of one type still differ.
//!
//! Templates are checked once, when the endpoint is created, and every mistake is a [`TemplateError`]
//! naming a 1-based character position (the API's 422), so delivery never meets a bad template and
//! rendering cannot fail. Parsing splits the text into literal parts and paths, so rendering is one pass
//! into one `String`.
//!
//! URLs ([`UrlTemplate`]):
//! - A `{` or `}` outside a `${…}` is an error (`{x}` is the usual slip for `${x}`); a `$` not followed
//!   by `{` is a legal URL character and stays as written.
//! - Placeholders only in the path, query or fragment, never in the scheme or the authority (everything
//!   up to the first `/`, `?` or `#` after `://`; without `://`, the whole URL): the destination host is
//!   then fixed, and the ordinary URL checks (scheme, host, SSRF) run on [`UrlTemplate::sample`] at
//!   creation. An event cannot redirect a delivery.
//! - A value is its text for a string, its compact JSON for a number, boolean, object or array, and empty
//!   for null or missing; every byte of it but RFC 3986's unreserved characters is then percent-encoded,
//!   so it is one URL component and adds no `/`, `?`, `&` or `#` (`A 1/x` becomes `A%201%2Fx`).
//!
//! Payloads ([`PayloadTemplate`]): JSON text with placeholders, at most [`MAX_PAYLOAD_TEMPLATE_LEN`]
//! bytes.
//! - A placeholder inside a JSON string (`"hello ${data.name}!"`) becomes the value escaped for a JSON
//!   string, without quotes: a string's content, any other value's compact JSON, nothing for null or
//!   missing (as in a URL: `"Dear ${data.title} ${data.name}"` should not read `Dear null Smith`).
//! - One in place of a value (`{"n": ${data.count}, "all": ${data}}`) becomes the value's compact JSON,
//!   `null` if missing.
//! - `{` and `}` are JSON there; only `${` starts a placeholder. A literal `${` in a string is written
//!   `$\u007b`.
//! - The text must be JSON once the placeholders are substituted. Parsing checks that on a stand-in of
//!   the same length (`x`s inside strings, `null` and spaces elsewhere), so a JSON error's position is
//!   the template's; and since a value goes only where `null` was valid, every rendering is valid JSON.
//!   Nesting deeper than serde_json's limit (128) is refused too.

use std::fmt::{self, Write as _};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

/// Bounds what one rendering costs: each placeholder may copy as much as the whole event.
pub const MAX_PLACEHOLDERS: usize = 64;
/// A payload template is a body, not a document store.
pub const MAX_PAYLOAD_TEMPLATE_LEN: usize = 64 * 1024;
/// At most this many `.`-separated names per path; real events are far shallower.
pub const MAX_PATH_SEGMENTS: usize = 16;

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`): a value encoded with it is one
/// URL component wherever it stands.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// What rendering reserves per placeholder on top of the literal text; a guess, not a limit.
const VALUE_CAPACITY_HINT: usize = 16;

/// A template mistake, at a 1-based character position in the template's text (what a person counts in
/// an editor, not bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("position {position}: {message}")]
pub struct TemplateError {
    pub position: usize,
    pub message: String,
}

/// A mistake found while scanning, at a byte offset; turned into a [`TemplateError`] once, at the end.
struct ScanError {
    byte: usize,
    message: String,
}

impl ScanError {
    fn new(byte: usize, message: impl Into<String>) -> ScanError {
        ScanError { byte, message: message.into() }
    }

    fn into_template_error(self, text: &str) -> TemplateError {
        TemplateError { position: char_position(text, self.byte), message: self.message }
    }
}

/// The 1-based character position of the character holding byte `byte` of `text`; `byte == text.len()` is
/// the position just past the end.
fn char_position(text: &str, byte: usize) -> usize {
    let mut byte = byte.min(text.len());
    while !text.is_char_boundary(byte) {
        byte -= 1;
    }
    text.get(..byte).map_or(0, |before| before.chars().count()) + 1
}

/// A placeholder's path, split at parse time.
#[derive(Debug, Clone)]
struct Path {
    segments: Box<[Segment]>,
}

#[derive(Debug, Clone)]
struct Segment {
    key: Box<str>,
    /// The index an all-digit name stands for, when the value it meets is an array.
    index: Option<usize>,
}

impl Path {
    /// The value at this path in `event`, `None` if it leads nowhere.
    fn lookup<'v>(&self, event: &'v Value) -> Option<&'v Value> {
        let mut value = event;
        for segment in &self.segments {
            value = match value {
                Value::Object(map) => map.get(&*segment.key)?,
                Value::Array(items) => items.get(segment.index?)?,
                _ => return None,
            };
        }
        Some(value)
    }

    /// The length of the placeholder as written: its names, the dots between them and `${}`.
    fn source_len(&self) -> usize {
        self.segments.iter().map(|s| s.key.len() + 1).sum::<usize>() + 2
    }
}

/// Reads the placeholder whose `${` starts at byte `start` of `text`; returns its path and the byte just past
/// its `}`.
fn read_placeholder(text: &str, start: usize) -> Result<(Path, usize), ScanError> {
    let bytes = text.as_bytes();
    let mut segments = Vec::new();
    let mut i = start + 2;
    let mut segment_start = i;
    loop {
        let Some(&b) = bytes.get(i) else {
            return Err(ScanError::new(start, "unclosed placeholder: `${` without its `}`"));
        };
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' => i += 1,
            b'.' | b'}' => {
                if i == segment_start {
                    return Err(if b == b'}' && segments.is_empty() {
                        ScanError::new(start, "empty placeholder: write `${path}`, e.g. `${data.id}`")
                    } else {
                        ScanError::new(i, "empty name in placeholder path")
                    });
                }
                if segments.len() == MAX_PATH_SEGMENTS {
                    return Err(ScanError::new(
                        start,
                        format!("placeholder path has more than {MAX_PATH_SEGMENTS} names"),
                    ));
                }
                // Only ASCII so far: the range is on character boundaries.
                let key = text.get(segment_start..i).unwrap_or_default();
                let index = if key.bytes().all(|d| d.is_ascii_digit()) { key.parse().ok() } else { None };
                segments.push(Segment { key: key.into(), index });
                i += 1;
                if b == b'}' {
                    return Ok((Path { segments: segments.into() }, i));
                }
                segment_start = i;
            }
            _ => {
                let c =
                    text.get(i..).and_then(|rest| rest.chars().next()).unwrap_or(char::REPLACEMENT_CHARACTER);
                return Err(ScanError::new(
                    i,
                    format!(
                        "invalid character {c:?} in placeholder path: \
                         use letters, digits, `_` and `-`, with `.` between names"
                    ),
                ));
            }
        }
    }
}

/// The literal parts of a template and the placeholders between them.
#[derive(Debug, Clone)]
struct Parts<H> {
    /// Each placeholder with the literal text before it.
    holes: Vec<(Box<str>, H)>,
    /// The literal text after the last placeholder.
    tail: Box<str>,
    /// Bytes of literal text, for reserving the output.
    literal_len: usize,
}

/// Collects literal parts and placeholders while scanning.
struct PartsBuilder<'t, H> {
    text: &'t str,
    holes: Vec<(Box<str>, H)>,
    literal_start: usize,
}

impl<'t, H> PartsBuilder<'t, H> {
    fn new(text: &'t str) -> Self {
        PartsBuilder { text, holes: Vec::new(), literal_start: 0 }
    }

    /// Reads the placeholder at byte `start` and records it; returns the byte just past it.
    fn placeholder(&mut self, start: usize, hole: impl FnOnce(Path) -> H) -> Result<usize, ScanError> {
        if self.holes.len() == MAX_PLACEHOLDERS {
            return Err(ScanError::new(start, format!("more than {MAX_PLACEHOLDERS} placeholders")));
        }
        let (path, end) = read_placeholder(self.text, start)?;
        let literal = self.text.get(self.literal_start..start).unwrap_or_default();
        self.holes.push((literal.into(), hole(path)));
        self.literal_start = end;
        Ok(end)
    }

    fn finish(self) -> Parts<H> {
        let tail: Box<str> = self.text.get(self.literal_start..).unwrap_or_default().into();
        let literal_len = self.holes.iter().map(|(literal, _)| literal.len()).sum::<usize>() + tail.len();
        Parts { holes: self.holes, tail, literal_len }
    }
}

impl<H> Parts<H> {
    /// Renders in one pass: the literal parts as written, each placeholder by `fill`.
    fn render(&self, mut fill: impl FnMut(&mut String, &H)) -> String {
        let mut out = String::with_capacity(self.literal_len + self.holes.len() * VALUE_CAPACITY_HINT);
        for (literal, hole) in &self.holes {
            out.push_str(literal);
            fill(&mut out, hole);
        }
        out.push_str(&self.tail);
        out
    }
}

/// A URL with `${path}` placeholders.
#[derive(Debug, Clone)]
pub struct UrlTemplate {
    parts: Parts<Path>,
}

impl UrlTemplate {
    /// Checks the placeholder syntax and where placeholders stand; the URL itself is checked on
    /// [`UrlTemplate::sample`] by the caller.
    pub fn parse(url: &str) -> Result<UrlTemplate, TemplateError> {
        UrlTemplate::scan(url).map_err(|e| e.into_template_error(url))
    }

    fn scan(url: &str) -> Result<UrlTemplate, ScanError> {
        let authority_end = authority_end(url);
        let bytes = url.as_bytes();
        let mut parts = PartsBuilder::new(url);
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            i = match b {
                b'$' if bytes.get(i + 1) == Some(&b'{') => {
                    if i < authority_end {
                        return Err(ScanError::new(
                            i,
                            "placeholders may appear only in the path, query or fragment, \
                             not in the scheme or host",
                        ));
                    }
                    parts.placeholder(i, |path| path)?
                }
                b'{' => {
                    return Err(ScanError::new(
                        i,
                        "`{` outside a placeholder: a placeholder is written `${path}`",
                    ));
                }
                b'}' => {
                    return Err(ScanError::new(
                        i,
                        "`}` outside a placeholder: a placeholder is written `${path}`",
                    ));
                }
                _ => i + 1,
            };
        }
        Ok(UrlTemplate { parts: parts.finish() })
    }

    /// A `GET` endpoint needs one: its URL is all it can send of the event.
    pub fn has_placeholders(&self) -> bool {
        !self.parts.holes.is_empty()
    }

    /// The URL with every placeholder replaced by a fixed harmless stand-in (`x`), for validating
    /// scheme/host/syntax of the template with the ordinary URL checks.
    pub fn sample(&self) -> String {
        self.parts.render(|out, _| out.push('x'))
    }

    /// Fills the placeholders from the event, each value percent-encoded as one URL component.
    pub fn render(&self, event: &Value) -> String {
        self.parts.render(|out, path| match path.lookup(event) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => out.extend(utf8_percent_encode(s, COMPONENT)),
            Some(other) => {
                // Writing into a String cannot fail, and neither can serializing a Value.
                let _ = write!(PercentEncoder(out), "{other}");
            }
        })
    }
}

/// Where the authority ends: the first `/`, `?` or `#` after `://`. Without `://` nothing is known to be
/// path, so the whole URL counts.
fn authority_end(url: &str) -> usize {
    let Some(scheme_end) = url.find("://") else { return url.len() };
    let start = scheme_end + 3;
    let rest = url.get(start..).unwrap_or_default();
    start + rest.find(['/', '?', '#']).unwrap_or(rest.len())
}

/// Percent-encodes what is written through it, as one URL component.
struct PercentEncoder<'a>(&'a mut String);

impl fmt::Write for PercentEncoder<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend(utf8_percent_encode(s, COMPONENT));
        Ok(())
    }
}

/// A JSON payload template.
#[derive(Debug, Clone)]
pub struct PayloadTemplate {
    parts: Parts<PayloadHole>,
}

#[derive(Debug, Clone)]
struct PayloadHole {
    path: Path,
    /// Inside a JSON string (escaped content) or in place of a value (a whole JSON value).
    in_string: bool,
}

impl PayloadTemplate {
    /// Checks the placeholders and that the text is JSON once they are substituted.
    pub fn parse(text: &str) -> Result<PayloadTemplate, TemplateError> {
        if text.len() > MAX_PAYLOAD_TEMPLATE_LEN {
            return Err(ScanError::new(
                MAX_PAYLOAD_TEMPLATE_LEN,
                format!("longer than {MAX_PAYLOAD_TEMPLATE_LEN} bytes"),
            )
            .into_template_error(text));
        }
        let parts = PayloadTemplate::scan(text).map_err(|e| e.into_template_error(text))?;
        check_json(text, &parts)?;
        Ok(PayloadTemplate { parts })
    }

    /// Splits the text at its placeholders, telling those inside JSON strings from those in place of a value.
    fn scan(text: &str) -> Result<Parts<PayloadHole>, ScanError> {
        let bytes = text.as_bytes();
        let mut parts = PartsBuilder::new(text);
        let mut in_string = false;
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            i = match b {
                b'$' if bytes.get(i + 1) == Some(&b'{') => {
                    parts.placeholder(i, |path| PayloadHole { path, in_string })?
                }
                // Skips the escaped character: `\"` does not end the string, `\\` escapes nothing after it.
                b'\\' if in_string => i + 2,
                b'"' => {
                    in_string = !in_string;
                    i + 1
                }
                _ => i + 1,
            };
        }
        Ok(parts.finish())
    }

    /// Fills the placeholders from the event; the result is always valid JSON.
    pub fn render(&self, event: &Value) -> String {
        self.parts.render(|out, hole| match (hole.in_string, hole.path.lookup(event)) {
            (true, None | Some(Value::Null)) => {}
            (true, Some(Value::String(s))) => escape_json_into(out, s),
            (true, Some(other)) => {
                // Writing into a String cannot fail, and neither can serializing a Value.
                let _ = write!(JsonEscaper(out), "{other}");
            }
            (false, None) => out.push_str("null"),
            (false, Some(value)) => {
                let _ = write!(out, "{value}");
            }
        })
    }
}

/// Parses the template with each placeholder replaced by a stand-in of its length that is valid where it
/// stands and takes any value's place: `x`s inside strings, `null` and spaces elsewhere (a placeholder has at
/// least the 4 characters of `null`). Placeholders are ASCII, so offsets in the stand-in are the template's.
fn check_json(text: &str, parts: &Parts<PayloadHole>) -> Result<(), TemplateError> {
    let stand_in = parts.render(|out, hole| {
        let len = hole.path.source_len();
        if hole.in_string {
            out.extend(std::iter::repeat_n('x', len));
        } else {
            out.push_str("null");
            out.extend(std::iter::repeat_n(' ', len.saturating_sub(4)));
        }
    });
    // Into a `Value`, not `IgnoredAny`: only that applies serde_json's nesting limit (128), which receivers
    // built on it would hit too.
    let Err(e) = serde_json::from_str::<Value>(&stand_in) else { return Ok(()) };
    let byte = if e.is_eof() { text.len() } else { json_error_byte(text, e.line(), e.column()) };
    let mut message = e.to_string();
    if let Some(bare) = message.strip_suffix(&format!(" at line {} column {}", e.line(), e.column())) {
        message = bare.to_owned();
    }
    Err(ScanError::new(byte, format!("not valid JSON: {message}")).into_template_error(text))
}

/// The byte serde_json's line and column point at: lines are 1-based and split at `\n`, and the column is
/// the 1-based byte of the offending character in its line.
fn json_error_byte(text: &str, line: usize, column: usize) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        text.match_indices('\n').nth(line - 2).map_or(text.len(), |(newline, _)| newline + 1)
    };
    line_start + column.saturating_sub(1)
}

/// Appends `s` escaped for the inside of a JSON string, as serde_json would escape it.
fn escape_json_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// Escapes what is written through it for the inside of a JSON string.
struct JsonEscaper<'a>(&'a mut String);

impl fmt::Write for JsonEscaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_json_into(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use percent_encoding::percent_decode_str;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn event(data: Value) -> Value {
        json!({
            "id": "evt_0123456789abc",
            "type": "ticket.created",
            "timestamp": "2026-01-02T03:04:05Z",
            "channels": ["client_1"],
            "data": data,
        })
    }

    fn url_error(url: &str) -> TemplateError {
        UrlTemplate::parse(url).expect_err(url)
    }

    fn payload_error(text: &str) -> TemplateError {
        PayloadTemplate::parse(text).expect_err(text)
    }

    fn render_url(url: &str, data: Value) -> String {
        UrlTemplate::parse(url).unwrap().render(&event(data))
    }

    fn render_payload(text: &str, data: Value) -> Value {
        let rendered = PayloadTemplate::parse(text).unwrap().render(&event(data));
        serde_json::from_str(&rendered).unwrap_or_else(|e| panic!("{rendered}: {e}"))
    }

    #[test]
    fn the_admin_docs_valid_urls_parse() {
        for url in [
            "http://dev.environment.com/${contactNumber}",
            "http://dev.environment.com/path/?data=${contactNumber}",
            "http://dev.environment.com/path/${contactNumber}?update=true",
            "http://mydomain.com/myeventualpath/whatever${contactNumber}whatever",
            "https://mydomain.com/myeventualpath/whatever${contactNumber}whatever",
        ] {
            let t = UrlTemplate::parse(url).unwrap();
            assert!(t.has_placeholders(), "{url}");
            assert!(!t.sample().contains(['$', '{', '}']), "{url}");
        }
        let t = UrlTemplate::parse("http://dev.environment.com/path/${contactNumber}?update=true").unwrap();
        assert_eq!(t.sample(), "http://dev.environment.com/path/x?update=true");
    }

    #[test]
    fn the_admin_docs_invalid_urls_are_rejected_at_the_offending_character() {
        let e = url_error("http://dev.environment.com/?data={contactNumber}");
        assert_eq!(e.position, 34);
        assert!(e.message.contains("`{` outside a placeholder"), "{e}");
        let e = url_error("http://dev.environment.com/?data=${contact id}");
        assert_eq!(e.position, 43);
        assert_eq!(e.to_string(), format!("position 43: {}", e.message));
        assert!(e.message.contains("invalid character ' '"), "{e}");
    }

    #[test]
    fn malformed_placeholders_name_their_position() {
        let cases = [
            ("https://a.example/${}", 19, "empty placeholder"),
            ("https://a.example/${abc", 19, "unclosed placeholder"),
            ("https://a.example/${", 19, "unclosed placeholder"),
            ("https://a.example/${a..b}", 23, "empty name"),
            ("https://a.example/${.a}", 21, "empty name"),
            ("https://a.example/${a.}", 23, "empty name"),
            ("https://a.example/${a/b}", 22, "invalid character '/'"),
            ("https://a.example/${{a}}", 21, "invalid character '{'"),
            ("https://a.example/x}", 20, "`}` outside a placeholder"),
            ("https://a.example/é${a b}", 23, "invalid character ' '"),
            ("https://a.example/${aé}", 22, "invalid character 'é'"),
        ];
        for (url, position, message) in cases {
            let e = url_error(url);
            assert_eq!(e.position, position, "{url}: {e}");
            assert!(e.message.contains(message), "{url}: {e}");
        }
    }

    #[test]
    fn a_path_has_at_most_16_names() {
        let names = |n: usize| (0..n).map(|i| format!("n{i}")).collect::<Vec<_>>().join(".");
        assert!(UrlTemplate::parse(&format!("https://a.example/${{{}}}", names(16))).is_ok());
        let e = url_error(&format!("https://a.example/${{{}}}", names(17)));
        assert_eq!(e.position, 19);
        assert!(e.message.contains("more than 16"), "{e}");
    }

    #[test]
    fn placeholders_are_refused_in_the_scheme_and_authority() {
        for (url, position) in [
            ("https://${data.host}/x", 9),
            ("https://a.example${data.tld}/x", 18),
            ("https://${u}@a.example/x", 9),
            ("https://u:${p}@a.example/x", 11),
            ("https://a.example:${data.port}/x", 19),
            ("https://a.example${x}", 18),
            ("${scheme}://a.example/x", 1),
            ("a.example/${x}", 11),
        ] {
            let e = url_error(url);
            assert_eq!(e.position, position, "{url}: {e}");
            assert!(e.message.contains("only in the path, query or fragment"), "{url}: {e}");
        }
        for url in ["https://a.example?q=${x}", "https://a.example#${x}", "https://a.example/${x}"] {
            assert!(UrlTemplate::parse(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn a_dollar_without_a_brace_is_a_plain_character() {
        for url in [
            "https://a.example/p?x=$5",
            "https://a.example/$",
            "https://a.example/$$${x}$",
            "https://$a.example/",
        ] {
            assert!(UrlTemplate::parse(url).is_ok(), "{url}");
        }
        assert_eq!(
            render_url("https://a.example/p?x=$5&y=$${data.y}$", json!({"y": 1})),
            "https://a.example/p?x=$5&y=$1$"
        );
        let t = UrlTemplate::parse("https://a.example/p").unwrap();
        assert!(!t.has_placeholders());
        assert_eq!(t.sample(), "https://a.example/p");
        assert_eq!(t.render(&json!(null)), "https://a.example/p");
    }

    #[test]
    fn url_values_are_percent_encoded_as_one_component() {
        let url = "https://a.example/c/${data.v}?q=${data.v}#${data.v}";
        assert_eq!(
            render_url(url, json!({"v": "A 1/x"})),
            "https://a.example/c/A%201%2Fx?q=A%201%2Fx#A%201%2Fx"
        );
        let one = |v: Value| render_url("https://a.example/${data.v}", json!({ "v": v }));
        assert_eq!(one(json!("a-b.c_d~e")), "https://a.example/a-b.c_d~e");
        assert_eq!(one(json!("?&#=+%@:")), "https://a.example/%3F%26%23%3D%2B%25%40%3A");
        assert_eq!(one(json!(42)), "https://a.example/42");
        assert_eq!(one(json!(-1.5)), "https://a.example/-1.5");
        assert_eq!(one(json!(true)), "https://a.example/true");
        assert_eq!(one(json!(false)), "https://a.example/false");
        assert_eq!(one(json!(null)), "https://a.example/");
        assert_eq!(one(json!("é😀")), "https://a.example/%C3%A9%F0%9F%98%80");
        assert_eq!(one(json!([1, "a"])), "https://a.example/%5B1%2C%22a%22%5D");
        assert_eq!(one(json!({"k": 1})), "https://a.example/%7B%22k%22%3A1%7D");
        assert_eq!(
            render_url("https://a.example/${data.missing}/${nope.x}", json!({})),
            "https://a.example//"
        );
    }

    #[test]
    fn paths_start_at_the_event_and_index_arrays() {
        let data = json!({"items": [{"sku": "s-1"}, {"sku": "s 2"}], "0": "key", "m": {"1": "one"}});
        let url = "https://a.example/${id}/${type}/${channels.0}/${data.items.1.sku}/${data.0}/${data.m.1}";
        assert_eq!(
            render_url(url, data.clone()),
            "https://a.example/evt_0123456789abc/ticket.created/client_1/s%202/key/one"
        );
        let missing = concat!(
            "https://a.example/${data.items.2.sku}/${data.items.x}/${id.x}",
            "/${data.items.99999999999999999999999}"
        );
        assert_eq!(render_url(missing, data), "https://a.example////");
        assert_eq!(
            render_url("https://a.example/${data.a.007}", json!({"a": [0, 1, 2, 3, 4, 5, 6, 7]})),
            "https://a.example/7"
        );
    }

    #[test]
    fn too_many_placeholders_are_refused() {
        let url = |n: usize| format!("https://a.example/{}", "${x}".repeat(n));
        assert!(UrlTemplate::parse(&url(MAX_PLACEHOLDERS)).is_ok());
        let e = url_error(&url(MAX_PLACEHOLDERS + 1));
        assert_eq!(e.position, 19 + 4 * MAX_PLACEHOLDERS);
        assert!(e.message.contains("more than 64 placeholders"), "{e}");
        let payload = |n: usize| format!("[{}]", vec!["${x}"; n].join(","));
        assert!(PayloadTemplate::parse(&payload(MAX_PLACEHOLDERS)).is_ok());
        let e = payload_error(&payload(MAX_PLACEHOLDERS + 1));
        assert_eq!(e.position, 2 + 5 * MAX_PLACEHOLDERS);
    }

    #[test]
    fn the_admin_docs_payload_example_renders() {
        let text = r#"{"contact": "${data.contact_number}"}"#;
        assert_eq!(
            render_payload(text, json!({"contact_number": "+33 6 12"})),
            json!({"contact": "+33 6 12"})
        );
        let rendered = PayloadTemplate::parse(text).unwrap().render(&event(json!({"contact_number": "1"})));
        assert_eq!(rendered, r#"{"contact": "1"}"#, "the literal text is kept as written");
    }

    #[test]
    fn placeholders_in_strings_are_escaped_without_quotes() {
        let text = concat!(
            r##"{"greeting": "hello ${data.name}!", "n": "#${data.n}", "o": "${data.o}", "##,
            r#""nil": "<${data.nil}>", "gone": "<${data.gone}>"}"#
        );
        let name = "a \"quoted\" \\ back\nslash\u{1}</script>\u{2028}é";
        let data = json!({"name": name, "n": 7, "o": {"k": "v\""}, "nil": null});
        assert_eq!(
            render_payload(text, data),
            json!({
                "greeting": "hello a \"quoted\" \\ back\nslash\u{1}</script>\u{2028}é!",
                "n": "#7",
                "o": "{\"k\":\"v\\\"\"}",
                "nil": "<>",
                "gone": "<>",
            })
        );
    }

    #[test]
    fn placeholders_in_place_of_a_value_become_json_values() {
        let text = concat!(
            r#"{"n": ${data.count}, "s": ${data.name}, "all": ${data}, "#,
            r#""list": [${id}, ${data.gone}], "t": ${data.t}}"#
        );
        let data = json!({"count": 3, "name": "x\"y", "t": true, "deep": {"a": [1, {"b": null}]}});
        assert_eq!(
            render_payload(text, data.clone()),
            json!({"n": 3, "s": "x\"y", "all": data, "list": ["evt_0123456789abc", null], "t": true})
        );
        assert_eq!(render_payload("${data}", json!([1, 2])), json!([1, 2]));
        assert_eq!(render_payload(" ${data.gone} ", json!({})), json!(null));
    }

    #[test]
    fn braces_and_escapes_in_payloads_are_json() {
        let text = r#"{"a": "{x} \"${data.v}\" \\${data.v} \${x} $\u007bx}", "b": {"c": []}}"#;
        assert!(PayloadTemplate::parse(text).is_err(), r"`\$` is not a JSON escape");
        let text = r#"{"a": "{x} \"${data.v}\" \\${data.v} $\u007bx} $", "b": {"c": []}}"#;
        assert_eq!(
            render_payload(text, json!({"v": "V"})),
            json!({"a": "{x} \"V\" \\V ${x} $", "b": {"c": []}})
        );
        assert_eq!(render_payload(r#""no placeholders""#, json!({})), json!("no placeholders"));
    }

    #[test]
    fn invalid_json_templates_name_their_position() {
        let cases = [
            (r#"{"a": }"#, 7, "expected value"),
            (r#"{"a": "${x}""#, 13, "EOF"),
            ("${x} ${y}", 6, "trailing characters"),
            ("${x}${y}", 5, "trailing characters"),
            (r#"{${k}: 1}"#, 2, "key must be a string"),
            ("[1${x}]", 3, ""),
            ("{\n  \"é\": 1,\n  \"b\": ?\n}", 20, "expected value"),
            ("", 1, "EOF"),
        ];
        for (text, position, message) in cases {
            let e = payload_error(text);
            assert_eq!(e.position, position, "{text}: {e}");
            assert!(e.message.starts_with("not valid JSON: ") && e.message.contains(message), "{text}: {e}");
            assert!(!e.message.contains("line"), "{text}: {e}");
        }
        let e = payload_error(r#"{"a": "${x y}"}"#);
        assert_eq!((e.position, e.message.contains("invalid character ' '")), (11, true));
        let e = payload_error(r#"{"a": "${x"}"#);
        assert_eq!(e.position, 11);
        let e = payload_error(r#"{"a": "$"} ${"#);
        assert_eq!((e.position, e.message.contains("unclosed")), (12, true));
    }

    #[test]
    fn over_long_payload_templates_are_refused() {
        let fits = format!("\"{}\"", "a".repeat(MAX_PAYLOAD_TEMPLATE_LEN - 2));
        assert!(PayloadTemplate::parse(&fits).is_ok());
        let text = format!("\"{}\"", "a".repeat(MAX_PAYLOAD_TEMPLATE_LEN - 1));
        let e = payload_error(&text);
        assert_eq!(e.position, MAX_PAYLOAD_TEMPLATE_LEN + 1);
        assert!(e.message.contains("longer than 65536 bytes"), "{e}");
        let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        assert!(payload_error(&deep).message.contains("recursion limit"));
    }

    fn tricky_string() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[\"\\\\\\x00-\\x1f</>a-z {}$\u{2028}\u{7f}é😀]{0,16}",
            Just("</script><script>alert(1)</script>".to_owned()),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
            tricky_string().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(tricky_string(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A template text, biased towards placeholders, braces, quotes and escapes.
    fn template_text() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,200}",
            "[${}a-z. \"\\\\]{0,40}",
            "https://a\\.example/[${}a-z0-9. /?#]{0,40}",
            "[{\\[]\"[a-z]{0,3}\": [\"${}a-z0-9.,:\\\\ ]{0,30}[}\\]]",
        ]
    }

    fn check_position(text: &str, e: &TemplateError) -> Result<(), TestCaseError> {
        let len = text.chars().count();
        prop_assert!((1..=len + 1).contains(&e.position), "{text:?}: {e} (len {len})");
        Ok(())
    }

    /// What a value reads as inside a JSON string (before escaping).
    fn in_string_text(value: Option<&Value>) -> String {
        match value {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parsers_never_panic_and_errors_point_into_the_text(text in template_text()) {
            match UrlTemplate::parse(&text) {
                Ok(t) => {
                    let _ = t.render(&json!({"data": {"a": "x"}}));
                    prop_assert!(!t.sample().contains('{'), "{}", t.sample());
                }
                Err(e) => check_position(&text, &e)?,
            }
            match PayloadTemplate::parse(&text) {
                Ok(t) => {
                    let rendered = t.render(&json!({"id": "i", "data": {"a": "\"", "b": [1]}}));
                    prop_assert!(serde_json::from_str::<Value>(&rendered).is_ok(), "{text:?} → {rendered:?}");
                }
                Err(e) => check_position(&text, &e)?,
            }
        }

        #[test]
        fn rendered_payloads_are_json_with_the_values_in_place(v in json_value(), w in json_value()) {
            let text = concat!(
                r#"{"v": ${data.v}, "in": "<${data.v}|${data.w.k}>", "#,
                r#""list": [${data.w}, ${data.w.0}, "${data.w.0}"], "x": ${data.x}}"#
            );
            let data = json!({"v": v, "w": w});
            let event = event(data.clone());
            let rendered = PayloadTemplate::parse(text).unwrap().render(&event);
            let parsed: Value =
                serde_json::from_str(&rendered).map_err(|e| TestCaseError::fail(format!("{rendered}: {e}")))?;
            let w0 = data.pointer("/w/0");
            let want = json!({
                "v": data["v"],
                "in": format!(
                    "<{}|{}>",
                    in_string_text(data.pointer("/v")),
                    in_string_text(data.pointer("/w/k"))
                ),
                "list": [data["w"], w0.cloned().unwrap_or(Value::Null), in_string_text(w0)],
                "x": null,
            });
            // Through text like `parsed`, which is as lossy for big floats.
            let want: Value = serde_json::from_str(&want.to_string()).unwrap();
            prop_assert_eq!(parsed, want);
        }

        #[test]
        fn rendered_url_components_decode_to_the_value(s in tricky_string()) {
            let url = render_url("https://a.example/p/${data.s}?q=${data.s}", json!({ "s": s }));
            prop_assert!(url.parse::<http::Uri>().is_ok(), "{url}");
            let rest = url.strip_prefix("https://a.example/p/").unwrap();
            let (path, query) = rest.split_once("?q=").unwrap();
            prop_assert_eq!(path, query);
            prop_assert!(path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)), "{path}");
            prop_assert_eq!(percent_decode_str(path).decode_utf8().unwrap(), s.as_str());
        }
    }
}
