//! The `/ws` endpoint: one task per WebSocket, a thin translator between protocol messages and
//! the participant's [`SessionHandle`], and the bounds on what one connection may do: caps on
//! connections, a fixed join deadline, small frames before join, a message rate, keepalive
//! pings with an idle timeout, the token's expiry, and per-participant caps on media sections,
//! candidates and subscriptions. Each refusal is an [`ErrorCode`] (docs/protocol.md §8).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::Extensions;
use axum::response::Response;
use chorus_sfu::{
    CandidateInit, Origin, ParticipantDesc, PeerRole, Permissions, RoomEvent, Session,
    SessionHandle, TrackDesc, TrackKind as SfuKind,
};
use tracing::{debug, info, info_span, Instrument};

use crate::auth::{Claims, TokenError};
use crate::ice::ice_servers_for;
use crate::limits::{ConnRefusal, ConnSlot, TokenBucket};
use crate::protocol::{
    ClientMessage, ErrorCode, IceCandidate, ParticipantInfo, Quality, ServerMessage, Target,
    TrackInfo, TrackKind, MAX_MESSAGE_BYTES, PROTOCOL_VERSION,
};
use crate::{error_code, SharedState};

/// Frames above this size close the socket outright; between [`MAX_MESSAGE_BYTES`] and this
/// they get a `message_too_large` error and the connection goes on.
const HARD_FRAME_LIMIT: usize = 4 * 1024 * 1024;

/// `GET /ws`: upgrades to the signaling WebSocket, or, when the connection caps are reached,
/// answers `too_many_connections` on the upgraded socket and closes it.
pub async fn handler(
    ws: WebSocketUpgrade,
    State(state): State<SharedState>,
    extensions: Extensions,
) -> Response {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let slot = state.connections.acquire(peer, &state.config);
    ws.max_message_size(HARD_FRAME_LIMIT)
        .max_frame_size(HARD_FRAME_LIMIT)
        .on_upgrade(move |socket| async move {
            match slot {
                Ok(slot) => connection(socket, state, peer, slot).await,
                Err(why) => refuse_connection(socket, state, peer, why).await,
            }
        })
}

/// Tells a client over a cap why, and closes (1013: try again later).
async fn refuse_connection(
    mut socket: WebSocket,
    state: SharedState,
    peer: Option<IpAddr>,
    why: ConnRefusal,
) {
    let (reason, message) = match why {
        ConnRefusal::Total => (
            "server connection limit",
            "the server has too many connections",
        ),
        ConnRefusal::PerIp => (
            "per-address connection limit",
            "too many connections from your address",
        ),
    };
    state.refusals.refused("websocket", reason, peer);
    let code = ErrorCode::TooManyConnections;
    state
        .metrics
        .errors
        .with_label_values(&[code.as_str()])
        .inc();
    let msg = ServerMessage::Error {
        code,
        message: message.to_owned(),
    };
    if let Ok(text) = serde_json::to_string(&msg) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = socket.send(Message::Text(Utf8Bytes::from(text))).await;
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code: close_code::AGAIN,
                    reason: Utf8Bytes::from_static("too many connections"),
                })))
                .await;
        })
        .await;
    }
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
    peer: Option<IpAddr>,
    /// Messages this connection may still send now.
    bucket: TokenBucket,
    /// When the last frame (of any kind) arrived.
    last_rx: Instant,
    joined: bool,
}

/// What reading the socket gave.
enum Incoming {
    /// A protocol message.
    Message(ClientMessage),
    /// A frame that was handled already (control frame, or an error was sent).
    Nothing,
    /// The socket is done: closed by the client, or failed.
    Done,
    /// The client went over its message rate (`rate_limited` was sent).
    RateLimited,
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

    /// Reads the next client frame.
    async fn recv(&mut self) -> Incoming {
        let frame = match self.socket.recv().await {
            Some(Ok(f)) => f,
            _ => return Incoming::Done,
        };
        let now = Instant::now();
        self.last_rx = now;
        if !self.bucket.take(now) {
            self.state
                .refusals
                .refused("websocket message", "over the message rate", self.peer);
            self.error(
                ErrorCode::RateLimited,
                format!(
                    "more than {} messages per second",
                    self.state.config.messages_per_sec
                ),
            )
            .await;
            return Incoming::RateLimited;
        }
        let text = match frame {
            Message::Text(t) => t,
            Message::Binary(_) => {
                self.error(
                    ErrorCode::BadMessage,
                    "binary frames are not part of the protocol",
                )
                .await;
                return Incoming::Nothing;
            }
            Message::Close(_) => return Incoming::Done,
            Message::Ping(_) | Message::Pong(_) => return Incoming::Nothing,
        };
        let limit = if self.joined {
            MAX_MESSAGE_BYTES
        } else {
            self.state.config.max_frame_bytes_before_join
        };
        if text.len() > limit {
            let when = if self.joined { "" } else { " before join" };
            self.error(
                ErrorCode::MessageTooLarge,
                format!("message of {} bytes exceeds {limit}{when}", text.len()),
            )
            .await;
            return Incoming::Nothing;
        }
        match serde_json::from_str::<ClientMessage>(text.as_str()) {
            Ok(m) => {
                self.state
                    .metrics
                    .messages
                    .with_label_values(&[m.kind()])
                    .inc();
                Incoming::Message(m)
            }
            Err(e) => {
                self.state
                    .metrics
                    .messages
                    .with_label_values(&["invalid"])
                    .inc();
                self.error(ErrorCode::BadMessage, format!("cannot parse message: {e}"))
                    .await;
                Incoming::Nothing
            }
        }
    }

