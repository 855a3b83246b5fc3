//! WHIP ([RFC 9725](https://www.rfc-editor.org/rfc/rfc9725)) publishing and WHEP playback: one
//! HTTP exchange per session, without trickle ICE.
//!
//! A [`WhipSession`] owns one connection: an async peer connection, or, with
//! [`ClientOptions::engine`], a lean endpoint on the shared engine (publishing needs
//! pre-encoded media for that). [`WhipSession::publish`] sends the same media a WebSocket
//! [`Client`](super::Client) publishes (same tracks, same capture stamps);
//! [`WhipSession::play`] receives audio and video `recvonly` and accounts every packet in the
//! same [`ReceivedTrackStats`] as a WebSocket subscriber. The
//! offer is sent once ICE gathering is complete, `POST`ed as `application/sdp` with the token
//! as a bearer token; the `201 Created` answer carries the SDP answer and the session's
//! `Location`, which [`WhipSession::leave`] `DELETE`s.
//!
//! HTTP is `reqwest`'s client over plain TCP (`http://` only, one request per connection, no
//! proxy), the response body limited to 1 MiB.

use super::connection::{
    build_pc, default_udp_addr, engine_bind_addr, Handler, PublisherConn, LEAVE_TIMEOUT,
};
use super::engine::EngineConn;
use super::error::ClientError;
use super::options::ClientOptions;
use super::publishing::{local_tracks, open_publisher, video_to_publish};
use super::shared::{lock, ConnectionStates, RtcpSentStats, Shared};
use crate::media::{LocalTrack, SentTrackStats};
use crate::stats::{offered_tracks, ReceivedTrackStats};
use chorus_signal::protocol::Target;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, RTCPeerConnectionState, RTCSessionDescription,
};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};

/// How long to wait for ICE gathering before offering the candidates gathered so far.
const GATHER_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest HTTP response accepted (an SDP answer is a few KiB).
const MAX_RESPONSE: usize = 1 << 20;
/// How much of an error response's body is kept in [`ClientError::HttpStatus`].
const MAX_ERROR_BODY: usize = 200;

/// Which of the two protocols a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhipKind {
    /// WHIP: publish audio and video.
    Publish,
    /// WHEP: play a publisher's audio and video.
    Play,
}

impl WhipKind {
    /// `whip` or `whep`.
    pub fn as_str(self) -> &'static str {
        match self {
            WhipKind::Publish => "whip",
            WhipKind::Play => "whep",
        }
    }
}

/// One WHIP or WHEP session.
///
/// Dropping it aborts its tasks and closes the peer connection without telling the server;
/// [`leave`](Self::leave) `DELETE`s the session resource first.
pub struct WhipSession {
    kind: WhipKind,
    resource: url::Url,
    token: String,
    timeout: Duration,
    shared: Arc<Shared>,
    conn: Conn,
    local_tracks: Vec<Arc<LocalTrack>>,
}

/// The session's connection: an async one of its own, or (with [`ClientOptions::engine`]) one
/// on a shared [`SharedEngine`](super::SharedEngine).
enum Conn {
    Own(Arc<dyn PeerConnection>),
    Engine(EngineConn),
}

impl Conn {
    async fn close(&self) {
        match self {
            Conn::Own(pc) => {
                let _ = pc.close().await;
            }
            Conn::Engine(conn) => conn.close(),
        }
    }
}

impl std::fmt::Debug for WhipSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhipSession")
            .field("kind", &self.kind)
            .field("resource", &self.resource.as_str())
            .field("states", &*self.shared.states.borrow())
            .finish_non_exhaustive()
    }
}

