//! The operator's HTTP API, on only when `admin.key` is set, every request authorized by
//! `Authorization: Bearer <admin key>` (401 `invalid_token` otherwise):
//!
//! - `GET /admin/rooms`: every room with its participants (JSON, [`RoomsResponse`]).
//! - `DELETE /admin/rooms/{room}`: removes everyone from a room, which closes it.
//! - `DELETE /admin/rooms/{room}/participants/{identity}`: removes one participant.
//!
//! Removed WebSocket participants get `invalid_state` "removed from room: …" and their socket is
//! closed; WHIP/WHEP sessions end.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use chorus_sfu::SfuError;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::auth::{bearer, constant_time_eq};
use crate::SharedState;

/// The reason a removed participant hears.
pub const REMOVED_REASON: &str = "removed by the operator";
/// The reason participants of a closed room hear.
pub const CLOSED_REASON: &str = "room closed by the operator";

/// `GET /admin/rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomsResponse {
    /// Rooms, sorted by name.
    pub rooms: Vec<AdminRoom>,
}

/// One room in [`RoomsResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRoom {
    /// The room's name.
    pub name: String,
    /// Its participants, in join order.
    pub participants: Vec<AdminParticipant>,
}

/// One participant in [`AdminRoom`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminParticipant {
    /// Server-assigned id.
    pub id: String,
    /// Identity from the token.
    pub identity: String,
    /// Display name.
    pub name: String,
    /// Number of published tracks.
    pub tracks: usize,
}

/// `DELETE /admin/rooms/{room}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedResponse {
    /// How many participants were removed.
    pub removed: usize,
}

/// The admin routes (merged into the main router when a key is configured).
pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/admin/rooms", get(list_rooms))
        .route("/admin/rooms/{room}", delete(close_room))
        .route(
            "/admin/rooms/{room}/participants/{identity}",
            delete(remove_participant),
        )
}

/// `Err` is the 401 to send.
fn authorize(state: &SharedState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let ok = match (&state.http.admin_key, bearer(headers)) {
        (Some(key), Some(got)) => constant_time_eq(got.as_bytes(), key.as_bytes()),
        _ => false,
    };
    if ok {
        return Ok(());
    }
    state
        .refusals
        .refused("admin", "missing or wrong admin key", None);
    state
        .metrics
        .errors
        .with_label_values(&["invalid_token"])
        .inc();
    Err(Box::new(
        (StatusCode::UNAUTHORIZED, "invalid_token").into_response(),
    ))
}

fn sfu_failure(e: &SfuError) -> Response {
    match e {
        SfuError::NotFound(what) => (StatusCode::NOT_FOUND, what.clone()).into_response(),
        other => (StatusCode::INTERNAL_SERVER_ERROR, other.to_string()).into_response(),
    }
}

async fn list_rooms(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    match state.sfu.rooms().await {
        Ok(rooms) => Json(RoomsResponse {
            rooms: rooms
                .into_iter()
                .map(|(name, members)| AdminRoom {
                    name,
                    participants: members
                        .into_iter()
                        .map(|p| AdminParticipant {
                            id: p.id,
                            identity: p.identity,
                            name: p.name,
                            tracks: p.tracks.len(),
                        })
                        .collect(),
                })
                .collect(),
        })
        .into_response(),
        Err(e) => sfu_failure(&e),
    }
}

async fn close_room(
    State(state): State<SharedState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    match state.sfu.close_room(&room, CLOSED_REASON).await {
        Ok(removed) => {
            info!(%room, removed, "admin: room closed");
            Json(RemovedResponse { removed }).into_response()
        }
        Err(e) => sfu_failure(&e),
    }
}

async fn remove_participant(
    State(state): State<SharedState>,
    Path((room, identity)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers) {
        return *r;
    }
    match state
        .sfu
        .remove_participant(&room, &identity, REMOVED_REASON)
        .await
    {
        Ok(()) => {
            info!(%room, %identity, "admin: participant removed");
            Json(RemovedResponse { removed: 1 }).into_response()
        }
        Err(e) => sfu_failure(&e),
    }
}
