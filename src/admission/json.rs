//! The fast path of the admission hot path, in two pieces of JSON plumbing:
//!
//! - [`prune_review`]: a structural scan of the AdmissionReview body that copies out only what
//!   [`super::review`] and the typed views of [`crate::model`] read, and skips the rest
//!   (`managedFields`, env values, probes, `userInfo`, `oldObject`...) without tokenizing it
//!   the way serde does. serde_json then parses a body a fraction of the size. Which fields a
//!   view reads is not written down here: [`Shape::of`] asks the views' own `Deserialize`
//!   impls, so a field added to a view is kept by the scan without further ado.
//! - [`diff`]: a JSON Patch between two serializations of a view, compared as text (equal
//!   subtrees are equal byte ranges, since both come from the same `Serialize` impl), so that
//!   only the values of the operations are built as `Value`s.
//!
//! Both fall back rather than guess: the scan answers `None` for anything unexpected (a key
//! with an escape where keys are matched, a body that is not a well-formed object, the object
//! before its kind) and the caller parses the whole body as before. Skipped values are
//! delimited, not validated: the API server only sends what it has decoded itself.

use std::{collections::HashMap, sync::LazyLock};

use serde::{
    Deserialize,
    de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor},
};
use serde_json::Value;

use super::Target;
use crate::model::{Job, Pod, Trial};

// ---------------------------------------------------------------------------------------------
// Scanning

/// Index of the first byte at or after `i` that is not JSON whitespace.
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\n' | b'\r' | b'\t') {
        i += 1;
    }
    i
}

/// `b[i]` is `"`: the index just after the closing quote.
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut j = i + 1;
    loop {
        // Eight bytes at a time: the lowest flagged byte is the first quote or backslash.
        while let Some(chunk) = b.get(j..j + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            let quote = word ^ (ONES * u64::from(b'"'));
            let backslash = word ^ (ONES * u64::from(b'\\'));
            let found = ((quote.wrapping_sub(ONES) & !quote) | (backslash.wrapping_sub(ONES) & !backslash)) & HIGH;
            if found != 0 {
                j += (found.trailing_zeros() / 8) as usize;
                break;
            }
            j += 8;
        }
        while *b.get(j)? != b'"' && b[j] != b'\\' {
            j += 1;
        }
        if b[j] == b'"' {
            return Some(j + 1);
        }
        j += 2; // a backslash and the byte it escapes
    }
}

/// `b[i]` starts a value: the index just after it.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => skip_container(b, i),
        _ => {
            // A number or a literal: up to the next delimiter.
            let rest = &b[i..];
            let len = rest
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))
                .unwrap_or(rest.len());
            (len > 0).then_some(i + len)
        }
    }
}

/// `b[i]` is `{` or `[`: the index after the matching `}` or `]`.
fn skip_container(b: &[u8], i: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut j = i;
    while j < b.len() {
        match b[j] {
            b'"' => {
                j = skip_string(b, j)?;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(j + 1);
                }
            }
            _ => {}
        }
        j += 1;
    }
    None
}

/// Iterates over the members of the object starting at `b[i]` (`{`): calls `member` with the
/// raw key (without quotes) and the index of its value, which returns the index after the value.
/// Returns the index after the object.
fn members<'b>(
    b: &'b [u8],
    i: usize,
    mut member: impl FnMut(&'b [u8], usize) -> Option<usize>,
) -> Option<usize> {
    debug_assert_eq!(b[i], b'{');
    let mut j = skip_ws(b, i + 1);
    if *b.get(j)? == b'}' {
        return Some(j + 1);
    }
    loop {
        if *b.get(j)? != b'"' {
            return None;
        }
        let end = skip_string(b, j)?;
        let key = &b[j + 1..end - 1];
        j = skip_ws(b, end);
        if *b.get(j)? != b':' {
            return None;
        }
        j = skip_ws(b, j + 1);
        j = skip_ws(b, member(key, j)?);
        match *b.get(j)? {
            b',' => j = skip_ws(b, j + 1),
            b'}' => return Some(j + 1),
            _ => return None,
        }
    }
}

