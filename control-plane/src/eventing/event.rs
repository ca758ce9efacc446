//! CloudEvents 1.0: the broker's event type, its validation, the HTTP
//! binding (binary, structured and batched modes), and the canonical byte
//! form stored in the log.
//!
//! One type, [`Event`], holds every context attribute (required, optional
//! and extensions) by name, plus the data as raw bytes. Nothing is
//! re-serialized on the way through: binary-mode data is stored and
//! delivered byte for byte, structured-mode `data` keeps the exact JSON
//! text the producer sent, and `data_base64` is stored decoded — so an
//! event leaves the broker with the attributes and data it came in with.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::value::RawValue;

pub const SPEC_VERSION: &str = "1.0";
pub const CE_JSON: &str = "application/cloudevents+json";
pub const CE_BATCH_JSON: &str = "application/cloudevents-batch+json";

/// A context attribute value. The CloudEvents type system has more types
/// (URI, Timestamp, Binary, …) but they all travel as strings; only
/// Integer and Boolean keep their own JSON form in structured mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrValue {
    String(String),
    Integer(i32),
    Boolean(bool),
}

impl AttrValue {
    /// The canonical string encoding (spec "Type System").
    pub fn as_str(&self) -> Cow<'_, str> {
        match self {
            AttrValue::String(s) => Cow::Borrowed(s),
            AttrValue::Integer(i) => Cow::Owned(i.to_string()),
            AttrValue::Boolean(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            AttrValue::String(s) => serde_json::Value::String(s.clone()),
            AttrValue::Integer(i) => serde_json::Value::from(*i),
            AttrValue::Boolean(b) => serde_json::Value::Bool(*b),
        }
    }
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::String(s.to_owned())
    }
}

/// A rejected event: which attribute, and why. Ingress turns it into a
/// 400 whose body names the attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventError {
    pub attribute: String,
    pub reason: String,
}

impl EventError {
    fn new(attribute: impl Into<String>, reason: impl Into<String>) -> Self {
        EventError {
            attribute: attribute.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "attribute {:?}: {}", self.attribute, self.reason)
    }
}

impl std::error::Error for EventError {}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Event {
    /// Every context attribute, `specversion` included, by name.
    pub attrs: BTreeMap<String, AttrValue>,
    pub data: Option<Bytes>,
    /// The data is a JSON value taken verbatim from a structured event's
    /// `data` member, so it is JSON even when `datacontenttype` is absent
    /// (the JSON format implies `application/json` then).
    pub json_data: bool,
}

const REQUIRED: [&str; 4] = ["id", "source", "specversion", "type"];
const OPTIONAL: [&str; 5] = ["datacontenttype", "dataschema", "subject", "time", "data"];

impl Event {
    /// A minimal valid event (tests, error events).
    pub fn new(id: &str, source: &str, ty: &str) -> Event {
        let mut e = Event::default();
        e.set("specversion", SPEC_VERSION);
        e.set("id", id);
        e.set("source", source);
        e.set("type", ty);
        e
    }

    pub fn set(&mut self, name: &str, value: impl Into<AttrValue>) {
        self.attrs.insert(name.to_owned(), value.into());
    }

    pub fn get(&self, name: &str) -> Option<&AttrValue> {
        self.attrs.get(name)
    }

