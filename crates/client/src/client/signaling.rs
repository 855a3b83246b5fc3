//! The WebSocket: the `join` handshake, the writer task (client messages and keep-alive
//! pings) and the [`CandidateGate`] that holds local ICE candidates until their SDP is sent.

use super::error::ClientError;
use chorus_signal::protocol::{
    ClientMessage, IceCandidate, IceServer, ParticipantInfo, ServerMessage, Target,
    PROTOCOL_VERSION,
};
use futures::{SinkExt, StreamExt};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// How often the client pings the server to keep the WebSocket alive (more often when
/// [`ReconnectPolicy::silence_timeout`](super::ReconnectPolicy::silence_timeout) asks).
pub(super) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// What the signaling writer sends.
pub(super) enum Outgoing {
    Message(ClientMessage),
    /// Flush, close the WebSocket and acknowledge.
    Close(oneshot::Sender<()>),
}

/// Holds a connection's local ICE candidates until its first local description has been sent,
/// so the server never sees a candidate before the SDP it belongs to.
pub(super) struct CandidateGate {
    pub(super) target: Target,
    pub(super) queued: Mutex<Option<Vec<IceCandidate>>>,
}

impl CandidateGate {
    pub(super) fn new(target: Target) -> Self {
        Self {
            target,
            queued: Mutex::new(Some(Vec::new())),
        }
    }

    pub(super) fn send(&self, candidate: IceCandidate, out: &mpsc::UnboundedSender<Outgoing>) {
        let mut queued = self.queued.lock().unwrap_or_else(PoisonError::into_inner);
        match queued.as_mut() {
            Some(q) => q.push(candidate),
            None => {
                let _ = out.send(Outgoing::Message(ClientMessage::Candidate {
                    target: self.target,
                    candidate,
                }));
            }
        }
    }

    pub(super) fn open(&self, out: &mpsc::UnboundedSender<Outgoing>) {
        let mut queued = self.queued.lock().unwrap_or_else(PoisonError::into_inner);
        for candidate in queued.take().unwrap_or_default() {
            let _ = out.send(Outgoing::Message(ClientMessage::Candidate {
                target: self.target,
                candidate,
            }));
        }
    }
}

/// The server's `joined` (or `resumed`).
pub(super) struct Joined {
    pub(super) room: String,
    pub(super) participant: ParticipantInfo,
    pub(super) participants: Vec<ParticipantInfo>,
    pub(super) ice_servers: Vec<IceServer>,
    /// What takes the session back if the WebSocket is lost (empty: the server keeps none).
    pub(super) resume_token: String,
}

/// The WebSocket's two halves.
pub(super) type WsSink = futures::stream::SplitSink<WsStream, Message>;
/// The WebSocket's reading half.
pub(super) type WsSource = futures::stream::SplitStream<WsStream>;

/// Connects the WebSocket at `url`, sends `join` (or `resume`) and waits for `joined` (or
/// `resumed`), each step within `timeout`.
pub(super) async fn join(
    url: &str,
    join: ClientMessage,
    timeout: Duration,
) -> Result<(WsSink, WsSource, Joined), ClientError> {
    let (ws, _) = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(url))
        .await
        .map_err(|_| ClientError::Timeout("the websocket to connect"))?
        .map_err(Box::new)?;
    let (mut sink, mut stream) = ws.split();

    sink.send(Message::text(serde_json::to_string(&join)?))
        .await
        .map_err(Box::new)?;

    let joined = tokio::time::timeout(timeout, async {
        while let Some(msg) = stream.next().await {
            let text = match msg.map_err(Box::new)? {
                Message::Text(t) => t,
                Message::Close(_) => return Err(ClientError::Closed),
                _ => continue,
            };
            match serde_json::from_str::<ServerMessage>(text.as_str())? {
                ServerMessage::Error { code, message } => {
                    return Err(ClientError::Rejected { code, message })
                }
                m @ (ServerMessage::Joined { .. } | ServerMessage::Resumed { .. }) => return Ok(m),
                other => {
                    return Err(ClientError::Protocol(format!(
                        "expected joined, got {other:?}"
                    )))
                }
            }
        }
        Err(ClientError::Closed)
    })
    .await
    .map_err(|_| ClientError::Timeout("joined"))??;
    let (ServerMessage::Joined {
        room,
        participant,
        participants,
        ice_servers,
        version,
        resume_token,
    }
    | ServerMessage::Resumed {
        room,
        participant,
        participants,
        ice_servers,
        version,
        resume_token,
    }) = joined
    else {
        return Err(ClientError::Protocol("expected joined".into()));
    };
    if version != PROTOCOL_VERSION {
        tracing::warn!(version, "server speaks another protocol version");
    }
    Ok((
        sink,
        stream,
        Joined {
            room,
            participant,
            participants,
            ice_servers,
            resume_token,
        },
    ))
}

pub(super) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A new WebSocket for the writer (after a resume), acknowledged once the writer has dropped
/// what was queued while no socket was up.
pub(super) type NewSink = (WsSink, oneshot::Sender<()>);

