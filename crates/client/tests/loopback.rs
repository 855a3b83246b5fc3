//! End-to-end test of the client against a minimal in-test "SFU": a WebSocket signaling
//! endpoint plus two webrtc-rs peer connections that answer the client's publisher offer and
//! reflect its media back on the subscriber connection as another participant's tracks.

use chorus_client::{Client, ClientError, ClientOptions, ErrorCode, TrackKind};
use chorus_signal::protocol::{
    ClientMessage, IceCandidate, ParticipantInfo, ServerMessage, Target,
};
use futures::{SinkExt, StreamExt};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::Track;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCIceCandidateInit, RTCPeerConnectionIceEvent,
    RTCSessionDescription, Registry,
};
use webrtc::rtp_transceiver::RtpSender;

const T: Duration = Duration::from_secs(15);

struct ServerHandler {
    target: Target,
    out: mpsc::UnboundedSender<ServerMessage>,
    /// Where to reflect received media, by kind (publisher side only).
    reflect: Option<(Arc<TrackLocalStaticRTP>, Arc<TrackLocalStaticRTP>)>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for ServerHandler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.out.send(ServerMessage::Candidate {
                target: self.target,
                candidate: IceCandidate {
                    candidate: init.candidate,
                    sdp_mid: init.sdp_mid.filter(|m| !m.is_empty()),
                    sdp_m_line_index: init.sdp_mline_index,
                    username_fragment: None,
                },
            });
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some((audio, video)) = self.reflect.clone() else {
            return;
        };
        let video_kind = track.kind().await == RtpCodecKind::Video;
        let output = if video_kind { video } else { audio };
        tokio::spawn(async move {
            let Some(out_ssrc) = output.ssrcs().await.first().copied() else {
                return;
            };
            let mut asked_keyframe = false;
            while let Some(ev) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(mut p) = ev {
                    if video_kind && !asked_keyframe {
                        // Exercise the client's keyframe-request path once.
                        asked_keyframe = true;
                        let written = track
                            .write_rtcp(vec![Box::new(PictureLossIndication {
                                sender_ssrc: 0,
                                media_ssrc: p.header.ssrc,
                            })])
                            .await;
                        assert!(written.is_ok(), "{written:?}");
                    }
                    p.header.ssrc = out_ssrc;
                    // Header extension ids are per connection: what the client stamped on its
                    // publisher leg (e.g. transport-wide sequence numbers) could mean something
                    // else on its subscriber leg. An SFU rebuilds them per leg; a reflector
                    // drops them.
                    p.header.extension = false;
                    p.header.extensions.clear();
                    let _ = output.write_rtp(p).await;
                }
            }
        });
    }
}

async fn server_pc(handler: ServerHandler) -> Arc<dyn PeerConnection> {
    let mut me = MediaEngine::default();
    me.register_default_codecs().expect("codecs");
    let registry = register_default_interceptors(Registry::new(), &mut me).expect("interceptors");
    let pc = PeerConnectionBuilder::new()
        .with_media_engine(me)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(handler))
        .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
        .build()
        .await
        .expect("server pc");
    Arc::new(pc)
}

fn output_track(kind: RtpCodecKind, id: &str) -> Arc<TrackLocalStaticRTP> {
    let codec = match kind {
        RtpCodecKind::Audio => RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        _ => RTCRtpCodec {
            mime_type: MIME_TYPE_VP8.to_owned(),
            clock_rate: 90_000,
            ..Default::default()
        },
    };
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "PB".to_owned(),
        id.to_owned(),
        id.to_owned(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(rand::random::<u32>()),
                ..Default::default()
            },
            active: true,
            codec,
            ..Default::default()
        }],
    )))
}

enum Cmd {
    /// Remove the reflected video track and renegotiate the subscriber connection.
    RemoveVideo,
}

