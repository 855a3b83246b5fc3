//! The `/ws` endpoint: one task per WebSocket, a thin translator between protocol messages and
//! the participant's [`SessionHandle`].

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use chorus_sfu::{
    CandidateInit, Origin, ParticipantDesc, PeerRole, Permissions, RoomEvent, Session,
    SessionHandle, TrackDesc, TrackKind as SfuKind,
};
use tracing::{debug, info, info_span, Instrument};

use crate::auth::Claims;
use crate::ice::ice_servers_for;
use crate::protocol::{
    ClientMessage, ErrorCode, IceCandidate, ParticipantInfo, Quality, ServerMessage, Target,
    TrackInfo, TrackKind, MAX_MESSAGE_BYTES, PROTOCOL_VERSION,
};
use crate::{error_code, SharedState};

/// Frames above this size close the socket outright; between [`MAX_MESSAGE_BYTES`] and this
/// they get a `message_too_large` error and the connection goes on.
const HARD_FRAME_LIMIT: usize = 4 * 1024 * 1024;

/// `GET /ws`: upgrades to the signaling WebSocket.
pub async fn handler(ws: WebSocketUpgrade, State(state): State<SharedState>) -> Response {
    ws.max_message_size(HARD_FRAME_LIMIT)
        .max_frame_size(HARD_FRAME_LIMIT)
        .on_upgrade(move |socket| connection(socket, state))
}

fn sfu_quality(q: Quality) -> chorus_sfu::Quality {
    match q {
        Quality::Low => chorus_sfu::Quality::Low,
        Quality::Medium => chorus_sfu::Quality::Medium,
        Quality::High => chorus_sfu::Quality::High,
    }
}

/// Converts a media-plane track to its protocol shape.
pub fn track_info(t: &TrackDesc) -> TrackInfo {
    TrackInfo {
        id: t.id.clone(),
        kind: match t.kind {
            SfuKind::Audio => TrackKind::Audio,
            SfuKind::Video => TrackKind::Video,
        },
        mime_type: t.mime_type.clone(),
        publisher_track_id: t.publisher_track_id.clone(),
        muted: t.muted,
        layers: t.layers.clone(),
    }
}

/// Converts a media-plane participant to its protocol shape.
pub fn participant_info(p: &ParticipantDesc) -> ParticipantInfo {
    ParticipantInfo {
        id: p.id.clone(),
        identity: p.identity.clone(),
        name: p.name.clone(),
        tracks: p.tracks.iter().map(track_info).collect(),
    }
}

fn role(t: Target) -> PeerRole {
    match t {
        Target::Publisher => PeerRole::Publisher,
        Target::Subscriber => PeerRole::Subscriber,
    }
}

struct Conn {
    socket: WebSocket,
    state: SharedState,
}

impl Conn {
    async fn send(&mut self, msg: &ServerMessage) -> bool {
        let text = match serde_json::to_string(msg) {
            Ok(t) => t,
            Err(_) => return false,
        };
        self.socket
            .send(Message::Text(Utf8Bytes::from(text)))
            .await
            .is_ok()
    }

    async fn error(&mut self, code: ErrorCode, message: impl Into<String>) -> bool {
        self.state
            .metrics
            .errors
            .with_label_values(&[code.as_str()])
            .inc();
        let message = message.into();
        debug!(code = code.as_str(), %message, "signaling error");
        self.send(&ServerMessage::Error { code, message }).await
    }

    /// Reads the next client message; `Err(())` when the socket is done.
    async fn recv(&mut self) -> Result<Option<ClientMessage>, ()> {
        let frame = match self.socket.recv().await {
            Some(Ok(f)) => f,
            _ => return Err(()),
        };
        let text = match frame {
            Message::Text(t) => t,
            Message::Binary(_) => {
                self.error(
                    ErrorCode::BadMessage,
                    "binary frames are not part of the protocol",
                )
                .await;
                return Ok(None);
            }
            Message::Close(_) => return Err(()),
            Message::Ping(_) | Message::Pong(_) => return Ok(None),
        };
        if text.len() > MAX_MESSAGE_BYTES {
            self.error(
                ErrorCode::MessageTooLarge,
                format!(
                    "message of {} bytes exceeds {MAX_MESSAGE_BYTES}",
                    text.len()
                ),
            )
            .await;
            return Ok(None);
        }
        match serde_json::from_str::<ClientMessage>(text.as_str()) {
            Ok(m) => {
                self.state
                    .metrics
                    .messages
                    .with_label_values(&[m.kind()])
                    .inc();
                Ok(Some(m))
            }
            Err(e) => {
                self.state
                    .metrics
                    .messages
                    .with_label_values(&["invalid"])
                    .inc();
                self.error(ErrorCode::BadMessage, format!("cannot parse message: {e}"))
                    .await;
                Ok(None)
            }
        }
    }
}

