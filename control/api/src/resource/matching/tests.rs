use std::time::Duration;

use super::*;
use crate::resource::{
    parse_documents, to_yaml, Backoff, Resource, ResourceError, Route, DEFAULT_RETRY_BODY_BYTES,
};

/// A Route for `api` whose only rule is `rule` (YAML lines indented by
/// 4), parsed.
fn route(rule: &str) -> Result<Route, ResourceError> {
    let text = format!("kind: Route\nname: r\nservice: api\nrules:\n  - backends: [{{}}]\n{rule}");
    match parse_documents(&text)?.pop() {
        Some(Resource::Route(r)) => Ok(r),
        other => panic!("{other:?}"),
    }
}

fn matches(rule: &str) -> Match {
    route(rule).unwrap().rules[0].matches.clone().unwrap()
}

fn err(rule: &str) -> String {
    route(rule).unwrap_err().to_string()
}

fn prefix(field: &str) -> String {
    format!("document 1 (route/r): rules[0].match.{field}: ")
}

#[test]
fn path_regex_headers_and_query_parse() {
    let m = matches(
        r#"    match:
      pathRegex: "/v[0-9]+/users/[^/]+"
      headers:
        x-canary: "true"
        x-user: { regex: "u-[0-9]+" }
        x-debug: { present: true }
        x-legacy: { present: false }
      query:
        version: "2"
        id: { regex: "[0-9]+" }
        debug: { present: true }
      methods: [GET]
"#,
    );
    assert_eq!(m.path_regex.as_deref(), Some("/v[0-9]+/users/[^/]+"));
    assert_eq!(m.headers["x-canary"], ValueMatch::Exact("true".into()));
    assert_eq!(m.headers["x-user"], ValueMatch::Regex("u-[0-9]+".into()));
    assert_eq!(m.headers["x-debug"], ValueMatch::Present(true));
    assert_eq!(m.headers["x-legacy"], ValueMatch::Present(false));
    assert_eq!(m.query["version"], ValueMatch::Exact("2".into()));
    assert_eq!(m.query["id"], ValueMatch::Regex("[0-9]+".into()));
    assert_eq!(m.query["debug"], ValueMatch::Present(true));

    // Exact values stay plain strings on the way out; the rest are
    // mappings; YAML and JSON read back the same.
    let json = serde_json::to_value(&m).unwrap();
    assert_eq!(json["headers"]["x-canary"], "true");
    assert_eq!(
        json["headers"]["x-user"],
        serde_json::json!({"regex": "u-[0-9]+"})
    );
    assert_eq!(json["query"]["debug"], serde_json::json!({"present": true}));
    assert_eq!(serde_json::from_value::<Match>(json).unwrap(), m);
    let r = Resource::Route(
        route("    match: { pathRegex: /a, query: { q: { present: false } } }\n").unwrap(),
    );
    let yaml = to_yaml(std::slice::from_ref(&r));
    assert!(yaml.contains("pathRegex: /a\n"), "{yaml}");
    assert_eq!(parse_documents(&yaml).unwrap(), [r]);
}

#[test]
fn unquoted_scalars_are_exact_text() {
    let m = matches("    match: { headers: { x-canary: true, x-version: 2 }, query: { n: -1 } }\n");
    assert_eq!(m.headers["x-canary"], ValueMatch::Exact("true".into()));
    assert_eq!(m.headers["x-version"], ValueMatch::Exact("2".into()));
    assert_eq!(m.query["n"], ValueMatch::Exact("-1".into()));
    let e = err("    match: { headers: { x-version: 1.5 } }\n");
    assert!(e.contains("invalid type: floating point `1.5`"), "{e}");
    assert!(e.contains("expected a value (string)"), "{e}");
}

#[test]
fn value_match_mapping_errors() {
    let e = err("    match: { headers: { x: { regex: a, present: true } } }\n");
    assert!(
        e.contains("both regex and present; give one of them"),
        "{e}"
    );
    let e = err("    match: { headers: { x: {} } }\n");
    assert!(e.contains("empty mapping"), "{e}");
    let e = err("    match: { query: { x: { regx: a } } }\n");
    assert!(
        e.contains("unknown field `regx`, expected `regex` or `present`"),
        "{e}"
    );
    let e = err("    match: { query: { x: { present: maybe } } }\n");
    assert!(e.contains("invalid type"), "{e}");
    let e = err("    match: { headers: { x: [a] } }\n");
    assert!(e.contains("invalid type: sequence"), "{e}");
}

