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
//! The HTTP client is a minimal HTTP/1.1 one over a plain TCP connection (`http://` only, one
//! request per connection).

use super::engine::EngineConn;
use super::{
    build_pc, default_udp_addr, engine_bind_addr, local_tracks, lock, open_publisher,
    video_to_publish, ClientError, ClientOptions, ConnectionStates, Handler, PublisherConn,
    RtcpSentStats, Shared, LEAVE_TIMEOUT,
};
use crate::media::{LocalTrack, SentTrackStats};
use crate::stats::{offered_tracks, ReceivedTrackStats};
use chorus_signal::protocol::Target;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
            "DELETE",
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
    let response = request("POST", url, &opts.token, Some(&sdp), opts.join_timeout).await?;
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

/// An HTTP response.
#[derive(Debug)]
struct Response {
    status: u16,
    /// Names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`), with a bearer token and an
/// optional SDP body.
async fn request(
    method: &str,
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
    method: &str,
    url: &url::Url,
    token: &str,
    sdp: Option<&str>,
) -> Result<Response, ClientError> {
    let io = |e: std::io::Error| ClientError::Http(format!("{url}: {e}"));
    let host = url
        .host_str()
        .ok_or_else(|| ClientError::Http(format!("{url}: no host")))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let mut stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(io)?;
    let authority = &url[url::Position::BeforeHost..url::Position::AfterPort];
    let path = &url[url::Position::BeforePath..url::Position::AfterQuery];
    let body = sdp.unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if sdp.is_some() {
        head.push_str("Content-Type: application/sdp\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.map_err(io)?;
    stream.write_all(body.as_bytes()).await.map_err(io)?;
    let mut buf = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(io)?;
    if buf.len() > MAX_RESPONSE {
        return Err(ClientError::Http(format!(
            "{url}: response over {MAX_RESPONSE} bytes"
        )));
    }
    parse_response(&buf)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses a complete HTTP/1.x response (the connection has been read to its end).
fn parse_response(buf: &[u8]) -> Result<Response, ClientError> {
    let bad = |what: &str| ClientError::Http(format!("malformed response: {what}"));
    let end = find(buf, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let mut status_line = lines.next().unwrap_or_default().splitn(3, ' ');
    if !status_line.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(bad("not HTTP/1.x"));
    }
    let status = status_line
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("no status code"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| bad("header line"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = &buf[end + 4..];
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    response.body = if chunked {
        dechunk(rest).ok_or_else(|| bad("chunked body"))?
    } else if let Some(len) = response.header("content-length") {
        let len = len.parse::<usize>().map_err(|_| bad("content-length"))?;
        rest.get(..len)
            .ok_or_else(|| bad("body shorter than content-length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(response)
}

/// Decodes a `Transfer-Encoding: chunked` body (trailers ignored).
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")?;
        let size = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_created_response() {
        let r = parse_response(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/sdp\r\n\
              location: /whip/r/session/PA_1\r\ncontent-length: 5\r\n\r\nv=0\r\n",
        )
        .expect("parses");
        assert_eq!(r.status, 201);
        assert_eq!(r.header("location"), Some("/whip/r/session/PA_1"));
        assert_eq!(r.body, b"v=0\r\n");
    }

    #[test]
    fn parses_a_chunked_response() {
        let r = parse_response(
            b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nbad\r\n6;x=y\r\n token\r\n0\r\n\r\n",
        )
        .expect("parses");
        assert_eq!(r.status, 401);
        assert_eq!(r.body, b"bad token");
        assert_eq!(
            status_error(WhipKind::Publish, &r).to_string(),
            "whip answered HTTP 401: bad token"
        );
    }

    #[test]
    fn rejects_malformed_responses() {
        for bad in [
            &b""[..],
            b"HTTP/1.1 201 Created\r\n",
            b"SIP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
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
