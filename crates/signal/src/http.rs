//! HTTP endpoints: WHIP/WHEP sessions, health, metrics, the call page and the dev token.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chorus_sfu::{Origin, Permissions, RoomEvent, SfuError};
use prometheus::Encoder;
use serde::Deserialize;
use tower_http::cors::{Any, CorsLayer};
use tracing::info;

use crate::auth::{claims, Claims, Grants};
use crate::ice::ice_servers_for;
use crate::{error_code, ws, HttpSession, SharedState};

/// The call page.
const INDEX_HTML: &str = include_str!("../assets/index.html");

/// How long a WHEP request waits for a publisher (or its tracks) to appear.
const WHEP_WAIT: Duration = Duration::from_secs(5);

/// Largest SDP body accepted by WHIP/WHEP.
const MAX_SDP_BYTES: usize = 64 * 1024;

/// Builds the whole HTTP surface.
pub fn router(state: SharedState) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::POST, Method::DELETE, Method::OPTIONS, Method::PATCH])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::LOCATION, header::LINK, header::ETAG]);
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
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/ws", get(ws::handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/dev/token", get(dev_token))
        .merge(media)
        .with_state(state)
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

/// `GET /dev/token`: mints a token with the dev key. Off (404) outside dev mode.
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
    info!(status = status.as_u16(), code, %msg, "WHIP/WHEP request refused");
    (status, msg).into_response()
}

/// The bearer token of a request, if it has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
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
    let claims = state
        .keys
        .verify(token)
        .map_err(|e| deny(StatusCode::UNAUTHORIZED, "invalid_token", e.to_string()))?;
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
    let links: Vec<String> = ice_servers_for(&state.config.ice_servers, &claims.sub, crate::auth::unix_now())
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
    // When the engine drops the participant (its connection failed), forget the resource.
    let reaper = state.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if matches!(ev, RoomEvent::Closed { .. }) {
                break;
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
            return fail(
                &state,
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                e.to_string(),
            )
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