#[test]
fn one_path_condition_at_most() {
    for (rule, last) in [
        ("{ path: /a, pathPrefix: /a }", "pathPrefix"),
        ("{ path: /a, pathRegex: /a }", "pathRegex"),
        ("{ pathPrefix: /a, pathRegex: /a }", "pathRegex"),
        ("{ path: /a, pathPrefix: /a, pathRegex: /a }", "pathRegex"),
    ] {
        assert_eq!(
            err(&format!("    match: {rule}\n")),
            format!(
                "{}set together with another path condition; give one of path (exact), pathPrefix, pathRegex and grpc",
                prefix(last)
            )
        );
    }
}

#[test]
fn regexes_are_checked_where_they_are() {
    assert_eq!(
        err("    match: { pathRegex: \"/a(\" }\n"),
        format!(
            "{}\"/a(\" is not a valid regular expression: error: unclosed group",
            prefix("pathRegex")
        )
    );
    let e = err("    match: { headers: { x-user: { regex: \"[z-a]\" } } }\n");
    assert!(e.starts_with(&prefix("headers.x-user")), "{e}");
    assert!(e.contains("is not a valid regular expression"), "{e}");
    let e = err("    match: { query: { id: { regex: \"\" } } }\n");
    assert_eq!(e, format!("{}empty regular expression", prefix("query.id")));
    let long = "a".repeat(MAX_REGEX_LEN + 1);
    let e = err(&format!("    match: {{ pathRegex: {long} }}\n"));
    assert_eq!(
        e,
        format!(
            "{}regular expression of 1025 bytes; at most 1024",
            prefix("pathRegex")
        )
    );
    let e = err("    match: { pathRegex: \"\\\\w{500}\" }\n");
    assert!(e.starts_with(&prefix("pathRegex")), "{e}");
    assert!(e.contains("compiles to more than 1048576 bytes"), "{e}");
}

#[test]
fn compile_regex_matches_whole_values() {
    let re = compile_regex("/v[0-9]+/users/[^/]+").unwrap();
    assert!(re.is_match(b"/v2/users/7"));
    assert!(!re.is_match(b"/v2/users/7/x"));
    assert!(!re.is_match(b"/x/v2/users/7"));
    // Whole-value match even where leftmost-first would stop early.
    let re = compile_regex("a|ab").unwrap();
    assert!(re.is_match(b"ab") && re.is_match(b"a") && !re.is_match(b"abc"));
    // A pattern that only compiles once wrapped is still refused.
    assert!(compile_regex("a)|(b").is_err());
    // Flags stay inside the group.
    let re = compile_regex("(?i)v1").unwrap();
    assert!(re.is_match(b"V1"));
    // Bytes that are not UTF-8 never panic and never match `.`.
    let re = compile_regex("/.*").unwrap();
    assert!(re.is_match("/é".as_bytes()));
    assert!(!re.is_match(b"/\xff"));
    assert!(compile_regex(r"\w{20}").is_ok());
    assert!(compile_regex(r"\w{30}").is_err());
    assert!(compile_regex(r"(?-u:\w){500}").is_ok());
}

#[test]
fn header_and_query_names_and_values() {
    let e = err("    match: { headers: { \"x y\": { present: true } } }\n");
    assert!(e.starts_with(&prefix("headers.x y")), "{e}");
    assert!(e.contains("not a valid header name"), "{e}");
    let e = err("    match: { headers: { x: \"a\\u0001\" } }\n");
    assert!(e.ends_with("the value contains a control character"), "{e}");
    assert_eq!(
        err("    match: { query: { \"\": a } }\n"),
        format!("{}empty parameter name", prefix("query."))
    );
    assert_eq!(
        err("    match: { query: { \"a=b\": c } }\n"),
        format!("{}\"a=b\" contains '='", prefix("query.a=b"))
    );
    for bad in ["a b", "a&b", "a#b"] {
        let e = err(&format!("    match: {{ query: {{ q: \"{bad}\" }} }}\n"));
        assert!(e.starts_with(&prefix("query.q")), "{e}");
        assert!(
            e.ends_with("(write them percent-encoded, as clients send them)"),
            "{e}"
        );
    }
    // Encoded values are fine: they are compared as sent.
    let m = matches("    match: { query: { q: \"a%20b+c\" } }\n");
    assert_eq!(m.query["q"], ValueMatch::Exact("a%20b+c".into()));
}

