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
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::resource::{
        Access, AccessRule, Protocol, RetryOn, ValueMatch, ACCESS_EXAMPLE, EXAMPLE,
    };

    fn err(text: &str) -> String {
        parse_documents(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_the_issue_example() {
        let rs = parse_documents(EXAMPLE).unwrap();
        assert_eq!(rs.len(), 2);
        let Resource::Service(s) = &rs[0] else {
            panic!("{rs:?}")
        };
        assert_eq!(s.name, "api");
        assert_eq!(s.protocol, Protocol::Http);
        assert_eq!(rs[0].kind_name(), "service/api");
        let Resource::Route(r) = &rs[1] else {
            panic!("{rs:?}")
        };
        assert_eq!(rs[1].kind_name(), "route/api-canary");
        assert_eq!(rs[1].name(), "api-canary");
        assert_eq!(r.service, "api");
        assert_eq!(r.rules.len(), 2);
        let canary = &r.rules[0];
        let m = canary.matches.as_ref().unwrap();
        assert_eq!(m.headers["x-canary"], ValueMatch::Exact("true".into()));
        assert_eq!(canary.backends.len(), 1);
        assert_eq!(canary.backends[0].subset["version"], "v2");
        assert_eq!(canary.backends[0].weight, 1);
        let main = &r.rules[1];
        assert_eq!(
            main.matches.as_ref().unwrap().path_prefix.as_deref(),
            Some("/")
        );
        assert_eq!(main.timeout, Some(Duration::from_secs(2)));
        let retries = main.retries.as_ref().unwrap();
        assert_eq!(retries.attempts, 2);
        assert_eq!(retries.per_try_timeout, Some(Duration::from_millis(500)));
        assert_eq!(
            retries.on,
            [RetryOn::ConnectFailure, RetryOn::Reset, RetryOn::Status5xx]
        );
        let weights: Vec<u32> = main.backends.iter().map(|b| b.weight).collect();
        assert_eq!(weights, [90, 10]);
    }

    #[test]
    fn api_version_is_optional_and_checked() {
        let with = format!("apiVersion: coremesh/v1\n{EXAMPLE}");
        assert_eq!(
            parse_documents(&with).unwrap(),
            parse_documents(EXAMPLE).unwrap()
        );
        assert_eq!(
            err("apiVersion: coremesh/v2\nkind: Service\nname: api\n"),
            "document 1: apiVersion: \"coremesh/v2\" is not supported; use `apiVersion: coremesh/v1` or leave it out"
        );
    }

    #[test]
    fn empty_documents_are_skipped_but_counted() {
        assert_eq!(parse_documents("").unwrap(), []);
        assert_eq!(parse_documents("# nothing\n").unwrap(), []);
        let text = "---\n# empty\n---\nkind: Service\nname: a\n---\n---\nkind: Service\nname: B\n";
        assert_eq!(
            err(text),
            "document 4 (service/B): name: \"B\" is not a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit"
        );
        let text = "---\nkind: Service\nname: a\n---\n\n---\nkind: Service\nname: b\n";
        let names: Vec<_> = parse_documents(text)
            .unwrap()
            .iter()
            .map(Resource::kind_name)
            .collect();
        assert_eq!(names, ["service/a", "service/b"]);
    }

    #[test]
    fn kind_is_required_and_known() {
        assert_eq!(
            err("name: api\n"),
            "document 1: kind: missing; expected Service, Route, AccessPolicy, Resilience or MeshConfig"
        );
        assert_eq!(
            err("kind: Service\nname: a\n---\nkind: Gateway\nname: g\n"),
            "document 2: kind: unknown kind \"Gateway\"; expected Service, Route, AccessPolicy, Resilience or MeshConfig"
        );
        assert_eq!(
            err("- kind: Service\n"),
            "document 1: expected a mapping with `kind:` Service, Route, AccessPolicy, Resilience or MeshConfig, found a sequence"
        );
    }

    #[test]
    fn syntax_errors_give_document_and_position() {
        let e =
            parse_documents("kind: Service\nname: a\n---\nkind: Route\nname: [x\n").unwrap_err();
        assert_eq!(e.document, Some(2));
        let (line, _col) = e.location.unwrap();
        assert!(line >= 5, "{e}");
        assert!(e.to_string().starts_with("document 2 at line "), "{e}");
    }

    #[test]
    fn type_errors_give_field_path_and_position() {
        let text =
            "kind: Route\nname: r\nservice: api\nrules:\n  - backends:\n      - weight: lots\n";
        let e = parse_documents(text).unwrap_err();
        assert_eq!(e.location.map(|l| l.0), Some(6), "{e}");
        let s = e.to_string();
        assert!(s.starts_with("document 1 (route/r) at line 6:"), "{s}");
        assert!(
            s.contains("rules[0].backends[0].weight: invalid type"),
            "{s}"
        );

        let s = err("kind: Service\nname: api\nport: 80\n");
        assert!(s.starts_with("document 1 (service/api)"), "{s}");
        assert!(s.contains("unknown field `port`"), "{s}");

        let s = err("kind: Route\nname: r\nservice: api\n");
        assert!(s.contains("missing field `rules`"), "{s}");

        let s = err(
            "kind: Route\nname: r\nservice: api\nrules:\n  - timeout: 2 s\n    backends: [{}]\n",
        );
        // Custom errors are placed at the enclosing mapping.
        assert!(s.contains("rules[0]: \"2 s\": unknown unit"), "{s}");
    }

    #[test]
    fn parses_the_access_policy_example() {
        let rs = parse_documents(ACCESS_EXAMPLE).unwrap();
        assert_eq!(rs.len(), 3);
        let Resource::AccessPolicy(p) = &rs[1] else {
            panic!("{rs:?}")
        };
        assert_eq!(rs[1].kind_name(), "accesspolicy/api-access");
        assert_eq!(p.service, "api");
        assert_eq!(p.default, Access::Deny);
        assert_eq!(
            p.rules,
            [AccessRule {
                from: vec!["web".into()],
                methods: vec!["GET".into(), "POST".into()],
                path: None,
                path_prefix: Some("/v1/".into()),
            }]
        );
        let Resource::MeshConfig(m) = &rs[2] else {
            panic!("{rs:?}")
        };
        assert_eq!(rs[2].kind_name(), "meshconfig/mesh");
        assert_eq!(m.default_access, Access::Deny);

        // Defaults: a policy denies what no rule allows; the mesh allows.
        let rs = parse_documents(
            "kind: AccessPolicy\nname: p\nservice: api\n---\nkind: MeshConfig\nname: mesh\n",
        )
        .unwrap();
        let Resource::AccessPolicy(p) = &rs[0] else {
            panic!("{rs:?}")
        };
        assert_eq!((p.default, p.rules.len()), (Access::Deny, 0));
        let Resource::MeshConfig(m) = &rs[1] else {
            panic!("{rs:?}")
        };
        assert_eq!(m.default_access, Access::Allow);

        let yaml = to_yaml(&parse_documents(ACCESS_EXAMPLE).unwrap());
        assert!(yaml.contains("kind: AccessPolicy\n"), "{yaml}");
        assert!(yaml.contains("pathPrefix: /v1/\n"), "{yaml}");
        assert!(yaml.contains("defaultAccess: deny\n"), "{yaml}");
        assert_eq!(
            parse_documents(&yaml).unwrap(),
            parse_documents(ACCESS_EXAMPLE).unwrap()
        );
    }

    #[test]
    fn to_yaml_round_trips() {
        let rs = parse_documents(EXAMPLE).unwrap();
        let yaml = to_yaml(&rs);
        assert!(
            yaml.starts_with("apiVersion: coremesh/v1\nkind: Service\nname: api\n"),
            "{yaml}"
        );
        assert!(
            yaml.contains("---\napiVersion: coremesh/v1\nkind: Route\n"),
            "{yaml}"
        );
        assert_eq!(parse_documents(&yaml).unwrap(), rs);
        assert_eq!(to_yaml(&[]), "");
    }
}