impl WhipSession {
    /// Publishes over WHIP.
    ///
    /// `opts.url` is the endpoint (`http://host:port/whip/<room>`), `opts.token` a token with
    /// the publish grant for that room. The media options (`publish_audio`, `publish_video`,
    /// `video_source`, `video_clip`, `audio_source`, `udp_addr`, `engine`) mean what they mean for
    /// [`Client::join`](super::Client::join); `join_timeout` limits the HTTP exchange. Returns
    /// once the answer is applied; media flows as soon as the connection is up.
    pub async fn publish(opts: ClientOptions) -> Result<Self, ClientError> {
        let url = endpoint_url(&opts.url)?;
        let video = video_to_publish(&opts)?;
        let shared = detached_shared(0);
        let stream_id = format!("whip-{:08x}", rand::random::<u32>());
        let local_tracks = local_tracks(&opts, video.as_ref());
        if local_tracks.is_empty() {
            return Err(ClientError::Protocol("WHIP needs audio or video".into()));
        }
        let (publisher, pending) = open_publisher(
            &opts,
            &url,
            &[],
            &udp_addr(&opts, &url),
            video,
            &local_tracks,
            &stream_id,
            &shared,
        )
        .await?;
        let session = |resource, conn| Self {
            kind: WhipKind::Publish,
            resource,
            token: opts.token.clone(),
            timeout: opts.join_timeout,
            shared: Arc::clone(&shared),
            conn,
            local_tracks: local_tracks.clone(),
        };
        match (publisher, pending) {
            (PublisherConn::Engine(conn), _) => {
                // The engine's offer is complete (host candidate, no gathering to wait for).
                let offer = conn.offer().await?;
                let (answer, resource) = post_offer(WhipKind::Publish, offer, &url, &opts).await?;
                conn.apply_answer(answer).await?;
                shared.states.send_modify(|s| s.publisher_answered = true);
                Ok(session(resource, Conn::Engine(conn)))
            }
            (PublisherConn::Own(pc), Some(pending)) => {
                let setup = async {
                    let (answer, resource) =
                        negotiate(WhipKind::Publish, &pc, &shared, &url, &opts).await?;
                    pc.set_remote_description(RTCSessionDescription::answer(answer)?)
                        .await?;
                    shared.states.send_modify(|s| s.publisher_answered = true);
                    pending.start(&shared);
                    Ok(resource)
                };
                match setup.await {
                    Ok(resource) => Ok(session(resource, Conn::Own(pc))),
                    Err(e) => {
                        close_quietly(&shared, &pc).await;
                        Err(e)
                    }
                }
            }
            _ => Err(ClientError::Protocol("no publisher connection".into())),
        }
    }

