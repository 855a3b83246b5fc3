//! HTTP endpoints: WHIP/WHEP sessions, health, metrics, the call page (with its security
//! headers) and the dev token; CORS for WHIP/WHEP (any origin in dev mode, the configured ones
//! otherwise).

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chorus_sfu::{Origin, Permissions, RoomEvent, SfuError};
use prometheus::Encoder;
use rand::distr::{Alphanumeric, SampleString};
use serde::Deserialize;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tracing::{debug, info};

use crate::auth::{bearer, constant_time_eq};
use crate::auth::{claims, Claims, Grants};
use crate::ice::ice_servers_for;
use crate::{convert, error_code, ws, HttpSession, SharedState};

/// The call page.
const INDEX_HTML: &str = include_str!("../assets/index.html");

/// How long a WHEP request waits for a publisher (or its tracks) to appear.
const WHEP_WAIT: Duration = Duration::from_secs(5);

/// Largest SDP body accepted by WHIP/WHEP.
const MAX_SDP_BYTES: usize = 64 * 1024;

/// Builds the whole HTTP surface. `/dev/token` exists only in dev mode, `/metrics` only when
/// [`crate::HttpOptions::metrics_on_http`], the admin API only with an admin key.
pub fn router(state: SharedState) -> Router {
    let cors = CorsLayer::new()
        .allow_methods([Method::POST, Method::DELETE, Method::OPTIONS, Method::PATCH])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::LOCATION, header::LINK, header::ETAG]);
    let cors = if state.http.dev {
        cors.allow_origin(Any)
    } else {
        // Unparsable origins were refused when the config was checked.
        let origins: Vec<HeaderValue> = state
            .http
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        cors.allow_origin(AllowOrigin::list(origins))
    };
    let media = Router::new()
        .route("/whip/{room}", post(whip))
        .route(
            "/whip/{room}/session/{id}",
            delete(end_session).patch(no_trickle),
        )
        .route("/whep/{room}", post(whep_latest))
        .route("/whep/{room}/{identity}", post(whep_identity))
        .route(
            "/whep/{room}/session/{id}",
            delete(end_session).patch(no_trickle),
        )
        .layer(cors);
    let mut router = Router::new()
        .route("/", get(page))
        .route("/ws", get(ws::handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(media);
    if state.http.metrics_on_http {
        router = router.route("/metrics", get(http_metrics));
    }
    if state.dev_key.is_some() {
        router = router.route("/dev/token", get(dev_token));
    }
    if state.http.admin_key.is_some() {
        router = router.merge(crate::admin::router());
    }
    router.with_state(state)
}

/// The router of the separate metrics listener (`metrics.bind`): `/metrics` only, no token
/// (bind it to loopback or a private interface).
pub fn metrics_router(state: SharedState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Where the page's `<meta name="chorus-token-endpoint">` and nonces go.
const TOKEN_ENDPOINT_PLACEHOLDER: &str = "{{TOKEN_ENDPOINT}}";
const NONCE_PLACEHOLDER: &str = "{{NONCE}}";

/// `GET /`: the call page, with a fresh CSP nonce for its one script and one style, and the
/// token endpoint it asks for tokens (none: the page needs `?token=`).
async fn page(State(state): State<SharedState>) -> Response {
    let nonce = Alphanumeric.sample_string(&mut rand::rng(), 22);
    let endpoint = state.http.token_endpoint.as_deref().unwrap_or("");
    let html = INDEX_HTML
        .replace(NONCE_PLACEHOLDER, &nonce)
        .replace(TOKEN_ENDPOINT_PLACEHOLDER, &html_attr_escape(endpoint));
    let mut connect_src = "'self'".to_owned();
    if let Some(origin) = endpoint_origin(endpoint) {
        connect_src.push(' ');
        connect_src.push_str(&origin);
    }
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src {connect_src}; img-src 'self' data:; media-src 'self' blob: mediastream:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    let mut response = Html(html).into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The page may carry a token in its URL: never send it on in a Referer.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        HeaderName::from_static("permissions-policy"),
        HeaderValue::from_static("camera=(self), microphone=(self), geolocation=()"),
    );
    response
}

/// `scheme://host[:port]` of an absolute `http(s)` URL (for the CSP); `None` for a relative
/// one (covered by `'self'`).
fn endpoint_origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let host = rest.split(['/', '?', '#']).next()?;
    if host.is_empty() || host.contains(['\'', ';', ' ', '"']) {
        return None;
    }
    Some(format!("{scheme}://{host}"))
}