    /// The attribute in its canonical string form.
    pub fn get_str(&self, name: &str) -> Option<Cow<'_, str>> {
        self.attrs.get(name).map(AttrValue::as_str)
    }

    pub fn id(&self) -> &str {
        self.string_attr("id")
    }

    pub fn source(&self) -> &str {
        self.string_attr("source")
    }

    pub fn ty(&self) -> &str {
        self.string_attr("type")
    }

    fn string_attr(&self, name: &str) -> &str {
        match self.attrs.get(name) {
            Some(AttrValue::String(s)) => s,
            _ => "",
        }
    }

    /// The spec's MUSTs for a 1.0 event. SHOULDs (names up to 20
    /// characters, unique ids) are not enforced: an event that breaks a
    /// SHOULD is still a valid event.
    pub fn validate(&self) -> Result<(), EventError> {
        for name in REQUIRED {
            if !self.attrs.contains_key(name) {
                return Err(EventError::new(name, "required attribute is missing"));
            }
        }
        for (name, value) in &self.attrs {
            check_name(name)?;
            let known = REQUIRED.contains(&name.as_str()) || OPTIONAL.contains(&name.as_str());
            let s = match value {
                AttrValue::String(s) => s.as_str(),
                // Extensions may be Integer or Boolean; the spec's own
                // attributes are all string-typed.
                _ if known => return Err(EventError::new(name, "must be a string")),
                _ => continue,
            };
            match name.as_str() {
                "specversion" if s != SPEC_VERSION => {
                    return Err(EventError::new(
                        name,
                        format!("unsupported version {s:?} (only \"1.0\")"),
                    ))
                }
                "id" | "type" | "subject" if s.is_empty() => {
                    return Err(EventError::new(name, "must be a non-empty string"))
                }
                "source" => check_uri_reference(s).map_err(|r| EventError::new(name, r))?,
                "dataschema" => check_uri(s).map_err(|r| EventError::new(name, r))?,
                "datacontenttype" => check_media_type(s).map_err(|r| EventError::new(name, r))?,
                "time" => check_rfc3339(s).map_err(|r| EventError::new(name, r))?,
                _ => {}
            }
        }
        Ok(())
    }

    // ---- the log's canonical form ---------------------------------------

    /// Encodes the event for the log:
    ///
    /// ```text
    /// u8 version (1) | u8 flags (1 = has data, 2 = json data) | u16 count
    /// count × ( u8 name len | name | u8 tag | value )
    ///     tag 0 string: u32 len | bytes; tag 1 integer: i32; tag 2 bool: u8
    /// data: every byte after the attributes
    /// ```
    pub fn encode(&self) -> Bytes {
        let cap = 4
            + self
                .attrs
                .iter()
                .map(|(k, v)| k.len() + 6 + v.as_str().len())
                .sum::<usize>()
            + self.data.as_ref().map_or(0, Bytes::len);
        let mut b = BytesMut::with_capacity(cap);
        b.put_u8(1);
        let flags = u8::from(self.data.is_some()) | (u8::from(self.json_data) << 1);
        b.put_u8(flags);
        b.put_u16_le(u16::try_from(self.attrs.len()).unwrap_or(u16::MAX));
        for (k, v) in self.attrs.iter().take(usize::from(u16::MAX)) {
            // Names are validated to be short ASCII; cut defensively.
            let name = &k.as_bytes()[..k.len().min(255)];
            b.put_u8(name.len() as u8);
            b.put_slice(name);
            match v {
                AttrValue::String(s) => {
                    b.put_u8(0);
                    b.put_u32_le(u32::try_from(s.len()).unwrap_or(u32::MAX));
                    b.put_slice(s.as_bytes());
                }
                AttrValue::Integer(i) => {
                    b.put_u8(1);
                    b.put_i32_le(*i);
                }
                AttrValue::Boolean(x) => {
                    b.put_u8(2);
                    b.put_u8(u8::from(*x));
                }
            }
        }
        if let Some(d) = &self.data {
            b.put_slice(d);
        }
        b.freeze()
    }

    /// Decodes [`Event::encode`]'s output; the data shares `bytes`.
    pub fn decode(bytes: &Bytes) -> Result<Event, String> {
        let mut b = bytes.clone();
        let need = |b: &Bytes, n: usize| {
            if b.remaining() < n {
                Err("truncated event record".to_owned())
            } else {
                Ok(())
            }
        };
        need(&b, 4)?;
        let version = b.get_u8();
        if version != 1 {
            return Err(format!("unknown event record version {version}"));
        }
        let flags = b.get_u8();
        let count = b.get_u16_le();
        let mut attrs = BTreeMap::new();
        for _ in 0..count {
            need(&b, 1)?;
            let n = usize::from(b.get_u8());
            need(&b, n + 1)?;
            let name = String::from_utf8(b.split_to(n).to_vec())
                .map_err(|_| "attribute name is not UTF-8".to_owned())?;
            let value = match b.get_u8() {
                0 => {
                    need(&b, 4)?;
                    let len = b.get_u32_le() as usize;
                    need(&b, len)?;
                    AttrValue::String(
                        String::from_utf8(b.split_to(len).to_vec())
                            .map_err(|_| "attribute value is not UTF-8".to_owned())?,
                    )
                }
                1 => {
                    need(&b, 4)?;
                    AttrValue::Integer(b.get_i32_le())
                }
                2 => {
                    need(&b, 1)?;
                    AttrValue::Boolean(b.get_u8() != 0)
                }
                t => return Err(format!("unknown attribute tag {t}")),
            };
            attrs.insert(name, value);
        }
        Ok(Event {
            attrs,
            data: (flags & 1 != 0).then_some(b),
            json_data: flags & 2 != 0,
        })
    }

    // ---- HTTP binding ----------------------------------------------------

    /// Headers and body of the event in binary content mode.
    pub fn to_binary(&self) -> (HeaderMap, Bytes) {
        let mut h = HeaderMap::with_capacity(self.attrs.len() + 1);
        for (name, value) in &self.attrs {
            if name == "datacontenttype" {
                continue;
            }
            let Ok(hn) = HeaderName::from_bytes(format!("ce-{name}").as_bytes()) else {
                continue;
            };
            let encoded = utf8_percent_encode(&value.as_str(), HEADER_ENCODE).to_string();
            if let Ok(hv) = HeaderValue::from_str(&encoded) {
                h.insert(hn, hv);
            }
        }
        let ct = match self.attrs.get("datacontenttype") {
            Some(v) => Some(v.as_str().into_owned()),
            None if self.json_data => Some("application/json".to_owned()),
            None => None,
        };
        if let Some(ct) = ct {
            if let Ok(hv) = HeaderValue::from_str(&ct) {
                h.insert(http::header::CONTENT_TYPE, hv);
            }
        }
        (h, self.data.clone().unwrap_or_default())
    }

    /// The event as a structured-mode JSON object.
    pub fn to_structured_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, v) in &self.attrs {
            m.insert(k.clone(), v.to_json());
        }
        if let Some(d) = &self.data {
            let ct = self.get_str("datacontenttype");
            if self.json_data || ct.as_deref().is_some_and(is_json_media_type) {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(d) {
                    m.insert("data".into(), v);
                    return serde_json::Value::Object(m);
                }
            }
            match std::str::from_utf8(d) {
                Ok(s) if ct.as_deref().is_some_and(is_text_media_type) => {
                    m.insert("data".into(), serde_json::Value::String(s.to_owned()));
                }
                _ => {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(d);
                    m.insert("data_base64".into(), serde_json::Value::String(b64));
                }
            }
        }
        serde_json::Value::Object(m)
    }
}