async fn connection(socket: WebSocket, state: SharedState) {
    state.metrics.websockets.inc();
    let mut conn = Conn {
        socket,
        state: state.clone(),
    };
    // 1000: normal end (leave, server removed us); 1008: the join was refused.
    let (code, reason) = match join(&mut conn).await {
        Some((session, claims)) => {
            let span =
                info_span!("participant", room = %claims.grants.room, participant = %session.me.id);
            run(&mut conn, session, claims).instrument(span).await;
            (close_code::NORMAL, "bye")
        }
        None => (close_code::POLICY, "join refused"),
    };
    let _ = conn
        .socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })))
        .await;
    state.metrics.websockets.dec();
}

/// Waits for `join`, checks it, and joins the room.
async fn join(conn: &mut Conn) -> Option<(Session, Claims)> {
    let timeout = Duration::from_secs(conn.state.config.join_timeout_secs);
    let first = loop {
        match tokio::time::timeout(timeout, conn.recv()).await {
            Err(_) => {
                conn.error(ErrorCode::InvalidState, "no join message in time")
                    .await;
                return None;
            }
            Ok(Err(())) => return None,
            Ok(Ok(None)) => continue,
            Ok(Ok(Some(m))) => break m,
        }
    };
    let ClientMessage::Join {
        version,
        token,
        auto_subscribe,
        quality,
    } = first
    else {
        conn.error(ErrorCode::InvalidState, "the first message must be join")
            .await;
        return None;
    };
    if version != PROTOCOL_VERSION {
        conn.error(
            ErrorCode::UnsupportedVersion,
            format!("protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"),
        )
        .await;
        return None;
    }
    if !conn.state.ready.load(Ordering::Relaxed) {
        conn.error(ErrorCode::Internal, "server is shutting down")
            .await;
        return None;
    }
    let claims = match conn.state.keys.verify(&token) {
        Ok(c) => c,
        Err(e) => {
            conn.error(ErrorCode::InvalidToken, e.to_string()).await;
            return None;
        }
    };
    if !(claims.grants.can_publish || claims.grants.can_subscribe) {
        conn.error(
            ErrorCode::PermissionDenied,
            "token grants neither publish nor subscribe",
        )
        .await;
        return None;
    }
    let permissions = Permissions {
        publish: claims.grants.can_publish,
        subscribe: claims.grants.can_subscribe,
        publish_data: claims.grants.can_publish_data,
    };
    let mut request = crate::join_request(&claims, permissions, auto_subscribe, Origin::WebSocket);
    request.quality = sfu_quality(quality);
    let session = match conn.state.sfu.join(request).await {
        Ok(s) => s,
        Err(e) => {
            conn.error(error_code(&e), e.to_string()).await;
            return None;
        }
    };
    let joined = ServerMessage::Joined {
        version: PROTOCOL_VERSION,
        room: claims.grants.room.clone(),
        participant: participant_info(&session.me),
        participants: session.others.iter().map(participant_info).collect(),
        ice_servers: ice_servers_for(
            &conn.state.config.ice_servers,
            &claims.sub,
            crate::auth::unix_now(),
        ),
    };
    if !conn.send(&joined).await {
        return None;
    }
    info!(identity = %claims.sub, "joined over websocket");
    Some((session, claims))
}