/// Iterates over the elements of the array starting at `b[i]` (`[`), like [`members`].
fn elements(b: &[u8], i: usize, mut element: impl FnMut(usize) -> Option<usize>) -> Option<usize> {
    debug_assert_eq!(b[i], b'[');
    let mut j = skip_ws(b, i + 1);
    if *b.get(j)? == b']' {
        return Some(j + 1);
    }
    loop {
        j = skip_ws(b, element(j)?);
        match *b.get(j)? {
            b',' => j = skip_ws(b, j + 1),
            b']' => return Some(j + 1),
            _ => return None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shapes: what a view reads, asked from its Deserialize impl

/// The part of a JSON value a type reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Shape {
    /// Everything (strings, maps, flattened structs, anything the probe cannot see into).
    Any,
    /// Nothing (`IgnoredAny`).
    Skip,
    /// These members of an object; the others are skipped.
    Object(Vec<(&'static str, Shape)>),
    /// Every element, each of this shape.
    Array(Box<Shape>),
}

impl Shape {
    /// The shape `T` deserializes, found by running its `Deserialize` impl against a probe
    /// that offers every field a struct names (and one element per sequence). `Any` when the
    /// probe cannot tell.
    pub fn of<T: for<'de> Deserialize<'de>>() -> Shape {
        let mut shape = Shape::Any;
        match T::deserialize(Probe { out: &mut shape, depth: 0 }) {
            Ok(_) => shape,
            Err(_) => Shape::Any,
        }
    }

    fn member(&self, key: &[u8]) -> Option<&Shape> {
        match self {
            Shape::Object(fields) => fields.iter().find(|(name, _)| name.as_bytes() == key).map(|(_, s)| s),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct ProbeError(String);

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProbeError {}

impl de::Error for ProbeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        ProbeError(msg.to_string())
    }
}

const MAX_DEPTH: usize = 24;

struct Probe<'a> {
    out: &'a mut Shape,
    depth: usize,
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = ProbeError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeError> {
        Err(de::Error::custom("untyped"))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        *self.out = Shape::Any;
        v.visit_bool(false)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        *self.out = Shape::Any;
        v.visit_i64(0)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        *self.out = Shape::Any;
        v.visit_u64(0)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        *self.out = Shape::Any;
        v.visit_f64(0.0)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        *self.out = Shape::Any;
        v.visit_str("")
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        // `null` is kept as it is; otherwise the value has the inner type's shape.
        v.visit_some(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom("too deep"));
        }
        let mut element = Shape::Any;
        let value = v.visit_seq(ProbeSeq { element: &mut element, depth: self.depth + 1, done: false })?;
        *self.out = Shape::Array(Box::new(element));
        Ok(value)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        // Maps (labels) and flattened structs: kept whole.
        *self.out = Shape::Any;
        v.visit_map(de::value::MapDeserializer::<std::iter::Empty<((), ())>, ProbeError>::new(std::iter::empty()))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, ProbeError> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom("too deep"));
        }
        let mut shapes: Vec<(&'static str, Shape)> = fields.iter().map(|f| (*f, Shape::Any)).collect();
        let value = v.visit_map(ProbeStruct { fields: &mut shapes, next: 0, depth: self.depth + 1 })?;
        *self.out = Shape::Object(shapes);
        Ok(value)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        *self.out = Shape::Skip;
        v.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i128 u8 u16 u32 u128 f32 char bytes byte_buf unit unit_struct newtype_struct
        tuple tuple_struct enum identifier
    }
}

struct ProbeSeq<'a> {
    element: &'a mut Shape,
    depth: usize,
    done: bool,
}

impl<'de> SeqAccess<'de> for ProbeSeq<'_> {
    type Error = ProbeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, ProbeError> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        seed.deserialize(Probe { out: self.element, depth: self.depth }).map(Some)
    }
}

struct ProbeStruct<'a> {
    fields: &'a mut Vec<(&'static str, Shape)>,
    next: usize,
    depth: usize,
}