/// Escapes text for an HTML attribute value.
fn html_attr_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
}

async fn readyz(State(state): State<SharedState>) -> Response {
    if !state.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    match tokio::time::timeout(Duration::from_secs(2), state.sfu.stats()).await {
        Ok(Ok(_)) => "ready".into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "media engine not responding",
        )
            .into_response(),
    }
}

/// `/metrics` on the HTTP port: with `metrics.token` set, only for `Authorization: Bearer
/// <token>` (401 otherwise).
async fn http_metrics(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    if let Some(want) = &state.http.metrics_token {
        if !bearer(&headers).is_some_and(|got| constant_time_eq(got.as_bytes(), want.as_bytes())) {
            state
                .refusals
                .refused("metrics", "missing or wrong bearer token", None);
            return (StatusCode::UNAUTHORIZED, "invalid_token").into_response();
        }
    }
    metrics(State(state)).await
}

async fn metrics(State(state): State<SharedState>) -> Response {
    let mut buf = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&state.registry.gather(), &mut buf) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buf).into_response()
}

#[derive(Deserialize)]
struct DevTokenQuery {
    room: String,
    identity: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    publish: Option<u8>,
    #[serde(default)]
    subscribe: Option<u8>,
    #[serde(default)]
    data: Option<u8>,
}