/// The joined connection: client messages in, room events out, until either side ends.
async fn run(conn: &mut Conn, mut session: Session, claims: Claims) {
    let handle = session.handle.clone();
    loop {
        tokio::select! {
            msg = conn.recv() => match msg {
                Err(()) => break,
                Ok(None) => {}
                Ok(Some(m)) => {
                    if !dispatch(conn, &handle, &claims, m).await {
                        break;
                    }
                }
            },
            ev = session.events.recv() => {
                let Some(ev) = ev else { break };
                let out = match ev {
                    RoomEvent::Closed { reason } => {
                        conn.error(ErrorCode::InvalidState, format!("removed from room: {reason}")).await;
                        break;
                    }
                    RoomEvent::ParticipantJoined(p) => {
                        ServerMessage::ParticipantJoined { participant: participant_info(&p) }
                    }
                    RoomEvent::ParticipantLeft { participant_id } => {
                        ServerMessage::ParticipantLeft { participant_id }
                    }
                    RoomEvent::TrackPublished { participant_id, track } => {
                        ServerMessage::TrackPublished { participant_id, track: track_info(&track) }
                    }
                    RoomEvent::TrackUnpublished { participant_id, track_id } => {
                        ServerMessage::TrackUnpublished { participant_id, track_id }
                    }
                    RoomEvent::TrackMuted { participant_id, track_id, muted } => {
                        ServerMessage::TrackMuted { participant_id, track_id, muted }
                    }
                    RoomEvent::SubscriberOffer(sdp) => ServerMessage::Offer { sdp },
                    RoomEvent::Candidate { role, candidate } => ServerMessage::Candidate {
                        target: match role {
                            PeerRole::Publisher => Target::Publisher,
                            PeerRole::Subscriber => Target::Subscriber,
                        },
                        candidate: IceCandidate {
                            candidate: candidate.candidate,
                            sdp_mid: candidate.sdp_mid,
                            sdp_m_line_index: candidate.sdp_mline_index,
                            username_fragment: candidate.username_fragment,
                        },
                    },
                };
                if !conn.send(&out).await {
                    break;
                }
            }
        }
    }
    handle.leave();
}

/// Handles one client message; false ends the connection.
async fn dispatch(
    conn: &mut Conn,
    handle: &SessionHandle,
    claims: &Claims,
    m: ClientMessage,
) -> bool {
    let result = match m {
        ClientMessage::Join { .. } => {
            return conn.error(ErrorCode::InvalidState, "already joined").await;
        }
        ClientMessage::Leave {} => return false,
        ClientMessage::Ping { timestamp } => {
            return conn.send(&ServerMessage::Pong { timestamp }).await;
        }
        ClientMessage::Offer { sdp } => {
            if !claims.grants.can_publish {
                return conn
                    .error(ErrorCode::PermissionDenied, "token does not grant publish")
                    .await;
            }
            match handle.publisher_offer(sdp).await {
                Ok(sdp) => return conn.send(&ServerMessage::Answer { sdp }).await,
                Err(e) => Err(e),
            }
        }
        ClientMessage::Answer { sdp } => handle.subscriber_answer(sdp).await,
        ClientMessage::Candidate { target, candidate } => {
            handle
                .add_candidate(
                    role(target),
                    CandidateInit {
                        candidate: candidate.candidate,
                        sdp_mid: candidate.sdp_mid,
                        sdp_mline_index: candidate.sdp_m_line_index,
                        username_fragment: candidate.username_fragment,
                    },
                )
                .await
        }
        ClientMessage::Subscribe { track_ids } => {
            if !claims.grants.can_subscribe {
                return conn
                    .error(
                        ErrorCode::PermissionDenied,
                        "token does not grant subscribe",
                    )
                    .await;
            }
            handle.set_subscribed(track_ids, true).await
        }
        ClientMessage::Unsubscribe { track_ids } => handle.set_subscribed(track_ids, false).await,
        ClientMessage::TrackSettings { track_ids, quality } => {
            handle.set_quality(track_ids, sfu_quality(quality)).await
        }
        ClientMessage::Mute { track_id, muted } => handle.mute(track_id, muted).await,
    };
    match result {
        Ok(()) => true,
        Err(chorus_sfu::SfuError::Gone) => false,
        Err(e) => conn.error(error_code(&e), e.to_string()).await,
    }
}