    /// Refuses a token: the client hears only `invalid_token`; the reason goes to the log, at
    /// a bounded rate.
    async fn refuse_token(&mut self, e: &TokenError, what: &str) {
        self.state.refusals.refused(what, e.reason(), self.peer);
        self.error(ErrorCode::InvalidToken, "invalid token").await;
    }
}

async fn connection(socket: WebSocket, state: SharedState, peer: Option<IpAddr>, _slot: ConnSlot) {
    state.metrics.websockets.inc();
    let now = Instant::now();
    let mut conn = Conn {
        socket,
        state: state.clone(),
        peer,
        bucket: TokenBucket::new(
            state.config.messages_per_sec,
            state.config.message_burst,
            now,
        ),
        last_rx: now,
        joined: false,
    };
    // 1000: normal end (leave, server removed us); 1008: the join was refused, or the client
    // broke a limit (rate, idle, token expiry).
    let (code, reason) = match join(&mut conn).await {
        Some((session, claims)) => {
            conn.joined = true;
            let span =
                info_span!("participant", room = %claims.grants.room, participant = %session.me.id);
            match run(&mut conn, session, claims).instrument(span).await {
                End::Normal => (close_code::NORMAL, "bye"),
                End::Policy(reason) => (close_code::POLICY, reason),
            }
        }
        None => (close_code::POLICY, "join refused"),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        conn.socket.send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }))),
    )
    .await;
    state.metrics.websockets.dec();
}

/// Waits for `join` until a fixed deadline, checks it, and joins the room.
async fn join(conn: &mut Conn) -> Option<(Session, Claims)> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(conn.state.config.join_timeout_secs);
    let first = loop {
        match tokio::time::timeout_at(deadline, conn.recv()).await {
            Err(_) => {
                conn.error(ErrorCode::InvalidState, "no join message in time")
                    .await;
                return None;
            }
            Ok(Incoming::Done | Incoming::RateLimited) => return None,
            Ok(Incoming::Nothing) => continue,
            Ok(Incoming::Message(m)) => break m,
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
            conn.refuse_token(&e, "websocket join").await;
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
            claims.exp,
        ),
    };
    if !conn.send(&joined).await {
        return None;
    }
    info!(identity = %claims.sub, "joined over websocket");
    Some((session, claims))
}

