//! The dashboard's login: sessions, the cookie, and the CSRF header, first
//! as functions, then through the real router over loopback HTTP, as a
//! browser would see them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::SystemTime;

use super::*;
use crate::ca::Ca;
use crate::hub::{Hub, Options};
use crate::store::RedbStore;

const CREDENTIAL: &str = "0123456789abcdef0123456789abcdef";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn a_session_lives_until_its_expiry_or_logout() {
    let sessions = Sessions::new(Duration::from_secs(60));
    let t0 = Instant::now();
    let a = sessions.create(t0);
    let b = sessions.create(t0);
    assert_eq!(a.len(), 64, "256 random bits as hex: {a}");
    assert_ne!(a, b);
    assert!(sessions.check(&a, t0 + Duration::from_secs(59)));
    assert!(!sessions.check(&a, t0 + Duration::from_secs(60)), "expired");
    assert!(!sessions.check(&a, t0), "an expired session is forgotten");
    assert!(sessions.check(&b, t0));
    sessions.end(&b);
    assert!(!sessions.check(&b, t0), "logged out");
    assert!(!sessions.check("", t0));
    assert!(!sessions.check(CREDENTIAL, t0));
}

#[test]
fn sessions_are_bounded() {
    let sessions = Sessions::new(Duration::from_secs(60));
    let t0 = Instant::now();
    let first = sessions.create(t0);
    for i in 1..MAX_SESSIONS + 10 {
        sessions.create(t0 + Duration::from_millis(i as u64));
    }
    assert_eq!(sessions.len(), MAX_SESSIONS);
    assert!(
        !sessions.check(&first, t0),
        "the session closest to expiry made room"
    );
}

#[test]
fn the_cookie_is_http_only_same_site_strict_and_secure_over_tls() {
    let c = set_cookie("abc", SESSION_TTL, true);
    assert_eq!(
        c,
        "coremesh_session=abc; Path=/; Max-Age=43200; HttpOnly; SameSite=Strict; Secure"
    );
    let c = set_cookie("abc", SESSION_TTL, false);
    assert!(!c.contains("Secure"), "{c}");
    assert!(set_cookie("", Duration::ZERO, false).contains("Max-Age=0"));
}

#[test]
fn the_session_cookie_is_found_among_others() {
    let h = headers(&[
        ("cookie", "theme=dark; coremesh_session=s1 ; other=x"),
        ("cookie", "coremesh_session=s2"),
    ]);
    assert_eq!(session_cookie(&h), Some("s1"));
    assert_eq!(session_cookie(&headers(&[("cookie", "a=b")])), None);
    assert_eq!(
        session_cookie(&headers(&[("cookie", "xcoremesh_session=s")])),
        None
    );
}

#[test]
fn authorize_takes_the_bearer_or_a_live_session_with_csrf_for_changes() {
    let sessions = Sessions::new(Duration::from_secs(60));
    let now = Instant::now();
    let id = sessions.create(now);
    let cookie = format!("coremesh_session={id}");
    let check =
        |h: &[(&str, &str)], m: Method| authorize(&headers(h), &m, CREDENTIAL, &sessions, now);
    let bearer = format!("Bearer {CREDENTIAL}");

    assert_eq!(
        check(&[("authorization", &bearer)], Method::POST),
        Ok(Caller::Bearer),
        "meshctl needs no CSRF header"
    );
    assert_eq!(check(&[], Method::GET), Err(Denied::NoCredential));
    assert_eq!(
        check(
            &[("authorization", "Bearer wrong"), ("cookie", &cookie)],
            Method::GET
        ),
        Err(Denied::NoCredential),
        "a wrong bearer is refused whatever the cookie"
    );
    assert_eq!(
        check(&[("cookie", &cookie)], Method::GET),
        Ok(Caller::Session(id.clone()))
    );
    assert_eq!(
        check(&[("cookie", &cookie)], Method::POST),
        Err(Denied::NoCsrf {
            method: Method::POST
        })
    );
    assert_eq!(
        check(&[("cookie", &cookie), (CSRF_HEADER, "0")], Method::DELETE),
        Err(Denied::NoCsrf {
            method: Method::DELETE
        })
    );
    assert_eq!(
        check(
            &[("cookie", &cookie), ("X-Coremesh-Csrf", "1")],
            Method::POST
        ),
        Ok(Caller::Session(id.clone()))
    );
    assert_eq!(
        check(
            &[
                ("cookie", &format!("coremesh_session={CREDENTIAL}")),
                (CSRF_HEADER, "1")
            ],
            Method::GET
        ),
        Err(Denied::NoCredential),
        "the credential is not a session id"
    );
    assert_eq!(Denied::NoCredential.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        Denied::NoCsrf {
            method: Method::POST
        }
        .status(),
        StatusCode::FORBIDDEN
    );
}