    /// Plays over WHEP.
    ///
    /// `opts.url` is the endpoint (`http://host:port/whep/<room>` for the room's most recent
    /// publisher, or `.../whep/<room>/<identity>`), `opts.token` a token with the subscribe
    /// grant. `decode_sample`, `impairment` and `udp_addr` mean what they mean for
    /// [`Client::join`](super::Client::join); the publishing options are ignored.
    pub async fn play(opts: ClientOptions) -> Result<Self, ClientError> {
        let url = endpoint_url(&opts.url)?;
        let shared = detached_shared(opts.decode_sample);
        if let Some(engine) = &opts.engine {
            let bind = engine_bind_addr(&url, opts.udp_addr.as_deref()).await?;
            let conn = engine
                .open(Arc::clone(&shared), bind, opts.impairment)
                .await?;
            let setup = async {
                let offer = conn.offer().await?;
                let (answer, resource) = post_offer(WhipKind::Play, offer, &url, &opts).await?;
                shared.set_extension_ids(&answer);
                *lock(&shared.offered) = offered_tracks(&answer);
                conn.apply_answer(answer).await?;
                shared.states.send_modify(|s| s.subscriber_offers = 1);
                Ok::<_, ClientError>(resource)
            };
            let resource = setup.await?;
            return Ok(Self {
                kind: WhipKind::Play,
                resource,
                token: opts.token,
                timeout: opts.join_timeout,
                shared,
                conn: Conn::Engine(conn),
                local_tracks: Vec::new(),
            });
        }
        let mut engine = MediaEngine::default();
        engine.register_default_codecs()?;
        let pc = build_pc(
            engine,
            &[],
            &udp_addr(&opts, &url),
            Handler {
                target: Target::Subscriber,
                shared: Arc::clone(&shared),
            },
            Arc::clone(&shared.rtcp_sent),
            opts.impairment,
        )
        .await?;
        let setup = async {
            for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
                pc.add_transceiver_from_kind(
                    kind,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        streams: vec![],
                        send_encodings: vec![],
                    }),
                )
                .await?;
            }
            let (answer, resource) = negotiate(WhipKind::Play, &pc, &shared, &url, &opts).await?;
            shared.set_extension_ids(&answer);
            *lock(&shared.offered) = offered_tracks(&answer);
            pc.set_remote_description(RTCSessionDescription::answer(answer)?)
                .await?;
            shared.states.send_modify(|s| s.subscriber_offers = 1);
            Ok(resource)
        };
        match setup.await {
            Ok(resource) => Ok(Self {
                kind: WhipKind::Play,
                resource,
                token: opts.token,
                timeout: opts.join_timeout,
                shared,
                conn: Conn::Own(pc),
                local_tracks: Vec::new(),
            }),
            Err(e) => {
                close_quietly(&shared, &pc).await;
                Err(e)
            }
        }
    }

    /// WHIP or WHEP.
    pub fn kind(&self) -> WhipKind {
        self.kind
    }

    /// The session resource (the `Location` of the answer, resolved against the endpoint).
    pub fn resource(&self) -> &url::Url {
        &self.resource
    }

    /// The peer connection's state.
    pub fn connection_state(&self) -> RTCPeerConnectionState {
        let s = self.shared.states.borrow();
        match self.kind {
            WhipKind::Publish => s.publisher,
            WhipKind::Play => s.subscriber,
        }
    }

    /// The connection states in the shape of [`Client::connection_states`](super::Client::connection_states):
    /// a WHIP session fills in the publisher half, a WHEP session the subscriber half.
    pub fn connection_states(&self) -> ConnectionStates {
        *self.shared.states.borrow()
    }

    /// Waits until the peer connection is connected.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), ClientError> {
        let kind = self.kind;
        let state = |s: &ConnectionStates| match kind {
            WhipKind::Publish => s.publisher,
            WhipKind::Play => s.subscriber,
        };
        let mut rx = self.shared.states.subscribe();
        let reached = tokio::time::timeout(timeout, async {
            rx.wait_for(|s| {
                matches!(
                    state(s),
                    RTCPeerConnectionState::Connected
                        | RTCPeerConnectionState::Failed
                        | RTCPeerConnectionState::Closed
                )
            })
            .await
            .map(|s| state(&s))
            .map_err(|_| ClientError::Closed)
        })
        .await
        .map_err(|_| ClientError::Timeout("the peer connection to connect"))??;
        match reached {
            RTCPeerConnectionState::Connected => Ok(()),
            other => Err(ClientError::ConnectionFailed(
                match kind {
                    WhipKind::Publish => Target::Publisher,
                    WhipKind::Play => Target::Subscriber,
                },
                other,
            )),
        }
    }

    /// Per remote track (WHEP), what has been received so far, in the order tracks appeared.
    pub fn received(&self) -> Vec<ReceivedTrackStats> {
        self.shared.received()
    }

    /// Per published track (WHIP), what has been sent so far.
    pub fn sent(&self) -> Vec<SentTrackStats> {
        self.local_tracks.iter().map(|t| t.stats()).collect()
    }

    /// RTCP feedback sent so far (NACKs, PLIs, FIRs).
    pub fn rtcp_sent(&self) -> RtcpSentStats {
        self.shared.rtcp_sent()
    }

    /// Ends the session: `DELETE`s the session resource (same bearer token), then closes the
    /// peer connection. The connection is closed even when the `DELETE` fails.
    pub async fn leave(self) -> Result<(), ClientError> {
        let deleted = request(
            reqwest::Method::DELETE,
            &self.resource,
            &self.token,
            None,
            self.timeout.min(LEAVE_TIMEOUT * 2),
        )
        .await
        .and_then(|r| {
            if (200..300).contains(&r.status) {
                Ok(())
            } else {
                Err(status_error(self.kind, &r))
            }
        });
        let _ = tokio::time::timeout(LEAVE_TIMEOUT, self.conn.close()).await;
        deleted
    }
}

impl Drop for WhipSession {
    fn drop(&mut self) {
        self.shared.abort_tasks();
        match &self.conn {
            Conn::Own(pc) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let pc = Arc::clone(pc);
                    rt.spawn(async move {
                        let _ = pc.close().await;
                    });
                }
            }
            // Closes when dropped.
            Conn::Engine(_) => {}
        }
    }
}

