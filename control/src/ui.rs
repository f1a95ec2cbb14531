//! The dashboard: a browser view of the mesh, served by control on its API
//! address under `/ui/`, and the login that lets a browser use the API.
//!
//! A browser cannot be made to send `Authorization: Bearer` on its own, so
//! the login page posts the operator credential once (`POST /ui/login`,
//! JSON [`LoginRequest`]) and control answers with a cookie,
//! [`COOKIE`]: a random session id that control maps to an expiry in
//! memory ([`Sessions`]). The credential itself is never put in the
//! cookie, so a leaked cookie dies with its session (at [`SESSION_TTL`],
//! at logout, or when control restarts) and the credential stays as secret
//! as it was. The cookie is `HttpOnly` (no script reads it), `SameSite=Strict`
//! (no other site's page sends it) and `Secure` when the API is TLS.
//!
//! The API ([`crate::api`]) then takes the cookie in place of the bearer
//! header ([`authorize`]). A request that changes state with the cookie also
//! needs the header `X-Coremesh-Csrf: 1` ([`CSRF_HEADER`]): a cross-site
//! form cannot set a header, and a cross-site script that could would need
//! a CORS preflight, which control never answers.
//!
//! The pages are files under `control/ui/`, compiled into the binary
//! ([`ASSETS`]): nothing is fetched from anywhere else, and every page is
//! sent with a Content-Security-Policy ([`CSP`]) that allows this origin
//! only.
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | GET | / , /ui | redirect to /ui/ |
//! | GET | /ui/ | the dashboard (redirects to /ui/login without a session) |
//! | GET | /ui/login | the login page |
//! | POST | /ui/login | [`LoginRequest`] → 204 and the cookie, or 401 |
//! | POST | /ui/logout | ends the session (needs the CSRF header) → 204 |
//! | GET | /ui/assets/NAME | the pages' scripts, styles and icon |

// Control, not the data plane: the session table is touched once per API
// request, for a few hundred nanoseconds.
#![allow(clippy::disallowed_types)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use coremesh_api::http::{ErrorBody, LoginRequest};

/// The session cookie's name.
pub const COOKIE: &str = "coremesh_session";
/// The header a state-changing request with the cookie must carry, with the
/// value `1`.
pub const CSRF_HEADER: &str = "x-coremesh-csrf";
/// How long a session lasts from login (then the page asks to log in again).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The most sessions kept at once; a login past it ends the one closest to
/// expiry. Only the operator can log in, so this bounds memory, not abuse.
pub const MAX_SESSIONS: usize = 256;

/// What every page is sent with: scripts, styles, images and requests from
/// this origin only; no inline script or style, no frames, no plugins, and
/// forms post only here.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; \
frame-ancestors 'none'";

/// One embedded file of the dashboard.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// The dashboard's files, served at `/ui/assets/NAME` (the two HTML pages
/// at `/ui/` and `/ui/login`).
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../ui/app.js"),
    },
    Asset {
        name: "login.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../ui/login.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../ui/app.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../ui/icon.svg"),
    },
];

const INDEX_HTML: &[u8] = include_bytes!("../ui/index.html");
const LOGIN_HTML: &[u8] = include_bytes!("../ui/login.html");

/// The live sessions: random id → when it expires. In memory only, so a
/// restart of control logs every browser out.
pub struct Sessions {
    map: Mutex<HashMap<String, Instant>>,
    ttl: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map stays consistent whatever panicked while holding it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// A new session, valid until `now + ttl`: its id (256 random bits, hex).
    pub fn create(&self, now: Instant) -> String {
        let id = crate::tokens::random_hex(32);
        let mut map = lock(&self.map);
        map.retain(|_, expiry| *expiry > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, expiry)| **expiry)
                .map(|(id, _)| id.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), now + self.ttl);
        id
    }

    /// Whether `id` names a session that has not expired at `now` (an
    /// expired one is forgotten).
    pub fn check(&self, id: &str, now: Instant) -> bool {
        let mut map = lock(&self.map);
        match map.get(id) {
            Some(expiry) if *expiry > now => true,
            Some(_) => {
                map.remove(id);
                false
            }
            None => false,
        }
    }

    /// Ends the session `id` (logout); unknown ids are ignored.
    pub fn end(&self, id: &str) {
        lock(&self.map).remove(id);
    }

    /// How many sessions are kept (expired ones may still count until the
    /// next login).
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a request proved it comes from the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// `Authorization: Bearer <credential>` (meshctl, scripts).
    Bearer,
    /// The dashboard's session cookie; the session id.
    Session(String),
}

