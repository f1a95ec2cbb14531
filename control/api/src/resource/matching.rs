//! What a Route rule's `match` compares: conditions on header and query
//! parameter values ([`ValueMatch`]), the regular expressions of
//! `pathRegex` and `{ regex: ... }` ([`compile_regex`], the one place both
//! control and the proxy compile them), and their validation.
//!
//! Control validates every regular expression with [`compile_regex`]
//! before it accepts a Route, and the proxy compiles the same expressions
//! with the same function when it applies a snapshot, so a Route control
//! accepted never fails to compile on a proxy built with the same
//! coremesh-api (a proxy NACKs one that does).

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Match, Reason};

/// Largest compiled program of one regular expression, in bytes
/// ([`regex::bytes::RegexBuilder::size_limit`]). The `regex` crate's default
/// is 10 MiB; routes need far less, and a proxy holds hundreds of them,
/// one set per shard. Unicode classes are the big ones (about 50 KB per
/// `\w`): `\w{20}` fits, `\w{30}` does not; write `[a-zA-Z0-9_]` or
/// `(?-u:\w)` where ASCII will do. Ordinary route patterns take a few KB.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Largest lazy-DFA cache of one compiled regular expression, in bytes
/// ([`regex::bytes::RegexBuilder::dfa_size_limit`]); past it the regex
/// crate clears the cache and carries on (slower, never wrong).
pub const REGEX_DFA_SIZE_LIMIT: usize = 1 << 20;

/// Longest regular expression, in bytes, as written.
pub const MAX_REGEX_LEN: usize = 1024;

/// Why a `pathRegex` or `{ regex: ... }` was refused by [`compile_regex`].
/// The message is the reason, without the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegexError {
    #[error("empty regular expression")]
    Empty,
    #[error("regular expression of {len} bytes; at most {MAX_REGEX_LEN}")]
    TooLong { len: usize },
    /// Over [`REGEX_SIZE_LIMIT`] once compiled.
    #[error("{pattern:?} compiles to more than {limit} bytes; simplify it (ASCII classes such as [a-z0-9] instead of \\w are much smaller)")]
    TooBig {
        pattern: String,
        limit: usize,
        #[source]
        source: regex::Error,
    },
    /// Not valid syntax; `detail` is the gist of the `regex` crate's
    /// message (its last line; the whole message, which spans lines with a
    /// caret under the error, is the source's).
    #[error("{pattern:?} is not a valid regular expression: {detail}")]
    Invalid {
        pattern: String,
        detail: String,
        #[source]
        source: regex::Error,
    },
}

/// Compiles a `pathRegex` or `{ regex: ... }` the way every coremesh
/// component must: the `regex` crate's syntax, over bytes (what the proxy
/// holds), anchored at both ends (`\A(?:...)\z`: the whole path or value
/// must match), with [`REGEX_SIZE_LIMIT`] and [`REGEX_DFA_SIZE_LIMIT`].
/// The error is the reason, without the field.
///
/// A compiled `Regex` keeps a pool of search caches; a proxy should give
/// each shard its own clone (a clone starts its own pool), so that shards
/// never contend for one.
pub fn compile_regex(pattern: &str) -> Result<regex::bytes::Regex, RegexError> {
    if pattern.is_empty() {
        return Err(RegexError::Empty);
    }
    if pattern.len() > MAX_REGEX_LEN {
        return Err(RegexError::TooLong { len: pattern.len() });
    }
    let build = |p: &str| {
        regex::bytes::RegexBuilder::new(p)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
            .build()
    };
    let why = |source: regex::Error| {
        let pattern = pattern.to_string();
        match &source {
            regex::Error::CompiledTooBig(limit) => RegexError::TooBig {
                pattern,
                limit: *limit,
                source,
            },
            // The parser's message spans lines, with a caret under the error.
            regex::Error::Syntax(msg) => RegexError::Invalid {
                pattern,
                detail: msg
                    .lines()
                    .last()
                    .unwrap_or("syntax error")
                    .trim()
                    .to_string(),
                source,
            },
            other => RegexError::Invalid {
                pattern,
                detail: other.to_string(),
                source,
            },
        }
    };
    // On its own first: `a)|(b` is invalid, but `\A(?:a)|(b)\z` would
    // compile and match something else.
    build(pattern).map_err(why)?;
    build(&format!(r"\A(?:{pattern})\z")).map_err(why)
}

/// A condition on a header or query parameter value.
///
/// In YAML (and TOML, JSON): a plain string is [`ValueMatch::Exact`],
/// `{ regex: "..." }` is [`ValueMatch::Regex`], `{ present: true }` or
/// `{ present: false }` is [`ValueMatch::Present`]. Exact values serialize
/// as plain strings, as they always have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    /// The value equals this, byte for byte (case-sensitive). An unquoted
    /// YAML `true` or `42` is read as the text `"true"` or `"42"`.
    Exact(String),
    /// The whole value matches this regular expression ([`compile_regex`]).
    Regex(String),
    /// `true`: present, whatever its value (also empty); `false`: absent.
    Present(bool),
}

impl Serialize for ValueMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ValueMatch::Exact(v) => s.serialize_str(v),
            ValueMatch::Regex(r) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("regex", r)?;
                m.end()
            }
            ValueMatch::Present(p) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("present", p)?;
                m.end()
            }
        }
    }
}