/// What the HTTP binding says to percent-encode in header values: space,
/// `"`, `%`, and everything outside printable ASCII (the encoder always
/// encodes non-ASCII).
const HEADER_ENCODE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// Which HTTP content mode a request uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Binary,
    Structured,
    Batch,
}

pub fn media_type(content_type: Option<&HeaderValue>) -> String {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.split(';').next())
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

pub fn mode_of(headers: &HeaderMap) -> Mode {
    match media_type(headers.get(http::header::CONTENT_TYPE)).as_str() {
        CE_BATCH_JSON => Mode::Batch,
        // Any `application/cloudevents+<format>` is structured; only JSON
        // is supported, which `from_structured` checks.
        m if m.starts_with("application/cloudevents+") => Mode::Structured,
        _ => Mode::Binary,
    }
}

/// Parses a request or response in any content mode; a batch yields many.
pub fn from_http(headers: &HeaderMap, body: Bytes) -> Result<Vec<Event>, EventError> {
    match mode_of(headers) {
        Mode::Binary => from_binary(headers, body).map(|e| vec![e]),
        Mode::Structured => {
            let mt = media_type(headers.get(http::header::CONTENT_TYPE));
            if mt != CE_JSON {
                return Err(EventError::new(
                    "datacontenttype",
                    format!("unsupported event format {mt:?} (only {CE_JSON})"),
                ));
            }
            from_structured(&body).map(|e| vec![e])
        }
        Mode::Batch => from_batch(&body),
    }
}

/// True if the headers carry a binary-mode event (a `ce-specversion`) or
/// the content type is a CloudEvents format. Replies without either are
/// plain responses, not events.
pub fn looks_like_event(headers: &HeaderMap) -> bool {
    headers.contains_key("ce-specversion") || mode_of(headers) != Mode::Binary
}

/// Binary mode: `ce-*` headers are the attributes (values percent-decoded
/// as UTF-8), `Content-Type` is `datacontenttype`, the body is the data.
pub fn from_binary(headers: &HeaderMap, body: Bytes) -> Result<Event, EventError> {
    let mut ev = Event::default();
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let attr = attr.to_ascii_lowercase();
        let decoded = percent_decode(value.as_bytes())
            .decode_utf8()
            .map_err(|_| {
                EventError::new(&attr, "header value is not UTF-8 after percent-decoding")
            })?
            .into_owned();
        if headers.get_all(name).iter().count() > 1 {
            return Err(EventError::new(&attr, "attribute appears more than once"));
        }
        check_name(&attr)?;
        ev.attrs.insert(attr, AttrValue::String(decoded));
    }
    if let Some(ct) = headers.get(http::header::CONTENT_TYPE) {
        let ct = ct
            .to_str()
            .map_err(|_| EventError::new("datacontenttype", "Content-Type is not ASCII"))?;
        if let Some(AttrValue::String(other)) = ev.attrs.get("datacontenttype") {
            if other != ct {
                return Err(EventError::new(
                    "datacontenttype",
                    "ce-datacontenttype disagrees with Content-Type",
                ));
            }
        }
        ev.attrs
            .insert("datacontenttype".into(), AttrValue::String(ct.to_owned()));
    }
    if !body.is_empty() {
        ev.data = Some(body);
    }
    ev.validate()?;
    Ok(ev)
}

