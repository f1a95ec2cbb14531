//! The HTTP API for meshctl and the dashboard: exactly the table in
//! [`coremesh_api::http`], beside the dashboard's own pages ([`crate::ui`]).
//! Every request needs `Authorization: Bearer <operator credential>` or the
//! dashboard's session cookie (and, for a state change with the cookie, the
//! CSRF header; [`ui::authorize`]); errors are [`ErrorBody`] JSON with 400
//! (input rejected), 401, 403 (cookie without the CSRF header), 404 or 500.
//!
//! Handlers that touch the store (which fsyncs) run on the blocking pool.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use coremesh_api::http::{ErrorBody, RollbackRequest, TokenRequest};
use coremesh_api::resource::Resource;

use crate::hub::Hub;
use crate::ui::{self, Sessions};
use crate::{Error, ErrorKind};

#[derive(Clone)]
struct Ctx {
    hub: Arc<Hub>,
    credential: Arc<str>,
    sessions: Arc<Sessions>,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match self.kind {
            ErrorKind::Rejected => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Conflict => StatusCode::CONFLICT,
        };
        if status.is_server_error() {
            tracing::error!("API: {}", self.message);
        }
        (
            status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// `?if_version=N` on a change: the config version the operator's change
/// is based on (`meshctl apply --if-version N`); refused with 409 when the
/// config is at another version.
#[derive(Debug, Default, serde::Deserialize)]
struct IfVersion {
    if_version: Option<u64>,
}

/// Runs a store-touching closure on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("task failed: {e}")))?
}

/// The router: the API, with authentication on every route, and the
/// dashboard. `tls`: the API is served over TLS (the session cookie is
/// then `Secure`).
pub fn router(hub: Arc<Hub>, credential: &str, tls: bool) -> Router {
    let credential: Arc<str> = credential.into();
    let sessions = Arc::new(Sessions::new(ui::SESSION_TTL));
    let ctx = Ctx {
        hub,
        credential: credential.clone(),
        sessions: sessions.clone(),
    };
    let api = Router::new()
        .route("/v1/apply", post(apply))
        .route("/v1/services", get(services))
        .route("/v1/routes", get(routes))
        .route("/v1/accesspolicies", get(access_policies))
        .route("/v1/resiliences", get(resiliences))
        .route("/v1/meshconfig", get(mesh_config))
        .route("/v1/services/{name}", delete(delete_service))
        .route("/v1/routes/{name}", delete(delete_route))
        .route("/v1/accesspolicies/{name}", delete(delete_access_policy))
        .route("/v1/resiliences/{name}", delete(delete_resilience))
        .route("/v1/meshconfig/{name}", delete(delete_mesh_config))
        .route("/v1/proxies", get(proxies))
        .route("/v1/endpoints", get(endpoints))
        .route("/v1/replica", get(replica))
        .route("/v1/ca", get(ca))
        .route("/v1/history", get(history))
        .route("/v1/history/{version}", get(history_version))
        .route("/v1/rollback", post(rollback))
        .route("/v1/tokens", post(create_token).get(list_tokens))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route("/v1/store/dump", get(store_dump))
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{name}/evict", post(evict_node))
        .route("/v1/nodes/{name}/readmit", post(readmit_node))
        .route("/v1/tap/{service}", get(tap))
        .route("/v1/edges", get(edges))
        .route("/v1/edges/series", get(edge_series))
        .route("/metrics", get(metrics))
        .route("/v1/ca/rotation", get(ca_rotation_status))
        .route("/v1/ca/rotation/{step}", post(ca_rotation_step))
        .fallback(|| async { Error::not_found("no such API path; see `meshctl --help`") })
        .layer(middleware::from_fn_with_state(ctx.clone(), auth))
        .with_state(ctx);
    ui::routes(ui::Ui {
        credential,
        sessions,
        secure: tls,
    })
    .merge(api)
}

async fn auth(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    if let Err(denied) = ui::authorize(
        req.headers(),
        req.method(),
        &ctx.credential,
        &ctx.sessions,
        std::time::Instant::now(),
    ) {
        return denied.into_response();
    }
    let mut resp = next.run(req).await;
    // The answers hold the mesh's state (and, for tokens, secrets): a
    // browser keeps none of them in its cache.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn apply(
    State(ctx): State<Ctx>,
    Query(base): Query<IfVersion>,
    body: Bytes,
) -> Result<Response, Error> {
    let text = std::str::from_utf8(&body).map_err(|_| Error::rejected("the body is not UTF-8"))?;
    let docs = coremesh_api::resource::parse_documents(text)
        .map_err(|e| Error::rejected(e.to_string()))?;
    if docs.is_empty() {
        return Err(Error::rejected("no resources in the input"));
    }
    let hub = ctx.hub.clone();
    let result = blocking(move || hub.apply_blocking(docs, base.if_version)).await?;
    Ok(Json(result).into_response())
}

async fn services(State(ctx): State<Ctx>) -> Json<Vec<Resource>> {
    let (_, config) = ctx.hub.config();
    Json(
        config
            .services
            .iter()
            .cloned()
            .map(Resource::Service)
            .collect(),
    )
}

async fn routes(State(ctx): State<Ctx>) -> Json<Vec<Resource>> {
    let (_, config) = ctx.hub.config();
    Json(config.routes.iter().cloned().map(Resource::Route).collect())
}

async fn access_policies(State(ctx): State<Ctx>) -> Json<Vec<Resource>> {
    let (_, config) = ctx.hub.config();
    Json(
        config
            .access_policies
            .iter()
            .cloned()
            .map(Resource::AccessPolicy)
            .collect(),
    )
}

async fn resiliences(State(ctx): State<Ctx>) -> Json<Vec<Resource>> {
    let (_, config) = ctx.hub.config();
    Json(
        config
            .resiliences
            .iter()
            .cloned()
            .map(Resource::Resilience)
            .collect(),
    )
}

/// A list like the others: empty, or the one MeshConfig.
async fn mesh_config(State(ctx): State<Ctx>) -> Json<Vec<Resource>> {
    let (_, config) = ctx.hub.config();
    Json(
        config
            .mesh
            .iter()
            .cloned()
            .map(Resource::MeshConfig)
            .collect(),
    )
}

async fn delete_kind(
    ctx: Ctx,
    kind: &'static str,
    name: String,
    base: IfVersion,
) -> Result<Response, Error> {
    let hub = ctx.hub.clone();
    let r = blocking(move || hub.delete_blocking(kind, &name, base.if_version)).await?;
    Ok(Json(r).into_response())
}

async fn delete_service(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(base): Query<IfVersion>,
) -> Result<Response, Error> {
    delete_kind(ctx, "service", name, base).await
}

async fn delete_route(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(base): Query<IfVersion>,
) -> Result<Response, Error> {
    delete_kind(ctx, "route", name, base).await
}

async fn delete_access_policy(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(base): Query<IfVersion>,
) -> Result<Response, Error> {
    delete_kind(ctx, "accesspolicy", name, base).await
}

async fn delete_resilience(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(base): Query<IfVersion>,
) -> Result<Response, Error> {
    delete_kind(ctx, "resilience", name, base).await
}

async fn delete_mesh_config(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(base): Query<IfVersion>,
) -> Result<Response, Error> {
    delete_kind(ctx, "meshconfig", name, base).await
}

async fn proxies(State(ctx): State<Ctx>) -> Response {
    Json(ctx.hub.proxies()).into_response()
}

async fn endpoints(State(ctx): State<Ctx>) -> Response {
    Json(ctx.hub.endpoints()).into_response()
}

async fn replica(State(ctx): State<Ctx>) -> Response {
    Json(ctx.hub.replica_status()).into_response()
}

async fn ca(State(ctx): State<Ctx>) -> Response {
    let ca = ctx.hub.ca();
    Json(coremesh_api::http::CaStatus {
        trust_domain: ca.trust_domain().to_string(),
        fingerprint: ca.fingerprint().to_string(),
        not_after: ca.not_after(),
        now: crate::unix_secs(std::time::SystemTime::now()),
    })
    .into_response()
}

async fn history(State(ctx): State<Ctx>) -> Result<Response, Error> {
    let hub = ctx.hub.clone();
    Ok(Json(blocking(move || hub.history_blocking()).await?).into_response())
}

/// Every resource as of `version` (what a rollback to it would restore),
/// for the dashboard's diff between two versions.
async fn history_version(
    State(ctx): State<Ctx>,
    Path(version): Path<String>,
) -> Result<Response, Error> {
    let version: u64 = version.parse().map_err(|_| {
        Error::rejected(format!(
            "/v1/history/{version}: not a version number; see `meshctl history`"
        ))
    })?;
    let hub = ctx.hub.clone();
    Ok(Json(blocking(move || hub.config_at_blocking(version)).await?).into_response())
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::rejected(format!("bad JSON body: {e}")))
}