/// The writer: sends client messages and keep-alive pings on the current WebSocket, and
/// moves to a new one when the signaling task hands it over (`sinks`, after a resume);
/// messages queued before the switch are dropped (they belonged to the lost session's
/// negotiation). While the socket is broken, messages wait for the next one.
pub(super) async fn write_signaling(
    sink: WsSink,
    mut out: mpsc::UnboundedReceiver<Outgoing>,
    mut sinks: mpsc::UnboundedReceiver<NewSink>,
    keepalive_every: Duration,
) {
    let mut sink = Some(sink);
    let mut keepalive = tokio::time::interval(keepalive_every);
    keepalive.tick().await;
    loop {
        let msg = tokio::select! {
            next = sinks.recv() => {
                let Some((next, ready)) = next else { return };
                while let Ok(stale) = out.try_recv() {
                    if let Outgoing::Close(ack) = stale {
                        let _ = ack.send(());
                        return;
                    }
                }
                sink = Some(next);
                let _ = ready.send(());
                continue;
            }
            m = out.recv(), if sink.is_some() => match m {
                Some(Outgoing::Message(m)) => m,
                Some(Outgoing::Close(ack)) => {
                    if let Some(s) = sink.as_mut() {
                        let _ = s.close().await;
                    }
                    let _ = ack.send(());
                    return;
                }
                None => return,
            },
            _ = keepalive.tick(), if sink.is_some() => ClientMessage::Ping { timestamp: unix_millis() },
        };
        let text = match serde_json::to_string(&msg) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode client message");
                continue;
            }
        };
        if let Some(s) = sink.as_mut() {
            if let Err(e) = s.send(Message::text(text)).await {
                tracing::debug!(error = %e, "signaling write failed");
                sink = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_wait_for_the_gate() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let gate = CandidateGate::new(Target::Subscriber);
        let cand = |c: &str| IceCandidate {
            candidate: c.into(),
            sdp_mid: None,
            sdp_m_line_index: Some(0),
            username_fragment: None,
        };
        gate.send(cand("a"), &tx);
        assert!(rx.try_recv().is_err());
        gate.open(&tx);
        gate.send(cand("b"), &tx);
        gate.open(&tx);
        let mut got = Vec::new();
        while let Ok(Outgoing::Message(ClientMessage::Candidate { target, candidate })) =
            rx.try_recv()
        {
            assert_eq!(target, Target::Subscriber);
            got.push(candidate.candidate);
        }
        assert_eq!(got, vec!["a", "b"]);
    }

    /// A WebSocket server that answers the first message with `reply` (JSON) and returns
    /// what it received.
    async fn server(reply: String) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut ws = tokio_tungstenite::accept_async(tcp)
                .await
                .expect("handshake");
            let first = match ws.next().await {
                Some(Ok(Message::Text(t))) => t.to_string(),
                other => panic!("expected join, got {other:?}"),
            };
            ws.send(Message::text(reply)).await.expect("reply");
            first
        });
        (url, task)
    }

    fn join_message() -> ClientMessage {
        ClientMessage::Join {
            version: PROTOCOL_VERSION,
            token: "tok".into(),
            auto_subscribe: true,
            quality: chorus_signal::protocol::Quality::High,
        }
    }

    fn participant(id: &str) -> ParticipantInfo {
        ParticipantInfo {
            id: id.into(),
            identity: id.into(),
            name: id.into(),
            tracks: Vec::new(),
        }
    }

    #[tokio::test]
    async fn join_sends_join_and_returns_joined() {
        let joined = ServerMessage::Joined {
            version: PROTOCOL_VERSION,
            room: "r".into(),
            participant: participant("me"),
            participants: vec![participant("other")],
            ice_servers: Vec::new(),
            resume_token: "rt".into(),
        };
        let (url, srv) = server(serde_json::to_string(&joined).expect("json")).await;
        let (_sink, _stream, joined) = join(&url, join_message(), Duration::from_secs(5))
            .await
            .expect("joins");
        assert_eq!(joined.room, "r");
        assert_eq!(joined.participant.id, "me");
        assert_eq!(joined.participants.len(), 1);
        assert_eq!(joined.resume_token, "rt");
        let sent: ClientMessage = serde_json::from_str(&srv.await.expect("server")).expect("json");
        assert_eq!(sent, join_message());
    }

    #[tokio::test]
    async fn join_reports_refusals_and_surprises() {
        let refused = ServerMessage::Error {
            code: chorus_signal::protocol::ErrorCode::InvalidToken,
            message: "bad".into(),
        };
        let (url, _srv) = server(serde_json::to_string(&refused).expect("json")).await;
        let r = join(&url, join_message(), Duration::from_secs(5)).await;
        assert!(
            matches!(&r, Err(ClientError::Rejected { message, .. }) if message == "bad"),
            "{:?}",
            r.err()
        );

        let pong = ServerMessage::Pong { timestamp: 1 };
        let (url, _srv) = server(serde_json::to_string(&pong).expect("json")).await;
        let r = join(&url, join_message(), Duration::from_secs(5)).await;
        assert!(matches!(r, Err(ClientError::Protocol(_))), "{:?}", r.err());

        let (url, _srv) = server("not json".into()).await;
        let r = join(&url, join_message(), Duration::from_secs(5)).await;
        assert!(matches!(r, Err(ClientError::Json(_))), "{:?}", r.err());
    }
}