/// Structured mode, JSON format.
pub fn from_structured(body: &[u8]) -> Result<Event, EventError> {
    let obj: BTreeMap<String, &RawValue> = serde_json::from_slice(body)
        .map_err(|e| EventError::new("specversion", format!("body is not a JSON object: {e}")))?;
    from_json_members(obj)
}

/// Batched mode: a JSON array of structured events.
pub fn from_batch(body: &[u8]) -> Result<Vec<Event>, EventError> {
    let items: Vec<BTreeMap<String, &RawValue>> = serde_json::from_slice(body).map_err(|e| {
        EventError::new(
            "specversion",
            format!("batch is not a JSON array of objects: {e}"),
        )
    })?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, obj)| {
            from_json_members(obj).map_err(|e| EventError {
                attribute: e.attribute,
                reason: format!("{} (event {i} of the batch)", e.reason),
            })
        })
        .collect()
}

fn from_json_members(obj: BTreeMap<String, &RawValue>) -> Result<Event, EventError> {
    let mut ev = Event::default();
    let mut data: Option<&RawValue> = None;
    let mut data_b64: Option<&RawValue> = None;
    for (name, raw) in obj {
        match name.as_str() {
            "data" => data = Some(raw),
            "data_base64" => data_b64 = Some(raw),
            _ => {
                check_name(&name)?;
                let v: serde_json::Value = serde_json::from_str(raw.get())
                    .map_err(|e| EventError::new(&name, e.to_string()))?;
                let value = match v {
                    // The JSON format: a null attribute is an absent one.
                    serde_json::Value::Null => continue,
                    serde_json::Value::String(s) => AttrValue::String(s),
                    serde_json::Value::Bool(b) => AttrValue::Boolean(b),
                    serde_json::Value::Number(n) => n
                        .as_i64()
                        .and_then(|i| i32::try_from(i).ok())
                        .map(AttrValue::Integer)
                        .ok_or_else(|| {
                            EventError::new(&name, "numbers must be 32-bit signed integers")
                        })?,
                    _ => {
                        return Err(EventError::new(
                            &name,
                            "must be a string, an integer or a boolean",
                        ))
                    }
                };
                ev.attrs.insert(name, value);
            }
        }
    }
    match (data, data_b64) {
        (Some(_), Some(_)) => {
            return Err(EventError::new(
                "data",
                "both data and data_base64 are present",
            ))
        }
        (None, Some(raw)) => {
            let s: Option<String> = serde_json::from_str(raw.get())
                .map_err(|_| EventError::new("data_base64", "must be a string"))?;
            if let Some(s) = s {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s.as_bytes())
                    .map_err(|e| EventError::new("data_base64", format!("not base64: {e}")))?;
                ev.data = Some(Bytes::from(bytes));
            }
        }
        (Some(raw), None) if raw.get() != "null" => {
            let ct = ev.get_str("datacontenttype");
            let is_json = ct.as_deref().is_none_or(is_json_media_type);
            let as_string = (!is_json)
                .then(|| serde_json::from_str::<String>(raw.get()).ok())
                .flatten();
            match as_string {
                // Non-JSON content carried as a JSON string: the data is
                // the string itself, not its JSON quoting.
                Some(s) => ev.data = Some(Bytes::from(s)),
                None => {
                    ev.data = Some(Bytes::copy_from_slice(raw.get().as_bytes()));
                    ev.json_data = true;
                }
            }
        }
        _ => {}
    }
    ev.validate()?;
    Ok(ev)
}

/// `application/json`, `text/json`, and any `*/*+json`.
pub fn is_json_media_type(ct: &str) -> bool {
    let mt = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mt == "application/json" || mt == "text/json" || mt.ends_with("+json")
}

fn is_text_media_type(ct: &str) -> bool {
    let mt = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mt.starts_with("text/") || mt.ends_with("+xml") || mt == "application/xml"
}

// ---- attribute checks -----------------------------------------------------