impl<'de> MapAccess<'de> for ProbeStruct<'_> {
    type Error = ProbeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, ProbeError> {
        let Some((name, _)) = self.fields.get(self.next) else { return Ok(None) };
        let key: de::value::StrDeserializer<ProbeError> = name.into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, ProbeError> {
        let (_, shape) = &mut self.fields[self.next];
        self.next += 1;
        seed.deserialize(Probe { out: shape, depth: self.depth })
    }
}

fn shape_of(target: Target) -> &'static Shape {
    static SHAPES: LazyLock<HashMap<&'static str, Shape>> = LazyLock::new(|| {
        HashMap::from([
            (Target::Pod.name(), Shape::of::<Pod>()),
            (Target::Job.name(), Shape::of::<Job>()),
            (Target::Trial.name(), Shape::of::<Trial>()),
        ])
    });
    &SHAPES[target.name()]
}

// ---------------------------------------------------------------------------------------------
// Pruning

/// Copies the value at `b[i]` into `out`, keeping only what `shape` reads. Returns the index
/// after the value.
fn prune(b: &[u8], i: usize, shape: &Shape, out: &mut Vec<u8>) -> Option<usize> {
    match (shape, b.get(i)?) {
        (Shape::Object(_), b'{') => {
            out.push(b'{');
            let mut first = true;
            let end = members(b, i, |key, j| {
                if key.contains(&b'\\') {
                    return None; // an escaped key could be one we read: parse it all
                }
                match shape.member(key) {
                    Some(Shape::Skip) | None => skip_value(b, j),
                    Some(inner) => {
                        if !std::mem::take(&mut first) {
                            out.push(b',');
                        }
                        out.push(b'"');
                        out.extend_from_slice(key);
                        out.extend_from_slice(b"\":");
                        prune(b, j, inner, out)
                    }
                }
            })?;
            out.push(b'}');
            Some(end)
        }
        (Shape::Array(element), b'[') => {
            out.push(b'[');
            let mut first = true;
            let end = elements(b, i, |j| {
                if !std::mem::take(&mut first) {
                    out.push(b',');
                }
                prune(b, j, element, out)
            })?;
            out.push(b']');
            Some(end)
        }
        // Any, or not the type the view expects (`null`, a string where an object belongs...):
        // copied as it is, so that serde decides exactly as it would on the whole body.
        _ => {
            let end = skip_value(b, i)?;
            out.extend_from_slice(&b[i..end]);
            Some(end)
        }
    }
}

/// The kind and operation of a request, as far as the scan has seen them.
#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(default, borrow)]
    group: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    version: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    kind: std::borrow::Cow<'a, str>,
}

/// The AdmissionReview body reduced to what [`super::review`] reads: `apiVersion` and, of the
/// request, `uid`, `kind`, `namespace`, `operation` and the object pruned to its view's shape
/// (the object is left out when its kind is not handled or the operation is not CREATE: it is
/// not read then). `None` when the body is not what a Kubernetes API server sends (not an
/// object, the object before the kind, escaped keys...): parse the whole body instead.
pub fn prune_review(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len().min(8192));
    let start = skip_ws(body, 0);
    if body.get(start) != Some(&b'{') {
        return None;
    }
    out.push(b'{');
    let mut first = true;
    let end = members(body, start, |key, j| {
        if key.contains(&b'\\') {
            return None;
        }
        match key {
            b"apiVersion" | b"request" => {
                if !std::mem::take(&mut first) {
                    out.push(b',');
                }
                out.push(b'"');
                out.extend_from_slice(key);
                out.extend_from_slice(b"\":");
                if key == b"request" { prune_request(body, j, &mut out) } else { prune(body, j, &Shape::Any, &mut out) }
            }
            _ => skip_value(body, j),
        }
    })?;
    out.push(b'}');
    // Nothing but whitespace may follow, as for serde_json.
    (skip_ws(body, end) == body.len()).then_some(out)
}