#[test]
fn retries_backoff_idempotency_and_body_limit() {
    let r = route("    retries: { attempts: 2 }\n").unwrap();
    let retries = r.rules[0].retries.clone().unwrap();
    assert!(retries.idempotent_only);
    assert_eq!(retries.max_body_bytes, DEFAULT_RETRY_BODY_BYTES);
    assert_eq!(retries.backoff, None);
    let b = retries.backoff_or_default();
    assert_eq!(b.base, Duration::from_millis(25));
    assert_eq!(b.max_or_default(), Duration::from_millis(250));
    // Defaults are left out when serialized (older proxies refuse unknown
    // fields).
    let json = serde_json::to_value(&retries).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"attempts": 2, "on": ["connect-failure", "reset"]})
    );

    let r = route(
        "    retries: { attempts: 2, backoff: { base: 50ms, max: 1s }, idempotentOnly: false, maxBodyBytes: 0 }\n",
    )
    .unwrap();
    let retries = r.rules[0].retries.clone().unwrap();
    assert_eq!(
        retries.backoff,
        Some(Backoff {
            base: Duration::from_millis(50),
            max: Some(Duration::from_secs(1)),
        })
    );
    assert!(!retries.idempotent_only);
    assert_eq!(retries.max_body_bytes, 0);
    let json = serde_json::to_value(&retries).unwrap();
    assert_eq!(
        json["backoff"],
        serde_json::json!({"base": "50ms", "max": "1s"})
    );
    assert_eq!(json["idempotentOnly"], false);
    assert_eq!(
        serde_json::from_value::<crate::resource::Retries>(json).unwrap(),
        retries
    );
    // Only base: max is ten times base.
    let r = route("    retries: { attempts: 1, backoff: { base: 100ms } }\n").unwrap();
    let b = r.rules[0].retries.as_ref().unwrap().backoff_or_default();
    assert_eq!(b.max_or_default(), Duration::from_secs(1));
}

#[test]
fn retries_errors() {
    let p = |f: &str| format!("document 1 (route/r): rules[0].retries.{f}: ");
    assert_eq!(
        err("    retries: { attempts: 1, backoff: { base: 0ms } }\n"),
        format!("{}must be greater than 0", p("backoff.base"))
    );
    assert_eq!(
        err("    retries: { attempts: 1, backoff: { base: 100ms, max: 50ms } }\n"),
        format!("{}50ms is shorter than base (100ms)", p("backoff.max"))
    );
    assert_eq!(
        err("    retries: { attempts: 1, maxBodyBytes: 16777217 }\n"),
        format!(
            "{}16777217 is over the maximum of 16777216 (16 MiB)",
            p("maxBodyBytes")
        )
    );
    let e = err("    retries: { attempts: 1, backoff: { base: 10ms, jitter: true } }\n");
    assert!(e.contains("unknown field `jitter`"), "{e}");
    let e = err("    retries: { attempts: 1, maxBodyBytes: 64KiB }\n");
    assert!(e.contains("invalid type"), "{e}");
    let e = err("    retries: { attempts: 1, backoff: { base: 1y } }\n");
    assert!(e.contains("unknown unit"), "{e}");
}

#[test]
fn grpc_service_and_method_are_sugar_for_the_path() {
    let m = matches("    match:\n      grpc: {service: pkg.v1.Greeter, method: SayHello}\n");
    let g = m.grpc.expect("grpc condition");
    assert_eq!(g.path(), ("/pkg.v1.Greeter/SayHello".to_string(), true));
    let m = matches("    match:\n      grpc: {service: pkg.Greeter}\n");
    assert_eq!(m.grpc.unwrap().path(), ("/pkg.Greeter/".to_string(), false));
}

#[test]
fn grpc_conditions_are_checked() {
    let e = err("    match:\n      path: /x\n      grpc: {service: pkg.Greeter}\n");
    assert!(e.starts_with(&prefix("grpc")), "{e}");
    assert!(
        e.contains("one of path (exact), pathPrefix, pathRegex and grpc"),
        "{e}"
    );
    let e = err("    match:\n      grpc: {service: \"pkg/Greeter\"}\n");
    assert!(e.starts_with(&prefix("grpc.service")), "{e}");
    let e = err("    match:\n      grpc: {service: pkg.Greeter, method: \"Say.Hello\"}\n");
    assert!(e.starts_with(&prefix("grpc.method")), "{e}");
    let e = err("    match:\n      grpc: {method: SayHello}\n");
    assert!(e.contains("service"), "{e}");
}