async fn rollback(
    State(ctx): State<Ctx>,
    Query(base): Query<IfVersion>,
    body: Bytes,
) -> Result<Response, Error> {
    let req: RollbackRequest = json_body(&body)?;
    let hub = ctx.hub.clone();
    Ok(
        Json(blocking(move || hub.rollback_blocking(req.to, base.if_version)).await?)
            .into_response(),
    )
}

async fn create_token(State(ctx): State<Ctx>, body: Bytes) -> Result<Response, Error> {
    let req: TokenRequest = json_body(&body)?;
    let hub = ctx.hub.clone();
    Ok(Json(blocking(move || hub.create_token_blocking(&req)).await?).into_response())
}

async fn list_tokens(State(ctx): State<Ctx>) -> Result<Response, Error> {
    let hub = ctx.hub.clone();
    Ok(Json(blocking(move || hub.tokens_blocking()).await?).into_response())
}

async fn revoke_token(State(ctx): State<Ctx>, Path(id): Path<String>) -> Result<Response, Error> {
    let hub = ctx.hub.clone();
    blocking(move || hub.revoke_token_blocking(&id)).await?;
    Ok(Json(serde_json::json!({})).into_response())
}

/// Everything in the store, read in one transaction: what
/// `coremesh-control backup` takes from a running control (whose store
/// file it cannot open itself).
async fn store_dump(State(ctx): State<Ctx>) -> Result<Response, Error> {
    let hub = ctx.hub.clone();
    let dump = blocking(move || hub.dump_blocking()).await?;
    Ok(Json(dump).into_response())
}