/// State for a connection without WebSocket signaling: local candidates are never sent
/// (the offer carries them), so the signaling channel has no reader.
fn detached_shared(decode_sample: u32) -> Arc<Shared> {
    let (out, _) = mpsc::unbounded_channel();
    Shared::new(out, BTreeMap::new(), decode_sample)
}

fn endpoint_url(s: &str) -> Result<url::Url, ClientError> {
    let url = url::Url::parse(s)?;
    if url.scheme() != "http" {
        return Err(ClientError::Http(format!(
            "{url}: only http:// endpoints are supported"
        )));
    }
    if url.host_str().is_none() {
        return Err(ClientError::Http(format!("{url}: no host")));
    }
    Ok(url)
}

fn udp_addr(opts: &ClientOptions, url: &url::Url) -> String {
    opts.udp_addr
        .clone()
        .unwrap_or_else(|| default_udp_addr(url))
}

async fn close_quietly(shared: &Shared, pc: &Arc<dyn PeerConnection>) {
    shared.abort_tasks();
    let _ = tokio::time::timeout(LEAVE_TIMEOUT, pc.close()).await;
}

/// Offers (after ICE gathering), `POST`s the offer and returns the answer and the session
/// resource.
async fn negotiate(
    kind: WhipKind,
    pc: &Arc<dyn PeerConnection>,
    shared: &Shared,
    url: &url::Url,
    opts: &ClientOptions,
) -> Result<(String, url::Url), ClientError> {
    let offer = pc.create_offer(None).await?;
    let mut gathered = shared.gathered.subscribe();
    pc.set_local_description(offer).await?;
    if tokio::time::timeout(GATHER_TIMEOUT, gathered.wait_for(|g| *g))
        .await
        .is_err()
    {
        tracing::debug!(
            endpoint = kind.as_str(),
            "ICE gathering incomplete, offering what was gathered"
        );
    }
    let sdp = pc
        .local_description()
        .await
        .ok_or_else(|| ClientError::Protocol("no local description".into()))?
        .sdp;
    post_offer(kind, sdp, url, opts).await
}

/// `POST`s an offer; returns the answer and the session's resource URL.
async fn post_offer(
    kind: WhipKind,
    sdp: String,
    url: &url::Url,
    opts: &ClientOptions,
) -> Result<(String, url::Url), ClientError> {
    let response = request(
        reqwest::Method::POST,
        url,
        &opts.token,
        Some(&sdp),
        opts.join_timeout,
    )
    .await?;
    if response.status != 201 {
        return Err(status_error(kind, &response));
    }
    let location = response
        .header("location")
        .ok_or(ClientError::MissingLocation(kind.as_str()))?;
    let resource = url.join(location)?;
    let answer = String::from_utf8(response.body)
        .map_err(|_| ClientError::Protocol(format!("{} answer is not UTF-8", kind.as_str())))?;
    Ok((answer, resource))
}

fn status_error(kind: WhipKind, r: &Response) -> ClientError {
    let body = String::from_utf8_lossy(&r.body);
    ClientError::HttpStatus {
        endpoint: kind.as_str(),
        status: r.status,
        body: body.trim().chars().take(MAX_ERROR_BODY).collect(),
    }
}

/// An HTTP response, its body read in full.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Response {
    /// A header's value (names are case-insensitive); `None` when absent or not text.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/1.1 request on its own connection (no pooling, no proxy, no redirects), with a
/// bearer token and an optional SDP body.
async fn request(
    method: reqwest::Method,
    url: &url::Url,
    token: &str,
    sdp: Option<&str>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    tokio::time::timeout(timeout, request_inner(method, url, token, sdp))
        .await
        .map_err(|_| ClientError::Timeout("the WHIP/WHEP response"))?
}