fn prune_request(b: &[u8], i: usize, out: &mut Vec<u8>) -> Option<usize> {
    if b.get(i) != Some(&b'{') {
        return prune(b, i, &Shape::Any, out);
    }
    out.push(b'{');
    let mut first = true;
    let mut kind: Option<(usize, usize)> = None;
    let mut operation: Option<(usize, usize)> = None;
    let end = members(b, i, |key, j| {
        if key.contains(&b'\\') {
            return None;
        }
        let shape = match key {
            b"uid" | b"namespace" => Shape::Any,
            b"kind" | b"operation" => Shape::Any,
            b"object" => match object_shape(b, kind, operation)? {
                Some(shape) => shape.clone(),
                None => return skip_value(b, j),
            },
            _ => return skip_value(b, j),
        };
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key);
        out.extend_from_slice(b"\":");
        let end = prune(b, j, &shape, out)?;
        match key {
            b"kind" => kind = Some((j, end)),
            b"operation" => operation = Some((j, end)),
            _ => {}
        }
        Some(end)
    })?;
    out.push(b'}');
    Some(end)
}

/// How to copy the object: `Some(None)` to leave it out (not read), `None` to give up.
fn object_shape(b: &[u8], kind: Option<(usize, usize)>, operation: Option<(usize, usize)>) -> Option<Option<&'static Shape>> {
    static ANY: Shape = Shape::Any;
    // The object before its kind: no way to know its shape yet; keep it whole.
    let Some((start, end)) = kind else { return Some(Some(&ANY)) };
    let Ok(kind) = serde_json::from_slice::<Kind>(&b[start..end]) else { return Some(Some(&ANY)) };
    let Some(target) = Target::of(&kind.group, &kind.version, &kind.kind) else { return Some(None) };
    if let Some((start, end)) = operation
        && &b[start..end] != b"\"CREATE\""
    {
        return Some(None);
    }
    Some(Some(shape_of(target)))
}

// ---------------------------------------------------------------------------------------------
// Diff

/// A JSON Patch turning `before` into `after`, both compact JSON texts written by serde_json
/// from values of one type. Objects are compared member by member, arrays element by element
/// (extra elements are added or removed at the end); a subtree whose text is equal on both
/// sides is not looked into. `None` when either text is not JSON (never, for serde_json's).
#[cfg(test)]
pub fn diff(before: &[u8], after: &[u8]) -> Option<json_patch::Patch> {
    let mut ops = Vec::new();
    diff_into("", before, after, &mut ops)?;
    Some(json_patch::Patch(ops))
}

/// Like [`diff`] for the value at JSON pointer `prefix`, appending to `ops`.
pub fn diff_into(prefix: &str, before: &[u8], after: &[u8], ops: &mut Vec<json_patch::PatchOperation>) -> Option<()> {
    let mut path = prefix.to_string();
    let (b, a) = (skip_ws(before, 0), skip_ws(after, 0));
    diff_at(before, value_at(before, b)?, after, value_at(after, a)?, &mut path, ops)
}

/// Byte range of the value starting at `i`.
fn value_at(b: &[u8], i: usize) -> Option<(usize, usize)> {
    Some((i, skip_value(b, i)?))
}

fn parse(b: &[u8], (start, end): (usize, usize)) -> Option<Value> {
    serde_json::from_slice(&b[start..end]).ok()
}

fn pointer(path: &str) -> Option<json_patch::jsonptr::PointerBuf> {
    json_patch::jsonptr::PointerBuf::parse(path.to_string()).ok()
}