async fn nodes(State(ctx): State<Ctx>) -> Response {
    Json(ctx.hub.nodes()).into_response()
}

async fn evict_node(State(ctx): State<Ctx>, Path(name): Path<String>) -> Result<Response, Error> {
    let hub = ctx.hub.clone();
    Ok(Json(blocking(move || hub.evict_blocking(&name)).await?).into_response())
}

/// `GET /v1/tap/SERVICE?path=P&max_rps=N`.
#[derive(Debug, serde::Deserialize)]
struct TapQuery {
    path: Option<String>,
    max_rps: Option<u32>,
}

/// A tap on SERVICE's proxies, streamed as newline-delimited JSON until
/// the client goes away (see tap.rs).
async fn tap(
    State(ctx): State<Ctx>,
    Path(service): Path<String>,
    axum::extract::Query(q): axum::extract::Query<TapQuery>,
) -> Result<Response, Error> {
    let (_, config) = ctx.hub.config();
    let taps = ctx.hub.taps();
    if !config.services.iter().any(|s| s.name == service) && !taps.has_sessions(&service) {
        return Err(Error::not_found(format!(
            "no service {service:?}: no Service resource defines it and no proxy of it is connected; see `meshctl get services` and `meshctl status`"
        )));
    }
    let max_rps = q.max_rps.unwrap_or(crate::tap::DEFAULT_MAX_RPS);
    let (guard, rx) = taps
        .start(&service, q.path.filter(|p| !p.is_empty()), max_rps)
        .map_err(|e| Error::rejected(e.to_string()))?;
    let body = crate::tap::TapBody::new(taps.clone(), guard, rx);
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

async fn readmit_node(State(ctx): State<Ctx>, Path(name): Path<String>) -> Result<Response, Error> {
    let hub = ctx.hub.clone();
    Ok(Json(blocking(move || hub.readmit_blocking(&name)).await?).into_response())
}

#[derive(serde::Deserialize)]
struct EdgesQuery {
    window: Option<String>,
}

/// `GET /v1/edges?window=10s|1m` (default 10s).
async fn edges(
    State(ctx): State<Ctx>,
    axum::extract::Query(q): axum::extract::Query<EdgesQuery>,
) -> Result<Response, Error> {
    let w = q.window.as_deref().unwrap_or("10s");
    let window = crate::fleet::Window::parse(w)
        .ok_or_else(|| Error::rejected(format!("window {w:?}: expected 10s or 1m")))?;
    Ok(Json(ctx.hub.fleet().edges(window)).into_response())
}

#[derive(serde::Deserialize)]
struct SeriesQuery {
    source: Option<String>,
    destination: Option<String>,
}

/// `GET /v1/edges/series?source=S&destination=D`: the last hour at 10 s.
async fn edge_series(
    State(ctx): State<Ctx>,
    axum::extract::Query(q): axum::extract::Query<SeriesQuery>,
) -> Result<Response, Error> {
    let (Some(source), Some(destination)) = (q.source, q.destination) else {
        return Err(Error::rejected(
            "edges/series needs the query parameters source and destination",
        ));
    };
    Ok(Json(ctx.hub.fleet().series(&source, &destination)).into_response())
}

/// `GET /metrics`: the fleet view in the Prometheus text format.
async fn metrics(State(ctx): State<Ctx>) -> Response {
    let mut out = String::with_capacity(16 * 1024);
    ctx.hub.fleet().render_prometheus(&mut out);
    let status = ctx.hub.replica_status();
    out.push_str("# HELP coremesh_control_store_cut_off 1 while this control replica cannot reach its store (etcd) and does not push changes.\n# TYPE coremesh_control_store_cut_off gauge\n");
    out.push_str(&format!(
        "coremesh_control_store_cut_off {}\n",
        u8::from(status.cut_off_since.is_some())
    ));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// The rotation of a CA kept in etcd, when control runs with
/// `--ca-in-store` (added by main as an extension; `None` otherwise).
pub type Rotation = axum::Extension<Option<Arc<crate::ca_rotation::CaRotation>>>;

fn rotation_of(rotation: Rotation) -> Result<Arc<crate::ca_rotation::CaRotation>, Error> {
    rotation.0.ok_or_else(|| {
        Error::rejected(
            "this control does not keep its CA in etcd: rotating the root through the API needs --store etcd://... and --ca-in-store (with its CA in files, rotate as the README's \"Rotating the root\" says)",
        )
    })
}

/// `GET /v1/ca/rotation`: where a root rotation is.
async fn ca_rotation_status(rotation: Rotation) -> Result<Response, Error> {
    let rotation = rotation_of(rotation)?;
    Ok(Json(blocking(move || rotation.status()).await?).into_response())
}

/// `POST /v1/ca/rotation/{begin|switch|finish}`: one step of a rotation.
async fn ca_rotation_step(rotation: Rotation, Path(step): Path<String>) -> Result<Response, Error> {
    let rotation = rotation_of(rotation)?;
    let step = crate::ca_rotation::Step::parse(&step).ok_or_else(|| {
        Error::not_found(format!(
            "no rotation step {step:?}: begin, switch or finish"
        ))
    })?;
    Ok(Json(blocking(move || rotation.step(step)).await?).into_response())
}
