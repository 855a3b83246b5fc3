//! The `/ws` endpoint: one task per WebSocket, a thin translator between protocol messages and
//! the participant's [`SessionHandle`], and the bounds on what one connection may do: caps on
//! connections, a fixed join deadline, small frames before join, a message rate, keepalive
//! pings with an idle timeout, the token's expiry, and per-participant caps on media sections,
//! candidates and subscriptions. Each refusal is an [`ErrorCode`] (docs/protocol.md §8).
//!
//! A socket lost without `leave` does not end its participant: the session is parked for
//! `signal.resume_grace_secs` and a new socket may take it back with `resume`
//! ([`crate::resume`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::Extensions;
use axum::response::Response;
use chorus_sfu::{CandidateInit, Origin, Permissions, RoomEvent, SessionHandle};
use tracing::{debug, info, info_span, Instrument};

use crate::auth::{Claims, TokenError};
use crate::convert::{event_message, media_sections, participant_info, role, sfu_quality};
use crate::ice::ice_servers_for;
use crate::limits::{ConnRefusal, ConnSlot, TokenBucket};
use crate::protocol::{
    ClientMessage, ErrorCode, Quality, ServerMessage, MAX_MESSAGE_BYTES, PROTOCOL_VERSION,
};
use crate::resume::{park, Held, Takeover, Ticket};
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
    /// The socket is done: failed, or closed by the client with anything but a normal
    /// closure (1000): the session may be resumed.
    Done,
    /// The client closed the socket with a normal closure (1000): as good as `leave`.
    Closed,
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
            Message::Close(Some(CloseFrame { code, .. })) if code == close_code::NORMAL => {
                return Incoming::Closed
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
    // 1000: normal end (leave, server removed us, replaced by a resumed socket); 1008: the
    // join was refused, or the client broke a limit (rate, idle, token expiry).
    let (code, reason) = match join(&mut conn).await {
        Some((held, ticket)) => {
            conn.joined = true;
            let span = info_span!("participant", room = %held.claims.grants.room, participant = %held.session.me.id);
            let grace = Duration::from_secs(state.config.resume_grace_secs);
            let mut ticket = ticket;
            let (end, held) = run(&mut conn, held, ticket.as_mut()).instrument(span).await;
            match (end, held, ticket) {
                (End::Lost, Some(held), Some(ticket)) if state.resumable.open() => {
                    info!(participant = %ticket.id, "websocket lost, keeping the session for a resume");
                    tokio::spawn(park(state.clone(), held, ticket, grace));
                    (close_code::AWAY, "lost")
                }
                (End::Replaced(reply), Some(held), _) => {
                    let _ = reply.send(held);
                    (close_code::NORMAL, "replaced by a resumed connection")
                }
                (end, held, ticket) => {
                    if let Some(ticket) = &ticket {
                        state.resumable.remove(ticket);
                    }
                    if let Some(held) = held {
                        held.session.handle.leave();
                    }
                    match end {
                        End::Policy(reason) => (close_code::POLICY, reason),
                        _ => (close_code::NORMAL, "bye"),
                    }
                }
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

/// Waits for `join` (or `resume`) until a fixed deadline, checks it, and joins the room (or
/// takes the session back).
async fn join(conn: &mut Conn) -> Option<(Held, Option<Ticket>)> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(conn.state.config.join_timeout_secs);
    let first = loop {
        match tokio::time::timeout_at(deadline, conn.recv()).await {
            Err(_) => {
                conn.error(ErrorCode::InvalidState, "no join message in time")
                    .await;
                return None;
            }
            Ok(Incoming::Done | Incoming::Closed | Incoming::RateLimited) => return None,
            Ok(Incoming::Nothing) => continue,
            Ok(Incoming::Message(m)) => break m,
        }
    };
    let (version, token) = match &first {
        ClientMessage::Join { version, token, .. }
        | ClientMessage::Resume { version, token, .. } => (*version, token.clone()),
        _ => {
            conn.error(ErrorCode::InvalidState, "the first message must be join")
                .await;
            return None;
        }
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
    match first {
        ClientMessage::Resume {
            participant_id,
            resume_token,
            ..
        } => resume(conn, claims, &participant_id, &resume_token).await,
        ClientMessage::Join {
            auto_subscribe,
            quality,
            ..
        } => join_room(conn, claims, auto_subscribe, quality).await,
        _ => None,
    }
}

/// Joins the room a verified token names and sends `joined`.
async fn join_room(
    conn: &mut Conn,
    claims: Claims,
    auto_subscribe: bool,
    quality: Quality,
) -> Option<(Held, Option<Ticket>)> {
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
    let grace = Duration::from_secs(conn.state.config.resume_grace_secs);
    let (resume_token, ticket) = conn
        .state
        .resumable
        .register(&session.me.id, &claims, grace);
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
        resume_token,
    };
    let held = Held {
        session,
        claims,
        candidates: 0,
        subscribed: Default::default(),
    };
    if !conn.send(&joined).await {
        if let Some(t) = &ticket {
            conn.state.resumable.remove(t);
        }
        return None;
    }
    info!(identity = %held.claims.sub, "joined over websocket");
    Some((held, ticket))
}

/// Takes back the session of `participant_id` (parked after a lost socket, or still held by
/// a stale one, which is closed), restarts the subscriber connection's ICE and sends
/// `resumed`; `resume_failed` otherwise.
async fn resume(
    conn: &mut Conn,
    claims: Claims,
    participant_id: &str,
    resume_token: &str,
) -> Option<(Held, Option<Ticket>)> {
    let state = conn.state.clone();
    let failed = |why: &str| {
        state.metrics.resumes.with_label_values(&["failed"]).inc();
        info!(participant = %participant_id, why, "resume refused");
    };
    let mut held = match state
        .resumable
        .take(participant_id, resume_token, &claims)
        .await
    {
        Ok(h) => h,
        Err(why) => {
            failed(why.reason());
            conn.error(ErrorCode::ResumeFailed, "no session to resume: join again")
                .await;
            return None;
        }
    };
    held.claims = claims;
    let (me, others) = match held.session.handle.resume().await {
        Ok(room) => room,
        Err(e) => {
            failed("the participant is gone");
            conn.error(
                ErrorCode::ResumeFailed,
                format!("no session to resume: {e}"),
            )
            .await;
            return None;
        }
    };
    // What the session heard before the resume is stale: `resumed` carries the room as it
    // is now, and the ICE-restart offer the resume just made supersedes any earlier offer (an
    // answer to one would be taken for the answer to it). Keep that offer and what follows.
    let mut queued = Vec::new();
    while let Ok(ev) = held.session.events.try_recv() {
        if matches!(ev, RoomEvent::SubscriberOffer(_)) {
            queued.clear();
        }
        queued.push(ev);
    }
    let mut after = Vec::with_capacity(queued.len());
    for ev in queued {
        match event_message(ev) {
            Ok(m) => after.push(m),
            Err(reason) => {
                failed("the participant was removed");
                conn.error(
                    ErrorCode::ResumeFailed,
                    format!("no session to resume: {reason}"),
                )
                .await;
                return None;
            }
        }
    }
    let grace = Duration::from_secs(state.config.resume_grace_secs);
    let (resume_token, ticket) = state.resumable.register(&me.id, &held.claims, grace);
    let resumed = ServerMessage::Resumed {
        version: PROTOCOL_VERSION,
        room: held.claims.grants.room.clone(),
        participant: participant_info(&me),
        participants: others.iter().map(participant_info).collect(),
        ice_servers: ice_servers_for(
            &state.config.ice_servers,
            &held.claims.sub,
            crate::auth::unix_now(),
            held.claims.exp,
        ),
        resume_token,
    };
    let mut sent = conn.send(&resumed).await;
    for m in &after {
        sent = sent && conn.send(m).await;
    }
    if !sent {
        // Lost again at once: keep it parked for a grace period (the client resumes again,
        // and gets a new offer then).
        if let Some(ticket) = ticket {
            tokio::spawn(park(state.clone(), held, ticket, grace));
        }
        return None;
    }
    state.metrics.resumes.with_label_values(&["ok"]).inc();
    info!(identity = %held.claims.sub, participant = %me.id, "resumed over websocket");
    Some((held, ticket))
}

/// How a joined connection ended.
enum End {
    /// Leave, or the server removed the participant: the session is over.
    Normal,
    /// The socket was lost (closed or failed without `leave`): the session may be resumed.
    Lost,
    /// A `resume` on another socket asked for the session: hand it over.
    Replaced(Takeover),
    /// The client broke a limit; the reason goes in the close frame.
    Policy(&'static str),
}

/// When the token with expiry `exp` (Unix seconds) runs out, on the tokio clock.
fn expiry_instant(exp: u64) -> tokio::time::Instant {
    let left = exp.saturating_sub(crate::auth::unix_now());
    tokio::time::Instant::now() + Duration::from_secs(left)
}

/// The joined connection: client messages in, room events out, until either side ends, the
/// client goes silent, its token expires, or a resume takes the session elsewhere. Returns
/// the session unless it ended here for good (the caller parks, hands over or drops it).
async fn run(conn: &mut Conn, mut held: Held, ticket: Option<&mut Ticket>) -> (End, Option<Held>) {
    let handle = held.session.handle.clone();
    let ping_every = Duration::from_secs(conn.state.config.ping_interval_secs);
    let idle_timeout = Duration::from_secs(conn.state.config.idle_timeout_secs);
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let expiry = tokio::time::sleep_until(expiry_instant(held.claims.exp));
    tokio::pin!(expiry);
    // Take-over requests (none when resuming is off, or after shutdown closed them).
    let mut requests = ticket.map(|t| &mut t.requests);
    let end = loop {
        tokio::select! {
            req = async {
                match requests.as_mut() {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            } => match req {
                Some(reply) => break End::Replaced(reply),
                None => requests = None,
            },
            msg = conn.recv() => match msg {
                Incoming::Done => break End::Lost,
                Incoming::Closed => break End::Normal,
                Incoming::RateLimited => break End::Policy("rate limited"),
                Incoming::Nothing => {}
                Incoming::Message(ClientMessage::Leave {}) => break End::Normal,
                Incoming::Message(ClientMessage::RefreshToken { token }) => {
                    if let Some(exp) = refresh(conn, &held.claims, &token).await {
                        held.claims.exp = exp;
                        expiry.as_mut().reset(expiry_instant(exp));
                    }
                }
                Incoming::Message(m) => {
                    if !dispatch(conn, &handle, &mut held, m).await {
                        break End::Lost;
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
                    break End::Lost;
                }
            }
            () = &mut expiry => {
                conn.error(ErrorCode::TokenExpired, "the session's token expired").await;
                info!(identity = %held.claims.sub, "token expired, removing participant");
                break End::Policy("token expired");
            }
            ev = held.session.events.recv() => {
                let Some(ev) = ev else { break End::Normal };
                let out = match event_message(ev) {
                    Ok(out) => out,
                    Err(reason) => {
                        conn.error(ErrorCode::InvalidState, format!("removed from room: {reason}")).await;
                        break End::Normal;
                    }
                };
                if !conn.send(&out).await {
                    break End::Lost;
                }
            }
        }
    };
    match end {
        End::Lost | End::Replaced(_) => (end, Some(held)),
        End::Normal | End::Policy(_) => {
            handle.leave();
            (end, None)
        }
    }
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

/// Handles one client message; false when the socket failed or the participant is gone.
async fn dispatch(
    conn: &mut Conn,
    handle: &SessionHandle,
    held: &mut Held,
    m: ClientMessage,
) -> bool {
    let claims = &held.claims;
    let limits = &conn.state.config;
    let (max_sections, max_candidates, max_subs) = (
        limits.max_media_sections,
        limits.max_candidates,
        limits.max_subscriptions,
    );
    let result = match m {
        ClientMessage::Join { .. } | ClientMessage::Resume { .. } => {
            return conn.error(ErrorCode::InvalidState, "already joined").await;
        }
        // Handled by `run`, which owns the expiry and the session's end.
        ClientMessage::RefreshToken { .. } | ClientMessage::Leave {} => return true,
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
            if held.candidates >= max_candidates {
                return conn
                    .error(
                        ErrorCode::LimitExceeded,
                        format!("more than {max_candidates} ICE candidates"),
                    )
                    .await;
            }
            held.candidates += 1;
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
            let new: std::collections::HashSet<&String> = track_ids
                .iter()
                .filter(|t| !held.subscribed.contains(*t))
                .collect();
            if track_ids.len() > max_subs || held.subscribed.len() + new.len() > max_subs {
                return conn
                    .error(
                        ErrorCode::LimitExceeded,
                        format!("more than {max_subs} subscriptions"),
                    )
                    .await;
            }
            let result = handle.set_subscribed(track_ids.clone(), true).await;
            if result.is_ok() {
                held.subscribed.extend(track_ids);
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
                held.subscribed.remove(t);
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