/// The mapping form, so that unknown keys and wrong types get serde's own
/// messages (with their positions).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchForm {
    regex: Option<String>,
    present: Option<bool>,
}

impl<'de> Deserialize<'de> for ValueMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ValueMatch;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a value (string), { regex: \"...\" } or { present: true|false }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ValueMatch, E> {
                Ok(ValueMatch::Exact(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<ValueMatch, E> {
                Ok(ValueMatch::Exact(v))
            }

            // `x-canary: true` unquoted has always meant the text "true".
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ValueMatch, E> {
                Ok(ValueMatch::Exact(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ValueMatch, E> {
                Ok(ValueMatch::Exact(v.to_string()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ValueMatch, E> {
                Ok(ValueMatch::Exact(v.to_string()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ValueMatch, A::Error> {
                let form = MatchForm::deserialize(de::value::MapAccessDeserializer::new(map))?;
                match (form.regex, form.present) {
                    (Some(r), None) => Ok(ValueMatch::Regex(r)),
                    (None, Some(p)) => Ok(ValueMatch::Present(p)),
                    (Some(_), Some(_)) => Err(de::Error::custom(
                        "both regex and present; give one of them",
                    )),
                    (None, None) => Err(de::Error::custom(
                        "empty mapping; give a value, { regex: \"...\" } or { present: true|false }",
                    )),
                }
            }
        }
        d.deserialize_any(V)
    }
}

use super::syntax::Invalid;

/// Why an exact header or query value (or a query parameter name) can
/// never match what a client sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("the value contains a control character")]
    ControlCharacter,
    #[error("{0:?} cannot appear in a query as sent: no spaces, control characters, '&' or '#' (write them percent-encoded, as clients send them)")]
    NotInQuery(String),
}

/// Checks a rule's `match` (field paths relative to it): at most one of
/// the path conditions, paths starting with `/`, `pathRegex` and every
/// `{ regex }` compiling ([`compile_regex`]), header names that are HTTP
/// tokens, query names and exact values that can appear in a query as
/// sent, uppercase methods.
pub(super) fn check_match(m: &Match) -> Result<(), Invalid> {
    let paths = [
        ("path", m.path.is_some()),
        ("pathPrefix", m.path_prefix.is_some()),
        ("pathRegex", m.path_regex.is_some()),
        ("grpc", m.grpc.is_some()),
    ];
    if paths.iter().filter(|(_, set)| *set).count() > 1 {
        let (last, _) = paths.iter().rev().find(|(_, set)| *set).expect("two set");
        return Err((
            last.to_string(),
            "set together with another path condition; give one of path (exact), pathPrefix, pathRegex and grpc".into(),
        ));
    }
    if let Some(g) = &m.grpc {
        let ident = |s: &str| {
            s.split('.').all(|part| {
                part.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
        };
        if !ident(&g.service) {
            return Err((
                "grpc.service".to_string(),
                format!("{:?} is not a gRPC service name (package.Service: letters, digits and _, dot-separated)", g.service).into(),
            ));
        }
        if let Some(method) = &g.method {
            if method.contains('.') || !ident(method) {
                return Err((
                    "grpc.method".to_string(),
                    format!("{method:?} is not a gRPC method name (letters, digits and _)").into(),
                ));
            }
        }
    }
    super::syntax::check_paths(&m.path, &m.path_prefix)?;
    if let Some(re) = &m.path_regex {
        compile_regex(re).map_err(|r| ("pathRegex".to_string(), r.into()))?;
    }
    for (name, value) in &m.headers {
        let field = format!("headers.{name}");
        if !super::syntax::is_token(name) {
            return Err((
                field,
                format!(
                    "{name:?} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)"
                )
                .into(),
            ));
        }
        check_value(value, header_value).map_err(|r| (field, r))?;
    }
    for (name, value) in &m.query {
        let field = format!("query.{name}");
        if name.is_empty() {
            return Err((field, "empty parameter name".into()));
        }
        if name.contains('=') {
            return Err((field, format!("{name:?} contains '='").into()));
        }
        query_text(name).map_err(|r| (field.clone(), r.into()))?;
        check_value(value, query_text).map_err(|r| (field, r))?;
    }
    super::syntax::check_methods(&m.methods)
}

/// Checks one condition; `exact` checks an exact value.
fn check_value(
    value: &ValueMatch,
    exact: impl Fn(&str) -> Result<(), ValueError>,
) -> Result<(), Reason> {
    match value {
        ValueMatch::Exact(v) => exact(v).map_err(Reason::from),
        ValueMatch::Regex(re) => compile_regex(re).map(drop).map_err(Reason::from),
        ValueMatch::Present(_) => Ok(()),
    }
}

fn header_value(v: &str) -> Result<(), ValueError> {
    if v.bytes().any(|c| c.is_ascii_control() && c != b'\t') {
        return Err(ValueError::ControlCharacter);
    }
    Ok(())
}

/// Names and values are compared as sent, without percent-decoding, so
/// what a client must encode can never match.
fn query_text(v: &str) -> Result<(), ValueError> {
    if v.bytes()
        .any(|c| c.is_ascii_control() || matches!(c, b' ' | b'&' | b'#'))
    {
        return Err(ValueError::NotInQuery(v.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