async fn request_inner(
    method: reqwest::Method,
    url: &url::Url,
    token: &str,
    sdp: Option<&str>,
) -> Result<Response, ClientError> {
    let http = |e: reqwest::Error| ClientError::Http(format!("{url}: {e}"));
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(http)?;
    let mut req = client.request(method, url.as_str()).bearer_auth(token);
    if let Some(sdp) = sdp {
        req = req
            .header(reqwest::header::CONTENT_TYPE, "application/sdp")
            .body(sdp.to_owned());
    }
    let mut response = req.send().await.map_err(http)?;
    let status = response.status().as_u16();
    let headers = std::mem::take(response.headers_mut());
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(http)? {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(ClientError::Http(format!(
                "{url}: response over {MAX_RESPONSE} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves one connection with `response` (raw bytes) and returns what the client sent.
    async fn serve_once(response: &'static [u8]) -> (url::Url, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0; 8192];
            let mut got = Vec::new();
            // Read the head and the body its content-length announces.
            loop {
                let n = stream.read(&mut buf).await.expect("read");
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let _ = stream.write_all(response).await;
            let _ = stream.shutdown().await;
            String::from_utf8_lossy(&got).to_string()
        });
        let url = url::Url::parse(&format!("http://{addr}/whip/r")).expect("url");
        (url, task)
    }

    async fn post(response: &'static [u8]) -> (Result<Response, ClientError>, String) {
        let (url, server) = serve_once(response).await;
        let r = request(
            reqwest::Method::POST,
            &url,
            "tok",
            Some("v=0\r\n"),
            Duration::from_secs(5),
        )
        .await;
        (r, server.await.expect("server"))
    }

    #[tokio::test]
    async fn parses_a_created_response() {
        let (r, sent) = post(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/sdp\r\n\
              location: /whip/r/session/PA_1\r\ncontent-length: 5\r\n\r\nv=0\r\n",
        )
        .await;
        let r = r.expect("parses");
        assert_eq!(r.status, 201);
        assert_eq!(r.header("location"), Some("/whip/r/session/PA_1"));
        assert_eq!(r.header("Location"), Some("/whip/r/session/PA_1"));
        assert_eq!(r.body, b"v=0\r\n");
        let sent = sent.to_ascii_lowercase();
        assert!(sent.starts_with("post /whip/r http/1.1\r\n"), "{sent}");
        assert!(sent.contains("authorization: bearer tok\r\n"), "{sent}");
        assert!(sent.contains("content-type: application/sdp\r\n"), "{sent}");
        assert!(sent.ends_with("\r\n\r\nv=0\r\n"), "{sent}");
    }

    #[tokio::test]
    async fn parses_a_chunked_response() {
        let (r, _) = post(
            b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nbad\r\n6;x=y\r\n token\r\n0\r\n\r\n",
        )
        .await;
        let r = r.expect("parses");
        assert_eq!(r.status, 401);
        assert_eq!(r.body, b"bad token");
        assert_eq!(
            status_error(WhipKind::Publish, &r).to_string(),
            "whip answered HTTP 401: bad token"
        );
    }

    #[tokio::test]
    async fn rejects_malformed_responses() {
        for bad in [
            &b""[..],
            b"HTTP/1.1 201 Created\r\n",
            b"SIP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let (r, _) = post(bad).await;
            assert!(
                matches!(r, Err(ClientError::Http(_))),
                "{}: {r:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[tokio::test]
    async fn redirects_are_answers_not_followed() {
        let (r, _) = post(
            b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:1/elsewhere\r\n\
              content-length: 0\r\n\r\n",
        )
        .await;
        let r = r.expect("parses");
        assert_eq!(r.status, 307);
        assert_eq!(r.header("location"), Some("http://127.0.0.1:1/elsewhere"));
    }

    #[tokio::test]
    async fn refuses_oversized_responses() {
        static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let big = BIG.get_or_init(|| {
            let mut r = format!(
                "HTTP/1.1 201 Created\r\nlocation: /x\r\ncontent-length: {}\r\n\r\n",
                MAX_RESPONSE + 1
            )
            .into_bytes();
            r.resize(r.len() + MAX_RESPONSE + 1, b'a');
            r
        });
        let (r, _) = post(big).await;
        assert!(
            matches!(&r, Err(ClientError::Http(e)) if e.contains("response over")),
            "{r:?}"
        );
    }

    #[test]
    fn endpoints_must_be_plain_http() {
        assert!(endpoint_url("http://127.0.0.1:7880/whip/r").is_ok());
        assert!(matches!(
            endpoint_url("https://sfu.example.com/whip/r"),
            Err(ClientError::Http(_))
        ));
        assert!(endpoint_url("not a url").is_err());
    }
}