/// How a joined connection ended.
enum End {
    /// Leave, the socket closed, or the server removed the participant.
    Normal,
    /// The client broke a limit; the reason goes in the close frame.
    Policy(&'static str),
}

/// What a joined connection is allowed and has used.
struct Budget {
    candidates: usize,
    subscribed: HashSet<String>,
}

/// When the token with expiry `exp` (Unix seconds) runs out, on the tokio clock.
fn expiry_instant(exp: u64) -> tokio::time::Instant {
    let left = exp.saturating_sub(crate::auth::unix_now());
    tokio::time::Instant::now() + Duration::from_secs(left)
}

/// The joined connection: client messages in, room events out, until either side ends, the
/// client goes silent, or its token expires.
async fn run(conn: &mut Conn, mut session: Session, mut claims: Claims) -> End {
    let handle = session.handle.clone();
    let ping_every = Duration::from_secs(conn.state.config.ping_interval_secs);
    let idle_timeout = Duration::from_secs(conn.state.config.idle_timeout_secs);
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let expiry = tokio::time::sleep_until(expiry_instant(claims.exp));
    tokio::pin!(expiry);
    let mut budget = Budget {
        candidates: 0,
        subscribed: HashSet::new(),
    };
    let end = loop {
        tokio::select! {
            msg = conn.recv() => match msg {
                Incoming::Done => break End::Normal,
                Incoming::RateLimited => break End::Policy("rate limited"),
                Incoming::Nothing => {}
                Incoming::Message(ClientMessage::RefreshToken { token }) => {
                    if let Some(exp) = refresh(conn, &claims, &token).await {
                        claims.exp = exp;
                        expiry.as_mut().reset(expiry_instant(exp));
                    }
                }
                Incoming::Message(m) => {
                    if !dispatch(conn, &handle, &claims, &mut budget, m).await {
                        break End::Normal;
                    }
                }
            },
            _ = pings.tick() => {
                if conn.last_rx.elapsed() >= idle_timeout {
                    conn.error(
                        ErrorCode::IdleTimeout,
                        format!("nothing received for {idle_timeout:?}"),
                    )
                    .await;
                    break End::Policy("idle timeout");
                }
                if conn.socket.send(Message::Ping(Default::default())).await.is_err() {
                    break End::Normal;
                }
            }
            () = &mut expiry => {
                conn.error(ErrorCode::TokenExpired, "the session's token expired").await;
                info!(identity = %claims.sub, "token expired, removing participant");
                break End::Policy("token expired");
            }
            ev = session.events.recv() => {
                let Some(ev) = ev else { break End::Normal };
                let out = match ev {
                    RoomEvent::Closed { reason } => {
                        conn.error(ErrorCode::InvalidState, format!("removed from room: {reason}")).await;
                        break End::Normal;
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
                    break End::Normal;
                }
            }
        }
    };
    handle.leave();
    end
}

/// Checks a refreshed token: valid, same identity, room and grants. Returns its expiry.
async fn refresh(conn: &mut Conn, claims: &Claims, token: &str) -> Option<u64> {
    let fresh = match conn.state.keys.verify(token) {
        Ok(c) => c,
        Err(e) => {
            conn.refuse_token(&e, "token refresh").await;
            return None;
        }
    };
    if fresh.sub != claims.sub || fresh.grants != claims.grants {
        conn.error(
            ErrorCode::PermissionDenied,
            "a refreshed token must name the same identity, room and grants",
        )
        .await;
        return None;
    }
    debug!(exp = fresh.exp, "token refreshed");
    Some(fresh.exp)
}

/// The number of media sections in an SDP.
pub fn media_sections(sdp: &str) -> usize {
    sdp.lines().filter(|l| l.starts_with("m=")).count()
}

/// Handles one client message; false ends the connection.
async fn dispatch(
    conn: &mut Conn,
    handle: &SessionHandle,
    claims: &Claims,
    budget: &mut Budget,
    m: ClientMessage,
) -> bool {
    let limits = &conn.state.config;
    let (max_sections, max_candidates, max_subs) = (
        limits.max_media_sections,
        limits.max_candidates,
        limits.max_subscriptions,
    );
    let result = match m {
        ClientMessage::Join { .. } => {
            return conn.error(ErrorCode::InvalidState, "already joined").await;
        }
        // Handled by `run`, which owns the expiry.
        ClientMessage::RefreshToken { .. } => return true,
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
            let sections = media_sections(&sdp);
            if sections > max_sections {
                return conn
                    .error(
                        ErrorCode::LimitExceeded,
                        format!("offer has {sections} media sections; at most {max_sections}"),
                    )
                    .await;
            }
            match handle.publisher_offer(sdp).await {
                Ok(sdp) => return conn.send(&ServerMessage::Answer { sdp }).await,
                Err(e) => Err(e),
            }
        }
        ClientMessage::Answer { sdp } => handle.subscriber_answer(sdp).await,
        ClientMessage::Candidate { target, candidate } => {
            if budget.candidates >= max_candidates {
                return conn
                    .error(
                        ErrorCode::LimitExceeded,
                        format!("more than {max_candidates} ICE candidates"),
                    )
                    .await;
            }
            budget.candidates += 1;
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
            let new: HashSet<&String> = track_ids
                .iter()
                .filter(|t| !budget.subscribed.contains(*t))
                .collect();
            if track_ids.len() > max_subs || budget.subscribed.len() + new.len() > max_subs {
                return conn
                    .error(
                        ErrorCode::LimitExceeded,
                        format!("more than {max_subs} subscriptions"),
                    )
                    .await;
            }
            let result = handle.set_subscribed(track_ids.clone(), true).await;
            if result.is_ok() {
                budget.subscribed.extend(track_ids);
            }
            result
        }
        ClientMessage::Unsubscribe { track_ids } => {
            if track_ids.len() > max_subs {
                return conn
                    .error(
                        ErrorCode::LimitExceeded,
                        format!("more than {max_subs} track ids in one message"),
                    )
                    .await;
            }
            for t in &track_ids {
                budget.subscribed.remove(t);
            }
            handle.set_subscribed(track_ids, false).await
        }
        ClientMessage::TrackSettings { track_ids, quality } => {
            if track_ids.len() > max_subs {
                return conn
                    .error(
                        ErrorCode::LimitExceeded,
                        format!("more than {max_subs} track ids in one message"),
                    )
                    .await;
            }
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