/// Why a request was refused before reaching the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("missing or wrong operator credential (Authorization: Bearer, see <data-dir>/operator.credential; or log in at /ui/login)")]
    NoCredential,
    #[error("{method} with the dashboard's session cookie needs the header X-Coremesh-Csrf: 1 (cross-site request protection)")]
    NoCsrf { method: Method },
}

impl Denied {
    pub fn status(&self) -> StatusCode {
        match self {
            Denied::NoCredential => StatusCode::UNAUTHORIZED,
            Denied::NoCsrf { .. } => StatusCode::FORBIDDEN,
        }
    }
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        (
            self.status(),
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

/// Compares in constant time, so the credential cannot be guessed byte by
/// byte from how long a refusal takes.
pub fn credential_matches(presented: &str, credential: &str) -> bool {
    presented.len() == credential.len()
        && presented
            .bytes()
            .zip(credential.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The session id in the request's `Cookie` headers, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

/// Whether `method` may change state (anything but GET, HEAD, OPTIONS).
fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Decides whether a request to the API comes from the operator: a bearer
/// header must be the credential (a wrong one is refused even with a
/// cookie); without one, the session cookie must name a live session, and
/// a state-changing method must carry [`CSRF_HEADER`]` = 1`.
pub fn authorize(
    headers: &HeaderMap,
    method: &Method,
    credential: &str,
    sessions: &Sessions,
    now: Instant,
) -> Result<Caller, Denied> {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let presented = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        return match presented {
            Some(p) if credential_matches(p, credential) => Ok(Caller::Bearer),
            _ => Err(Denied::NoCredential),
        };
    }
    let id = session_cookie(headers).ok_or(Denied::NoCredential)?;
    if !sessions.check(id, now) {
        return Err(Denied::NoCredential);
    }
    if changes_state(method) && !has_csrf_header(headers) {
        return Err(Denied::NoCsrf {
            method: method.clone(),
        });
    }
    Ok(Caller::Session(id.to_string()))
}

fn has_csrf_header(headers: &HeaderMap) -> bool {
    headers
        .get(CSRF_HEADER)
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"1")
}

/// The `Set-Cookie` value that gives a browser session `id` for `max_age`
/// (zero: removes it).
pub fn set_cookie(id: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// What the dashboard's routes share with the API's authentication.
#[derive(Clone)]
pub struct Ui {
    pub credential: Arc<str>,
    pub sessions: Arc<Sessions>,
    /// The API is TLS: cookies are `Secure`.
    pub secure: bool,
}

/// The dashboard's routes (no bearer needed: the login page is public, the
/// dashboard page checks the session itself, and the assets hold nothing
/// secret; they are in the binary anyone can read).
pub fn routes(ui: Ui) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/assets/{name}", get(asset))
        .with_state(ui)
}

/// A page or asset with the headers every dashboard response carries.
fn page(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut resp = (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response();
    secure_headers(resp.headers_mut());
    resp
}

fn secure_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change with the binary; a browser revalidates each load.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

async fn index(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let live = session_cookie(&headers).is_some_and(|id| ui.sessions.check(id, Instant::now()));
    if !live {
        return Redirect::to("/ui/login").into_response();
    }
    page("text/html; charset=utf-8", INDEX_HTML)
}

async fn login_page() -> Response {
    page("text/html; charset=utf-8", LOGIN_HTML)
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => page(a.content_type, a.body),
        None => (
            StatusCode::NOT_FOUND,
            Json(ErrorBody {
                error: format!("no dashboard asset {name:?}"),
            }),
        )
            .into_response(),
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

/// `POST /ui/login`: JSON only, so a cross-site HTML form (which can send
/// only form encodings and plain text) cannot log a browser in.
async fn login(State(ui): State<Ui>, headers: HeaderMap, body: Bytes) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST /ui/login takes Content-Type: application/json, {\"credential\": \"...\"}",
        );
    }
    let req: LoginRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")),
    };
    if !credential_matches(req.credential.trim(), &ui.credential) {
        return error(
            StatusCode::UNAUTHORIZED,
            "wrong operator credential (the contents of <data-dir>/operator.credential)",
        );
    }
    let id = ui.sessions.create(Instant::now());
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(&id, SESSION_TTL, ui.secure)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `POST /ui/logout`: ends the session and removes the cookie. Needs the
/// CSRF header like any other state change with the cookie, so another
/// site cannot log the operator out.
async fn logout(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    if !has_csrf_header(&headers) {
        return Denied::NoCsrf {
            method: Method::POST,
        }
        .into_response();
    }
    if let Some(id) = session_cookie(&headers) {
        ui.sessions.end(id);
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie("", Duration::ZERO, ui.secure)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests;