/// Serves one client: joined, answers its publisher offer, offers it the reflected tracks.
async fn mock_sfu(listener: TcpListener, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
    let (tcp, _) = listener.accept().await.expect("accept");
    let ws = tokio_tungstenite::accept_async(tcp)
        .await
        .expect("ws accept");
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<ServerMessage>();
    tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let text = serde_json::to_string(&m).expect("encode");
            if sink.send(Message::text(text)).await.is_err() {
                break;
            }
        }
    });

    let first = stream.next().await.expect("join").expect("join frame");
    let join: ClientMessage = serde_json::from_str(first.to_text().expect("text")).expect("json");
    assert!(
        matches!(join, ClientMessage::Join { version: 1, .. }),
        "{join:?}"
    );
    let me = ParticipantInfo {
        id: "PA".into(),
        identity: "alice".into(),
        name: "Alice".into(),
        tracks: vec![],
    };
    out_tx
        .send(ServerMessage::Joined {
            version: 1,
            room: "r".into(),
            participant: me,
            participants: vec![],
            ice_servers: vec![],
            resume_token: String::new(),
        })
        .expect("send");

    let audio_out = output_track(RtpCodecKind::Audio, "TR_a");
    let video_out = output_track(RtpCodecKind::Video, "TR_v");
    let publisher = server_pc(ServerHandler {
        target: Target::Publisher,
        out: out_tx.clone(),
        reflect: Some((Arc::clone(&audio_out), Arc::clone(&video_out))),
    })
    .await;
    let subscriber = server_pc(ServerHandler {
        target: Target::Subscriber,
        out: out_tx.clone(),
        reflect: None,
    })
    .await;
    subscriber
        .add_track(Arc::clone(&audio_out) as Arc<dyn TrackLocal>)
        .await
        .expect("add a");
    let video_sender: Arc<dyn RtpSender> = subscriber
        .add_track(Arc::clone(&video_out) as Arc<dyn TrackLocal>)
        .await
        .expect("add v");

    let offer = subscriber.create_offer(None).await.expect("offer");
    subscriber
        .set_local_description(offer.clone())
        .await
        .expect("set local");
    out_tx
        .send(ServerMessage::Offer { sdp: offer.sdp })
        .expect("send");

    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(Cmd::RemoveVideo) => {
                    subscriber.remove_track(&video_sender).await.expect("remove");
                    let offer = subscriber.create_offer(None).await.expect("offer");
                    subscriber.set_local_description(offer.clone()).await.expect("set local");
                    out_tx.send(ServerMessage::Offer { sdp: offer.sdp }).expect("send");
                }
                None => {}
            },
            msg = stream.next() => {
                let Some(Ok(msg)) = msg else { break };
                let Ok(text) = msg.to_text() else { continue };
                if text.is_empty() {
                    continue;
                }
                let msg: ClientMessage = serde_json::from_str(text).expect("client json");
                match msg {
                    ClientMessage::Offer { sdp } => {
                        // Two sendonly sections whose msid stream id is the participant id.
                        assert_eq!(sdp.matches("a=sendonly").count(), 2, "{sdp}");
                        assert_eq!(sdp.matches("a=msid:PA ").count(), 2, "{sdp}");
                        let offer = RTCSessionDescription::offer(sdp).expect("offer");
                        publisher.set_remote_description(offer).await.expect("set remote");
                        let answer = publisher.create_answer(None).await.expect("answer");
                        publisher.set_local_description(answer.clone()).await.expect("local");
                        out_tx.send(ServerMessage::Answer { sdp: answer.sdp }).expect("send");
                    }
                    ClientMessage::Answer { sdp } => {
                        let answer = RTCSessionDescription::answer(sdp).expect("answer");
                        subscriber.set_remote_description(answer).await.expect("set remote");
                    }
                    ClientMessage::Candidate { target, candidate } => {
                        let pc = match target {
                            Target::Publisher => &publisher,
                            Target::Subscriber => &subscriber,
                        };
                        let _ = pc
                            .add_ice_candidate(RTCIceCandidateInit {
                                candidate: candidate.candidate,
                                sdp_mid: candidate.sdp_mid,
                                sdp_mline_index: candidate.sdp_m_line_index,
                                username_fragment: candidate.username_fragment,
                                url: None,
                            })
                            .await;
                    }
                    ClientMessage::Ping { timestamp } => {
                        let _ = out_tx.send(ServerMessage::Pong { timestamp });
                    }
                    ClientMessage::Leave {} => break,
                    _ => {}
                }
            }
        }
    }
    let _ = publisher.close().await;
    let _ = subscriber.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_receives_and_renegotiates_against_a_reflecting_peer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(mock_sfu(listener, cmd_rx));

    let mut client = Client::join(ClientOptions::new(
        format!("ws://127.0.0.1:{port}/ws"),
        "token",
    ))
    .await
    .expect("join");
    assert_eq!(client.participant_id(), "PA");
    assert_eq!(client.room(), "r");

    // The subscriber offer is delivered as an event after it has been answered.
    client
        .wait_event(T, |e| matches!(e, ServerMessage::Offer { .. }))
        .await
        .expect("subscriber offer");
    client.wait_connected(T).await.expect("connected");

    // Our own media comes back as participant PB's two tracks.
    client
        .wait_until(T, |c| {
            let r = c.received();
            r.len() == 2 && r.iter().all(|t| t.packets() >= 60)
        })
        .await
        .unwrap_or_else(|e| panic!("media: {e}: {:#?}", client.received()));
    let received = client.received();
    for t in &received {
        assert_eq!(t.participant_id, "PB");
        assert!(t.active, "{t:?}");
        assert_eq!(t.seq.gaps, 0, "sequence gaps on {t:?}");
        assert!(t.ssrc != 0);
    }
    let audio = received
        .iter()
        .find(|t| t.kind == TrackKind::Audio)
        .expect("audio");
    let video = received
        .iter()
        .find(|t| t.kind == TrackKind::Video)
        .expect("video");
    assert_eq!(audio.track_id, "TR_a");
    assert_eq!(video.track_id, "TR_v");
    assert_eq!(
        audio
            .mime_type
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("audio/opus")
    );
    assert_eq!(video.mime_type.as_deref(), Some("video/VP8"));
    assert!(video.frames >= 10 && video.keyframes >= 1, "{video:?}");
    assert!(audio.bytes >= 3 * audio.packets());

    // The server's PLI reached the publisher.
    client
        .wait_until(T, |c| {
            c.sent()
                .iter()
                .any(|s| s.kind == TrackKind::Video && s.keyframe_requests >= 1)
        })
        .await
        .unwrap_or_else(|e| panic!("pli: {e}: {:?}", client.sent()));
    let sent = client.sent();
    assert_eq!(sent.len(), 2);
    assert!(
        sent.iter().all(|s| s.frames > 0 && s.write_errors == 0),
        "{sent:?}"
    );

    // Renegotiation removes the video track.
    cmd_tx.send(Cmd::RemoveVideo).expect("cmd");
    client
        .wait_event(T, |e| matches!(e, ServerMessage::Offer { .. }))
        .await
        .expect("second offer");
    let offered = client.offered_tracks();
    assert_eq!(offered.len(), 1, "{offered:?}");
    assert_eq!(offered[0].track_id, "TR_a");
    assert_eq!(client.connection_states().subscriber_offers, 2);
    let received = client.received();
    let video = received
        .iter()
        .find(|t| t.track_id == "TR_v")
        .expect("video");
    assert!(!video.active);
    let audio_packets = received
        .iter()
        .find(|t| t.track_id == "TR_a")
        .expect("a")
        .packets();
    client
        .wait_until(T, |c| {
            c.received()
                .iter()
                .any(|t| t.track_id == "TR_a" && t.packets() > audio_packets + 20)
        })
        .await
        .expect("audio keeps flowing after renegotiation");

    client.leave().await;
    tokio::time::timeout(T, server)
        .await
        .expect("server exits")
        .expect("server ok");
}

#[tokio::test]
async fn a_refused_join_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("ws");
        let _join = ws.next().await;
        let err = ServerMessage::Error {
            code: ErrorCode::InvalidToken,
            message: "bad".into(),
        };
        let _ = ws
            .send(Message::text(serde_json::to_string(&err).expect("json")))
            .await;
        let _ = ws.close(None).await;
    });
    let err = Client::join(ClientOptions::new(format!("ws://127.0.0.1:{port}/ws"), "x"))
        .await
        .expect_err("refused");
    assert!(
        matches!(
            err,
            ClientError::Rejected {
                code: ErrorCode::InvalidToken,
                ..
            }
        ),
        "{err:?}"
    );
}