fn push_token(path: &mut String, token: &str) {
    path.push('/');
    for c in token.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

fn key_text(raw: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    if raw.contains(&b'\\') {
        // Rare (keys with quotes or control characters): let serde_json unescape it.
        let mut quoted = Vec::with_capacity(raw.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(raw);
        quoted.push(b'"');
        serde_json::from_slice::<String>(&quoted).ok().map(std::borrow::Cow::Owned)
    } else {
        std::str::from_utf8(raw).ok().map(std::borrow::Cow::Borrowed)
    }
}

fn diff_at(
    b: &[u8],
    (bs, be): (usize, usize),
    a: &[u8],
    (as_, ae): (usize, usize),
    path: &mut String,
    ops: &mut Vec<json_patch::PatchOperation>,
) -> Option<()> {
    use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation};
    if b[bs..be] == a[as_..ae] {
        return Some(());
    }
    match (b[bs], a[as_]) {
        (b'{', b'{') => {
            let mut before: Vec<(&[u8], (usize, usize))> = Vec::new();
            members(b, bs, |key, j| {
                let end = skip_value(b, j)?;
                before.push((key, (j, end)));
                Some(end)
            })?;
            let mut after: Vec<(&[u8], (usize, usize))> = Vec::new();
            members(a, as_, |key, j| {
                let end = skip_value(a, j)?;
                after.push((key, (j, end)));
                Some(end)
            })?;
            let len = path.len();
            for (key, _) in &before {
                if !after.iter().any(|(k, _)| k == key) {
                    push_token(path, &key_text(key)?);
                    ops.push(PatchOperation::Remove(RemoveOperation { path: pointer(path)? }));
                    path.truncate(len);
                }
            }
            for (key, range) in &after {
                push_token(path, &key_text(key)?);
                match before.iter().find(|(k, _)| k == key) {
                    Some((_, before_range)) => diff_at(b, *before_range, a, *range, path, ops)?,
                    None => ops.push(PatchOperation::Add(AddOperation { path: pointer(path)?, value: parse(a, *range)? })),
                }
                path.truncate(len);
            }
        }
        (b'[', b'[') => {
            let mut before = Vec::new();
            elements(b, bs, |j| {
                let end = skip_value(b, j)?;
                before.push((j, end));
                Some(end)
            })?;
            let mut after = Vec::new();
            elements(a, as_, |j| {
                let end = skip_value(a, j)?;
                after.push((j, end));
                Some(end)
            })?;
            let len = path.len();
            for (index, (before_range, range)) in before.iter().zip(&after).enumerate() {
                push_token(path, &index.to_string());
                diff_at(b, *before_range, a, *range, path, ops)?;
                path.truncate(len);
            }
            for (index, range) in after.iter().enumerate().skip(before.len()) {
                push_token(path, &index.to_string());
                ops.push(PatchOperation::Add(AddOperation { path: pointer(path)?, value: parse(a, *range)? }));
                path.truncate(len);
            }
            for index in (after.len()..before.len()).rev() {
                push_token(path, &index.to_string());
                ops.push(PatchOperation::Remove(RemoveOperation { path: pointer(path)? }));
                path.truncate(len);
            }
        }
        _ => ops.push(PatchOperation::Replace(ReplaceOperation { path: pointer(path)?, value: parse(a, (as_, ae))? })),
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn views_have_shapes() {
        let pod = Shape::of::<Pod>();
        let Shape::Object(fields) = &pod else { panic!("{pod:?}") };
        assert_eq!(fields.iter().map(|(f, _)| *f).collect::<Vec<_>>(), ["metadata", "spec"]);
        let meta = pod.member(b"metadata").unwrap();
        assert!(meta.member(b"labels").is_some());
        assert!(meta.member(b"managedFields").is_none(), "{meta:?}");
        let containers = pod.member(b"spec").unwrap().member(b"containers").unwrap();
        let Shape::Array(container) = containers else { panic!("{containers:?}") };
        assert!(container.member(b"env").is_some());
        assert!(container.member(b"image").is_none());
        for shape in [Shape::of::<Job>(), Shape::of::<Trial>()] {
            assert!(matches!(shape, Shape::Object(_)), "{shape:?}");
        }
    }

    #[test]
    fn skipping_handles_strings_escapes_and_nesting() {
        let text = br#"{"a":"x\"}]{[","b":[1,{"c":"\\"}],"d":-1.5e3,"e":true} "#;
        assert_eq!(skip_value(text, 0), Some(text.len() - 1));
        assert_eq!(skip_value(br#""unterminated"#, 0), None);
        assert_eq!(skip_value(br#"{"a":[1,2}"#, 0), None);
        // Escapes and strings across block boundaries, runs of backslashes.
        for pad in 0..70 {
            let text = format!(r#"{{"{}":"a\\\"}}{{[","b\\":[{{}}],"c":"\\\\"}},1"#, "x".repeat(pad));
            let value: serde_json::Value = serde_json::from_str(&text[..text.len() - 2]).unwrap();
            assert!(value.is_object());
            assert_eq!(skip_value(text.as_bytes(), 0), Some(text.len() - 2), "{text}");
        }
    }

    #[test]
    fn pruned_review_keeps_what_the_views_read() {
        let body = serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "userInfo": {"username": "x"}, "namespace": "ns", "operation": "CREATE",
                "object": {
                    "metadata": {"name": "p", "labels": {"a": "b"}, "managedFields": [{"manager": "m"}]},
                    "spec": {"containers": [{"name": "c", "image": "i", "env": [{"name": "E", "value": "v"}]}]}
                },
                "oldObject": null
            }
        }))
        .unwrap();
        let pruned: Value = serde_json::from_slice(&prune_review(&body).unwrap()).unwrap();
        assert_eq!(
            pruned,
            json!({
                "apiVersion": "admission.k8s.io/v1",
                "request": {
                    "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "namespace": "ns",
                    "operation": "CREATE",
                    "object": {
                        "metadata": {"name": "p", "labels": {"a": "b"}},
                        "spec": {"containers": [{"name": "c", "env": [{"name": "E"}]}]}
                    }
                }
            })
        );
    }

    #[test]
    fn objects_not_read_are_left_out_and_odd_bodies_are_not_pruned() {
        // In the API server's order: kind and operation before the object.
        let review = |kind: Value, operation: &str| {
            format!(r#"{{"request":{{"uid":"u","kind":{kind},"operation":"{operation}","object":{{"metadata":{{}}}}}}}}"#)
                .into_bytes()
        };
        let config_map = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
        let pod = json!({"group": "", "version": "v1", "kind": "Pod"});
        for body in [review(config_map, "CREATE"), review(pod.clone(), "UPDATE")] {
            let pruned: Value = serde_json::from_slice(&prune_review(&body).unwrap()).unwrap();
            assert!(pruned["request"].get("object").is_none(), "{pruned}");
        }
        let kept: Value = serde_json::from_slice(&prune_review(&review(pod, "CREATE")).unwrap()).unwrap();
        assert_eq!(kept["request"]["object"], json!({"metadata": {}}));
        for odd in [&b"[1]"[..], b"{not json", b"{\"request\": {\"u\\u0069d\": 1}}", b"{} x", b""] {
            assert_eq!(prune_review(odd), None, "{}", String::from_utf8_lossy(odd));
        }
    }

    #[test]
    fn object_before_kind_is_kept_whole() {
        let body = br#"{"request":{"object":{"metadata":{"managedFields":[1]}},"kind":{"kind":"Pod","version":"v1"}}}"#;
        let pruned: Value = serde_json::from_slice(&prune_review(body).unwrap()).unwrap();
        assert_eq!(pruned["request"]["object"], json!({"metadata": {"managedFields": [1]}}));
    }

    fn check_diff(before: Value, after: Value) {
        let patch = diff(&serde_json::to_vec(&before).unwrap(), &serde_json::to_vec(&after).unwrap()).unwrap();
        let mut patched = before.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        assert_eq!(patched, after, "{}", serde_json::to_string(&patch).unwrap());
    }

    #[test]
    fn diffs_apply() {
        check_diff(json!({"a": 1}), json!({"a": 1}));
        check_diff(json!({"a": 1, "b": {"c": [1, 2]}}), json!({"b": {"c": [1, 3, 4]}, "d": "x"}));
        check_diff(json!({"l": [1, 2, 3]}), json!({"l": [1]}));
        check_diff(json!({"l": {"x/y~z": "1"}}), json!({"l": {"x/y~z": "2", "q\"k": "v"}}));
        check_diff(json!({"l": [{"n": "a"}]}), json!({"l": "now a string"}));
        check_diff(json!({"s": null}), json!({"s": {"containers": [{"name": "c"}]}}));
        assert!(diff(br#"{"a":1}"#, br#"{"a":1}"#).unwrap().0.is_empty());
    }
}