/// `GET /dev/token`: mints a token with the dev key. The route exists only in dev mode.
async fn dev_token(State(state): State<SharedState>, Query(q): Query<DevTokenQuery>) -> Response {
    let Some(key) = &state.dev_key else {
        return (
            StatusCode::NOT_FOUND,
            "dev tokens are disabled outside dev mode",
        )
            .into_response();
    };
    if q.room.is_empty() || q.identity.is_empty() {
        return (StatusCode::BAD_REQUEST, "room and identity are required").into_response();
    }
    let grants = Grants {
        room: q.room.clone(),
        can_publish: q.publish.is_none_or(|v| v != 0),
        can_subscribe: q.subscribe.is_none_or(|v| v != 0),
        can_publish_data: q.data.is_none_or(|v| v != 0),
    };
    let mut c = claims(&q.identity, &q.room, Duration::from_secs(6 * 3600), grants);
    c.name = q.name.unwrap_or_default();
    match state.keys.mint(key, &c) {
        Ok(token) => Json(serde_json::json!({ "token": token })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// An HTTP error for WHIP/WHEP, counted by code.
fn fail(state: &SharedState, status: StatusCode, code: &str, msg: impl Into<String>) -> Response {
    state.metrics.errors.with_label_values(&[code]).inc();
    let msg = msg.into();
    debug!(status = status.as_u16(), code, %msg, "WHIP/WHEP request refused");
    (status, msg).into_response()
}

/// Checks the bearer token and SDP body of a WHIP/WHEP request. The error is the response
/// to send (boxed: a `Response` is large).
fn authorize(
    state: &SharedState,
    headers: &HeaderMap,
    room: &str,
    body: &Bytes,
    publish: bool,
) -> Result<(Claims, String), Box<Response>> {
    let deny =
        |status: StatusCode, code: &str, msg: String| Box::new(fail(state, status, code, msg));
    if !state.ready.load(Ordering::Relaxed) {
        return Err(deny(
            StatusCode::SERVICE_UNAVAILABLE,
            "internal",
            "server is draining".into(),
        ));
    }
    let token = bearer(headers).ok_or_else(|| {
        deny(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "missing bearer token".into(),
        )
    })?;
    let claims = state.keys.verify(token).map_err(|e| {
        state.refusals.refused("whip/whep", e.reason(), None);
        deny(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "invalid token".into(),
        )
    })?;
    if claims.grants.room != room {
        return Err(deny(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "token is for another room".into(),
        ));
    }
    let allowed = if publish {
        claims.grants.can_publish
    } else {
        claims.grants.can_subscribe
    };
    if !allowed {
        let what = if publish { "publish" } else { "subscribe" };
        return Err(deny(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!("token does not grant {what}"),
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if !content_type.is_some_and(|c| c.starts_with("application/sdp")) {
        return Err(deny(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_message",
            "body must be application/sdp".into(),
        ));
    }
    if body.len() > MAX_SDP_BYTES {
        return Err(deny(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            "SDP too large".into(),
        ));
    }
    let sdp = std::str::from_utf8(body).map_err(|_| {
        deny(
            StatusCode::BAD_REQUEST,
            "invalid_sdp",
            "SDP is not UTF-8".into(),
        )
    })?;
    let sections = convert::media_sections(sdp);
    let max = state.config.max_media_sections;
    if sections > max {
        return Err(deny(
            StatusCode::BAD_REQUEST,
            "limit_exceeded",
            format!("offer has {sections} media sections; at most {max}"),
        ));
    }
    Ok((claims, sdp.to_owned()))
}

fn sfu_status(e: &SfuError) -> StatusCode {
    match e {
        SfuError::InvalidSdp(_) => StatusCode::BAD_REQUEST,
        SfuError::NotFound(_) | SfuError::NotReady(_) | SfuError::UnknownTrack(_) => {
            StatusCode::NOT_FOUND
        }
        SfuError::RoomFull => StatusCode::SERVICE_UNAVAILABLE,
        SfuError::NotPermitted(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn whip(
    State(state): State<SharedState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    start_session(state, room, None, headers, body, true).await
}

async fn whep_latest(
    State(state): State<SharedState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    start_session(state, room, None, headers, body, false).await
}

async fn whep_identity(
    State(state): State<SharedState>,
    Path((room, identity)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    start_session(state, room, Some(identity), headers, body, false).await
}

async fn start_session(
    state: SharedState,
    room: String,
    identity: Option<String>,
    headers: HeaderMap,
    body: Bytes,
    publish: bool,
) -> Response {
    let (claims, sdp) = match authorize(&state, &headers, &room, &body, publish) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let kind = if publish { "whip" } else { "whep" };
    // `authorize` checked that the token's room is this room.
    let permissions = Permissions {
        publish,
        subscribe: !publish,
        publish_data: false,
    };
    let origin = if publish { Origin::Whip } else { Origin::Whep };
    let request = crate::join_request(&claims, permissions, false, origin);
    let session = match state.sfu.join(request).await {
        Ok(s) => s,
        Err(e) => {
            return fail(
                &state,
                sfu_status(&e),
                error_code(&e).as_str(),
                e.to_string(),
            );
        }
    };
    let answer = if publish {
        session.handle.publisher_offer(sdp).await
    } else {
        // A player may ask just after its publisher connected, before the publisher's media
        // (and so its tracks) arrived: wait a little for them.
        let deadline = tokio::time::Instant::now() + WHEP_WAIT;
        loop {
            match session
                .handle
                .playback_offer(sdp.clone(), identity.clone())
                .await
            {
                Err(SfuError::NotFound(_) | SfuError::NotReady(_))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => break other,
            }
        }
    };
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            // `session` drops here and leaves the room.
            return fail(
                &state,
                sfu_status(&e),
                error_code(&e).as_str(),
                e.to_string(),
            );
        }
    };
    let id = session.me.id.clone();
    let location = format!("/{kind}/{room}/session/{id}");
    let links: Vec<String> = ice_servers_for(
        &state.config.ice_servers,
        &claims.sub,
        crate::auth::unix_now(),
        claims.exp,
    )
        .iter()
        .flat_map(|s| {
            s.urls.iter().map(|u| match (&s.username, &s.credential) {
                (Some(user), Some(cred)) => format!(
                    "<{u}>; rel=\"ice-server\"; username=\"{user}\"; credential=\"{cred}\"; credential-type=\"password\""
                ),
                _ => format!("<{u}>; rel=\"ice-server\""),
            })
        })
        .collect();
    state
        .media_metrics
        .http_sessions
        .with_label_values(&[kind])
        .inc();
    let mut session = session;
    let (_, placeholder) = tokio::sync::mpsc::channel(1);
    let mut events = std::mem::replace(&mut session.events, placeholder);
    if let Ok(mut sessions) = state.http_sessions.lock() {
        sessions.insert(
            id.clone(),
            HttpSession {
                kind,
                room,
                identity: claims.sub.clone(),
                session,
            },
        );
    }
    // When the engine drops the participant (its connection failed, an operator removed it)
    // or its token expires, forget the resource (which leaves the room).
    let reaper = state.clone();
    let left = claims.exp.saturating_sub(crate::auth::unix_now());
    tokio::spawn(async move {
        let closed = async {
            while let Some(ev) = events.recv().await {
                if matches!(ev, RoomEvent::Closed { .. }) {
                    break;
                }
            }
        };
        tokio::select! {
            () = closed => {}
            () = tokio::time::sleep(Duration::from_secs(left)) => {
                info!(session = %id, "token expired, ending the WHIP/WHEP session");
            }
        }
        remove_session(&reaper, &id, None);
    });
    let mut response = (StatusCode::CREATED, answer).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    for link in links {
        if let Ok(v) = HeaderValue::from_str(&link) {
            h.append(header::LINK, v);
        }
    }
    response
}

/// `DELETE` on a WHIP/WHEP session resource ends it. It needs a valid token for the same
/// room and identity as the one that created the session.
async fn end_session(
    State(state): State<SharedState>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let claims = match bearer(&headers).map(|t| state.keys.verify(t)) {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            state.refusals.refused("whip/whep delete", e.reason(), None);
            return fail(
                &state,
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "invalid token",
            );
        }
        None => {
            return fail(
                &state,
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "missing bearer token",
            )
        }
    };
    let owner = state
        .http_sessions
        .lock()
        .ok()
        .and_then(|s| s.get(&id).map(|s| (s.room.clone(), s.identity.clone())));
    match owner {
        Some((r, identity)) if r == room => {
            if claims.grants.room != room || claims.sub != identity {
                return fail(
                    &state,
                    StatusCode::FORBIDDEN,
                    "permission_denied",
                    "token does not own this session",
                );
            }
        }
        _ => return (StatusCode::NOT_FOUND, "no such session").into_response(),
    }
    if remove_session(&state, &id, Some(&room)) {
        StatusCode::OK.into_response()
    } else {
        (StatusCode::NOT_FOUND, "no such session").into_response()
    }
}

/// Forgets a WHIP/WHEP session (leaving the room); true if it existed (in `room`, if given).
fn remove_session(state: &SharedState, id: &str, room: Option<&str>) -> bool {
    let removed = match state.http_sessions.lock() {
        Ok(mut sessions) => match sessions.get(id) {
            Some(s) if room.is_none_or(|r| s.room == r) => sessions.remove(id),
            _ => None,
        },
        Err(_) => None,
    };
    match removed {
        Some(s) => {
            state
                .media_metrics
                .http_sessions
                .with_label_values(&[s.kind])
                .dec();
            drop(s); // leaves the room (idempotent if the engine already removed it)
            true
        }
        None => false,
    }
}

/// Trickle ICE over `PATCH` is not supported: the answer already carries our candidates and
/// the server is ICE-lite, so the client's checks reach it without them.
async fn no_trickle() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        "trickle ICE over PATCH is not supported",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csp_names_only_the_token_endpoints_origin() {
        assert_eq!(
            endpoint_origin("https://app.example.com/chorus/token?x=1").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            endpoint_origin("http://127.0.0.1:8080/t").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(endpoint_origin("/dev/token"), None);
        assert_eq!(endpoint_origin("javascript://x"), None);
        assert_eq!(endpoint_origin("https://a.example; script-src *"), None);
    }

    #[test]
    fn attribute_values_are_escaped() {
        assert_eq!(
            html_attr_escape(r#"/t?a=1&b="><script>"#),
            "/t?a=1&amp;b=&quot;&gt;&lt;script&gt;"
        );
    }
}
