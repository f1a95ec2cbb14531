//! Resource files: YAML documents in, validated [`Resource`]s out, and back
//! ([`to_yaml`]).
//!
//! Each document is read twice, in lockstep: first as an untyped YAML value
//! (syntax errors, empty documents, `apiVersion`, `kind`), then as the typed
//! struct straight from the YAML events, so that a type error carries its
//! field path and line:column. The structs deny unknown fields, so the
//! second pass hides `apiVersion` and `kind` from them ([`SkipTopKeys`]).

use serde::de::{self, DeserializeSeed, IgnoredAny, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_norway::Value;

use super::{
    validate, AccessPolicy, MeshConfig, Resilience, Resource, ResourceError, Route, Service,
    API_VERSION,
};

/// The kinds, for error messages.
const EXPECTED: &str = "Service, Route, AccessPolicy, Resilience or MeshConfig";

/// Keys of a document that belong to the envelope, not to the resource.
const ENVELOPE_KEYS: [&str; 2] = ["apiVersion", "kind"];

/// Parses a kubectl-style file: documents separated by `---`, each with
/// `kind` and optionally `apiVersion: coremesh/v1`. Empty documents are
/// skipped. Every resource is [`validate`]d; the first error is returned,
/// naming its document (1-based, counting empty ones).
///
/// Cross-resource rules are [`super::validate_set`]'s job, once the file is
/// merged with what the store holds.
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, ResourceError> {
    let untyped = serde_norway::Deserializer::from_str(text);
    let typed = serde_norway::Deserializer::from_str(text);
    let mut resources = Vec::new();
    for (i, (untyped, typed)) in untyped.zip(typed).enumerate() {
        let document = i + 1;
        let err = |field: &str, reason: String| ResourceError {
            document: Some(document),
            resource: None,
            location: None,
            field: field.to_string(),
            reason: reason.into(),
        };
        let value = Value::deserialize(untyped).map_err(|e| yaml_error(document, None, &e))?;
        let map = match value {
            Value::Null => continue,
            Value::Mapping(map) => map,
            other => {
                return Err(err(
                    "",
                    format!(
                        "expected a mapping with `kind:` {EXPECTED}, found {}",
                        describe(&other)
                    ),
                ))
            }
        };
        match map.get("apiVersion") {
            None => {}
            Some(Value::String(v)) if v == API_VERSION => {}
            Some(other) => {
                return Err(err(
                    "apiVersion",
                    format!(
                        "{} is not supported; use `apiVersion: {API_VERSION}` or leave it out",
                        show(other)
                    ),
                ))
            }
        }
        let kind = match map.get("kind") {
            Some(Value::String(kind)) => kind.as_str(),
            Some(other) => {
                return Err(err(
                    "kind",
                    format!("{} is not a kind; expected {EXPECTED}", show(other)),
                ))
            }
            None => return Err(err("kind", format!("missing; expected {EXPECTED}"))),
        };
        // A Resilience without a name is named after its service.
        let name = match (map.get("name"), kind) {
            (None, "Resilience") => map.get("service"),
            (name, _) => name,
        };
        let kind_name = name
            .and_then(Value::as_str)
            .map(|name| format!("{}/{name}", kind.to_ascii_lowercase()));
        let parsed = match kind {
            "Service" => Service::deserialize(SkipTopKeys(typed)).map(Resource::Service),
            "Route" => Route::deserialize(SkipTopKeys(typed)).map(Resource::Route),
            "AccessPolicy" => {
                AccessPolicy::deserialize(SkipTopKeys(typed)).map(Resource::AccessPolicy)
            }
            "Resilience" => Resilience::deserialize(SkipTopKeys(typed)).map(Resource::Resilience),
            "MeshConfig" => MeshConfig::deserialize(SkipTopKeys(typed)).map(Resource::MeshConfig),
            other => {
                return Err(err(
                    "kind",
                    format!("unknown kind {other:?}; expected {EXPECTED}"),
                ))
            }
        };
        let resource = parsed.map_err(|e| yaml_error(document, kind_name, &e))?;
        validate(&resource).map_err(|mut e| {
            e.document = Some(document);
            e
        })?;
        resources.push(resource);
    }
    Ok(resources)
}

/// The resources as one YAML file that [`parse_documents`] reads back:
/// `apiVersion` and `kind` first, documents separated by `---`.
pub fn to_yaml(resources: &[Resource]) -> String {
    #[derive(Serialize)]
    struct Document<'a> {
        #[serde(rename = "apiVersion")]
        api_version: &'static str,
        #[serde(flatten)]
        resource: &'a Resource,
    }
    let mut out = String::new();
    for (i, resource) in resources.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let doc = Document {
            api_version: API_VERSION,
            resource,
        };
        // Strings, numbers, booleans and string-keyed maps only: this
        // cannot fail.
        let yaml = serde_norway::to_string(&doc).expect("resources serialize to YAML");
        out.push_str(&yaml);
    }
    out
}

/// A syntax or type error from serde_norway, with its position kept apart
/// from the message.
fn yaml_error(document: usize, resource: Option<String>, e: &serde_norway::Error) -> ResourceError {
    let location = e.location().map(|l| (l.line(), l.column()));
    let mut reason = e.to_string();
    if let Some((line, col)) = location {
        let suffix = format!(" at line {line} column {col}");
        if let Some(stripped) = reason.strip_suffix(&suffix) {
            reason = stripped.to_string();
        }
    }
    ResourceError {
        document: Some(document),
        resource,
        location,
        field: String::new(),
        reason: reason.into(),
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a sequence",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A scalar as the operator wrote it, anything else described.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => describe(other).to_string(),
    }
}

/// Deserializes the top-level mapping without its [`ENVELOPE_KEYS`], leaving
/// everything below untouched (so serde_norway still tracks paths and marks).
struct SkipTopKeys<D>(D);

impl<'de, D: de::Deserializer<'de>> de::Deserializer<'de> for SkipTopKeys<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(SkipVisitor(visitor))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(SkipVisitor(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_struct(name, fields, SkipVisitor(visitor))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct enum identifier ignored_any
    }
}

struct SkipVisitor<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for SkipVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(SkipMap(map))
    }
}

struct SkipMap<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for SkipMap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.0.next_key::<String>()? else {
                return Ok(None);
            };
            if ENVELOPE_KEYS.contains(&key.as_str()) {
                self.0.next_value::<IgnoredAny>()?;
                continue;
            }
            return seed.deserialize(key.into_deserializer()).map(Some);
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.0.next_value_seed(seed)
    }
}

#[cfg(test)]
mod tests;