/// Names MUST be lowercase ASCII letters or digits, at least one
/// character, and not `data`. (Over 20 characters is a SHOULD NOT: accepted.)
fn check_name(name: &str) -> Result<(), EventError> {
    if name.is_empty() {
        return Err(EventError::new(name, "attribute names must not be empty"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(EventError::new(
            name,
            "attribute names must be lowercase ASCII letters or digits",
        ));
    }
    if name == "data" {
        return Err(EventError::new(name, "the name data is reserved"));
    }
    Ok(())
}

fn is_unreserved_or_delim(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=".contains(&c)
}

/// RFC 3986 URI-reference (character set, percent-escapes, the scheme
/// when there is one, and no ':' in a relative reference's first segment).
pub fn check_uri_reference(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must be a non-empty URI-reference".into());
    }
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let ok = b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if !ok {
                return Err(format!("bad percent-escape at byte {i}"));
            }
            i += 3;
            continue;
        }
        if !is_unreserved_or_delim(c) {
            return Err(format!(
                "character {:?} is not allowed in a URI",
                char::from(c)
            ));
        }
        i += 1;
    }
    if s.matches('#').count() > 1 {
        return Err("more than one '#'".into());
    }
    let first = s.split(['/', '?', '#']).next().unwrap_or("");
    if let Some((scheme, _)) = first.split_once(':') {
        if !valid_scheme(scheme) {
            return Err(format!("invalid scheme {scheme:?}"));
        }
    }
    Ok(())
}

/// An absolute URI: a URI-reference with a scheme.
pub fn check_uri(s: &str) -> Result<(), String> {
    check_uri_reference(s).map_err(|e| e.replace("URI-reference", "URI"))?;
    let first = s.split(['/', '?', '#']).next().unwrap_or("");
    match first.split_once(':') {
        Some((scheme, _)) if valid_scheme(scheme) => Ok(()),
        _ => Err("must be an absolute URI (with a scheme)".into()),
    }
}

fn valid_scheme(s: &str) -> bool {
    let mut it = s.bytes();
    it.next().is_some_and(|c| c.is_ascii_alphabetic())
        && it.all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(&c))
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// RFC 2046 / RFC 9110 media type: `type/subtype *( ";" name=value )`.
pub fn check_media_type(s: &str) -> Result<(), String> {
    let mut parts = s.split(';');
    let essence = parts.next().unwrap_or("").trim();
    let Some((t, st)) = essence.split_once('/') else {
        return Err(format!("{s:?} is not a media type (type/subtype)"));
    };
    if t.is_empty() || st.is_empty() || !t.bytes().all(is_tchar) || !st.bytes().all(is_tchar) {
        return Err(format!("{s:?} is not a media type (type/subtype)"));
    }
    for p in parts {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let Some((k, v)) = p.split_once('=') else {
            return Err(format!("parameter {p:?} has no value"));
        };
        let quoted = v.len() >= 2 && v.starts_with('"') && v.ends_with('"');
        if k.is_empty()
            || !k.bytes().all(is_tchar)
            || !(quoted || (!v.is_empty() && v.bytes().all(is_tchar)))
        {
            return Err(format!("malformed parameter {p:?}"));
        }
    }
    Ok(())
}

/// RFC 3339 `date-time`, with ranges checked (leap years, leap second).
pub fn check_rfc3339(s: &str) -> Result<(), String> {
    let bad = || format!("{s:?} is not an RFC 3339 timestamp");
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| -> Option<u32> {
        let part = b.get(from..from + n)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    let (Some(year), Some(month), Some(day)) = (digits(0, 4), digits(5, 2), digits(8, 2)) else {
        return Err(bad());
    };
    if !(sep(4, b'-') && sep(7, b'-') && (sep(10, b'T') || sep(10, b't'))) {
        return Err(bad());
    }
    let (Some(h), Some(m), Some(sec)) = (digits(11, 2), digits(14, 2), digits(17, 2)) else {
        return Err(bad());
    };
    if !(sep(13, b':') && sep(16, b':')) {
        return Err(bad());
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if day == 0 || day > days || h > 23 || m > 59 || sec > 60 {
        return Err(bad());
    }
    let mut i = 19;
    if sep(i, b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
    }
    match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => Ok(()),
        Some(b'+' | b'-') if i + 6 == b.len() => {
            let (Some(oh), Some(om)) = (digits(i + 1, 2), digits(i + 4, 2)) else {
                return Err(bad());
            };
            if sep(i + 3, b':') && oh <= 23 && om <= 59 {
                Ok(())
            } else {
                Err(bad())
            }
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests;