// ---- the real router over loopback HTTP ----

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Control's router (plain HTTP, as with --api-plaintext) on 127.0.0.1, on
/// a runtime of its own that lives as long as the test.
fn serve() -> (SocketAddr, tokio::runtime::Runtime, TempDir) {
    let dir = std::env::temp_dir().join(format!(
        "coremesh-ui-{}-{}",
        std::process::id(),
        crate::unix_millis(SystemTime::now())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = crate::ca::create_ca("coremesh.local", SystemTime::now()).unwrap();
    let ca = Ca::load(&cert, &key, "coremesh.local").unwrap();
    let store = Arc::new(RedbStore::create(&dir.join("store.redb"), "0123456789abcdef").unwrap());
    let hub = Hub::new(store, ca, Options::default(), Instant::now()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = crate::api::router(hub, CREDENTIAL, false);
    rt.spawn(crate::api_tls::serve(
        listener,
        app,
        None,
        std::future::pending(),
    ));
    (addr, rt, TempDir(dir))
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a new connection.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    hdrs: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in hdrs {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

const MESH: &str = "kind: Service\nname: api\n";

#[test]
fn a_browser_logs_in_uses_the_api_with_the_cookie_and_logs_out() {
    let (addr, _rt, _dir) = serve();
    let json = ("content-type", "application/json");

    // Without a session the dashboard sends the browser to the login page,
    // which is public; the API refuses.
    let r = request(addr, "GET", "/", &[], "");
    assert_eq!((r.status, r.header("location")), (303, Some("/ui/")));
    let r = request(addr, "GET", "/ui/", &[], "");
    assert_eq!((r.status, r.header("location")), (303, Some("/ui/login")));
    let r = request(addr, "GET", "/ui/login", &[], "");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("Operator credential"), "{}", r.body);
    assert_eq!(r.header("content-security-policy"), Some(CSP));
    assert_eq!(request(addr, "GET", "/v1/services", &[], "").status, 401);

    // A wrong credential, or a form post, gets no cookie.
    let r = request(
        addr,
        "POST",
        "/ui/login",
        &[json],
        r#"{"credential":"nope"}"#,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("set-cookie"), None);
    let form = ("content-type", "application/x-www-form-urlencoded");
    let r = request(
        addr,
        "POST",
        "/ui/login",
        &[form],
        &format!("credential={CREDENTIAL}"),
    );
    assert_eq!(r.status, 415, "{}", r.body);
    assert_eq!(r.header("set-cookie"), None);

    // The right one gets a session cookie that is not the credential.
    let body = format!(r#"{{"credential":"{CREDENTIAL}"}}"#);
    let r = request(addr, "POST", "/ui/login", &[json], &body);
    assert_eq!(r.status, 204, "{}", r.body);
    let set = r.header("set-cookie").expect("a cookie").to_string();
    assert!(set.starts_with("coremesh_session="), "{set}");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "plain HTTP here: {set}");
    assert!(!set.contains(CREDENTIAL), "{set}");
    let cookie_pair = set.split(';').next().unwrap().to_string();
    let cookie = ("cookie", cookie_pair.as_str());

    // The dashboard and its assets, with the CSP.
    let r = request(addr, "GET", "/ui/", &[cookie], "");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("/ui/assets/app.js"), "{}", r.body);
    assert_eq!(r.header("content-security-policy"), Some(CSP));
    let r = request(addr, "GET", "/ui/assets/app.js", &[], "");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        request(addr, "GET", "/ui/assets/nope.js", &[], "").status,
        404
    );

    // The API reads with the cookie; a change needs the CSRF header too.
    let r = request(addr, "GET", "/v1/services", &[cookie], "");
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let r = request(addr, "POST", "/v1/apply", &[cookie], MESH);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("X-Coremesh-Csrf"), "{}", r.body);
    let r = request(
        addr,
        "POST",
        "/v1/apply",
        &[cookie, ("x-coremesh-csrf", "1")],
        MESH,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"version\":1"), "{}", r.body);

    // A version's resources, for the history diff.
    let r = request(addr, "GET", "/v1/history/1", &[cookie], "");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v[0]["kind"], "Service");
    assert_eq!(v[0]["name"], "api");
    let r = request(addr, "GET", "/v1/history/0", &[cookie], "");
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));
    assert_eq!(
        request(addr, "GET", "/v1/history/9", &[cookie], "").status,
        404
    );
    assert_eq!(
        request(addr, "GET", "/v1/history/x", &[cookie], "").status,
        400
    );

    // Logout needs the header, then ends the session.
    assert_eq!(
        request(addr, "POST", "/ui/logout", &[cookie], "").status,
        403
    );
    let r = request(
        addr,
        "POST",
        "/ui/logout",
        &[cookie, ("x-coremesh-csrf", "1")],
        "",
    );
    assert_eq!(r.status, 204);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(
        request(addr, "GET", "/v1/services", &[cookie], "").status,
        401
    );
    let r = request(addr, "GET", "/ui/", &[cookie], "");
    assert_eq!((r.status, r.header("location")), (303, Some("/ui/login")));

    // meshctl's bearer still works as before.
    let bearer = format!("Bearer {CREDENTIAL}");
    let r = request(
        addr,
        "GET",
        "/v1/services",
        &[("authorization", &bearer)],
        "",
    );
    assert_eq!(r.status, 200);
}
