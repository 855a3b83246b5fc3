//! Publishing: the local tracks a client sends, the publisher connection that carries them
//! (on the shared engine when every source is a pre-encoded loop, else an async connection of
//! its own) and the send loops started once the server has answered.

use super::connection::{build_pc, engine_bind_addr, Handler, PublisherConn};
use super::error::ClientError;
use super::options::ClientOptions;
use super::publisher::{LoopSource, PublishLayer, PublishTrack};
use super::shared::Shared;
use crate::ivf::IvfClip;
use crate::media::{self, AudioSource, LocalTrack, VideoSource};
use chorus_signal::protocol::{Target, TrackKind};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::sync::Arc;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::peer_connection::{MediaEngine, PeerConnection, RTCIceServer, RTCPeerConnectionState};
use webrtc::rtp_transceiver::{
    RTCRtpTransceiverDirection, RTCRtpTransceiverInit, RtpSender, RtpTransceiver,
};

/// A local track with the sender and transceiver it was added with.
pub(super) struct PendingTrack {
    pub(super) local: Arc<LocalTrack>,
    pub(super) track: Arc<TrackLocalStaticSample>,
    pub(super) sender: Arc<dyn RtpSender>,
    pub(super) transceiver: Arc<dyn RtpTransceiver>,
}

/// Media the publisher starts once the server has answered.
pub(super) struct PendingMedia {
    pub(super) tracks: Vec<PendingTrack>,
    /// What to send on the video track (present when publishing video).
    pub(super) video: Option<VideoSource>,
    pub(super) audio: AudioSource,
}

impl PendingMedia {
    pub(super) fn start(self, shared: &Arc<Shared>) {
        for PendingTrack {
            local,
            track,
            sender,
            transceiver,
        } in self.tracks
        {
            for (index, layer) in local.layers.iter().enumerate() {
                let mut states = shared.states.subscribe();
                let video = match &self.video {
                    Some(VideoSource::Simulcast(layers)) => {
                        layers.get(index).map(|l| l.source.clone())
                    }
                    other => other.clone(),
                };
                let audio_source = self.audio.clone();
                let (local, track, sender, transceiver) = (
                    Arc::clone(&local),
                    Arc::clone(&track),
                    Arc::clone(&sender),
                    Arc::clone(&transceiver),
                );
                let (rid, ssrc, counters) =
                    (layer.rid.clone(), layer.ssrc, Arc::clone(&layer.counters));
                shared.spawn(async move {
                    // Wait for DTLS before writing: earlier samples would only be dropped.
                    let connected = states
                        .wait_for(|s| s.publisher == RTCPeerConnectionState::Connected)
                        .await
                        .is_ok();
                    if !connected {
                        return;
                    }
                    let (fallback, audio) = match local.kind {
                        TrackKind::Audio => (media::OPUS_PAYLOAD_TYPE, true),
                        TrackKind::Video => {
                            (media::video_codec_for(video.as_ref()).payload_type, false)
                        }
                    };
                    // Stamp only what the answer accepted.
                    let mut extensions = media::Extensions::negotiated(&sender).await;
                    if !rid.is_empty() {
                        let mid = transceiver.mid().await.ok().flatten().unwrap_or_default();
                        extensions.mid_rid = Some((mid.into(), rid.into()));
                    }
                    let out = media::Output {
                        track,
                        ssrc,
                        payload_type: media::negotiated_payload_type(&sender, fallback).await,
                        extensions,
                        counters,
                    };
                    match (audio, video) {
                        (true, _) => media::send_audio(out, audio_source).await,
                        (false, Some(video)) => media::send_video(out, video).await,
                        (false, None) => {}
                    }
                });
            }
        }
    }
}

/// What to send on the video track: `None` when not publishing video.
pub(super) fn video_to_publish(opts: &ClientOptions) -> Result<Option<VideoSource>, ClientError> {
    Ok(
        match (&opts.video_source, &opts.video_clip, opts.publish_video) {
            (_, _, false) => None,
            (Some(source), _, true) => Some(source.clone()),
            (None, Some(clip), true) => Some(VideoSource::Clip(Arc::clone(clip))),
            (None, None, true) => Some(VideoSource::Clip(Arc::new(IvfClip::parse(
                media::DEFAULT_VP8_CLIP,
            )?))),
        },
    )
}

/// The tracks to publish (audio, then video) with their encodings; none when not publishing.
pub(super) fn local_tracks(
    opts: &ClientOptions,
    video: Option<&VideoSource>,
) -> Vec<Arc<LocalTrack>> {
    let mut tracks = Vec::new();
    if opts.publish_audio {
        let audio = LocalTrack::new(TrackKind::Audio, &[]);
        if opts.audio_muted {
            audio.set_paused(true);
        }
        tracks.push(Arc::new(audio));
    }
    if opts.publish_video {
        let rids = video.map(VideoSource::rids).unwrap_or_default();
        tracks.push(Arc::new(LocalTrack::new(TrackKind::Video, &rids)));
    }
    tracks
}

/// The publisher connection for `local_tracks`: on the engine when the client has one and
/// every source is pre-encoded (a loop the engine paces), else an async connection of its own
/// with the media to start once answered. No connection when there is nothing to publish.
#[allow(clippy::too_many_arguments)]
pub(super) async fn open_publisher(
    opts: &ClientOptions,
    url: &url::Url,
    ice_servers: &[RTCIceServer],
    udp_addr: &str,
    video: Option<VideoSource>,
    local_tracks: &[Arc<LocalTrack>],
    stream_id: &str,
    shared: &Arc<Shared>,
) -> Result<(PublisherConn, Option<PendingMedia>), ClientError> {
    if local_tracks.is_empty() {
        return Ok((PublisherConn::None, None));
    }
    if let Some(engine) = &opts.engine {
        if let Some(tracks) = publish_loops(opts, video.as_ref(), local_tracks, stream_id) {
            let bind = engine_bind_addr(url, opts.udp_addr.as_deref()).await?;
            let conn = engine
                .open_publisher(Arc::clone(shared), bind, tracks)
                .await?;
            return Ok((PublisherConn::Engine(conn), None));
        }
    }
    let mut media_engine = MediaEngine::default();
    media_engine.register_codec(media::opus_codec(), RtpCodecKind::Audio)?;
    media_engine.register_codec(media::video_codec_for(video.as_ref()), RtpCodecKind::Video)?;
    let pc = build_pc(
        media_engine,
        ice_servers,
        udp_addr,
        Handler {
            target: Target::Publisher,
            shared: Arc::clone(shared),
        },
        Arc::clone(&shared.rtcp_sent),
        crate::impair::Impairment::default(),
    )
    .await?;
    let pending = add_transceivers(&pc, local_tracks, video, opts, stream_id, shared).await?;
    Ok((PublisherConn::Own(pc), Some(pending)))
}

/// The engine publisher's tracks: each local track's encodings with the loop it sends;
/// `None` when a source is encoded live.
pub(super) fn publish_loops(
    opts: &ClientOptions,
    video: Option<&VideoSource>,
    local_tracks: &[Arc<LocalTrack>],
    stream_id: &str,
) -> Option<Vec<PublishTrack>> {
    local_tracks
        .iter()
        .map(|local| {
            let loops = match local.kind {
                TrackKind::Audio => vec![LoopSource::audio(&opts.audio_source)?],
                TrackKind::Video => LoopSource::video(video?)?,
            };
            if loops.len() != local.layers.len() {
                return None;
            }
            Some(PublishTrack {
                kind: local.kind,
                stream_id: stream_id.to_owned(),
                track_id: local.track_id.clone(),
                layers: local
                    .layers
                    .iter()
                    .zip(loops)
                    .map(|(layer, source)| PublishLayer {
                        rid: layer.rid.clone(),
                        ssrc: layer.ssrc,
                        counters: Arc::clone(&layer.counters),
                        source,
                    })
                    .collect(),
            })
        })
        .collect()
}

/// Adds a `sendonly` transceiver per local track (audio, then video) to `publisher`, with
/// `stream_id` as the msid stream id. Returns the media to start once the publisher
/// connection is answered.
pub(super) async fn add_transceivers(
    publisher: &Arc<dyn PeerConnection>,
    local_tracks: &[Arc<LocalTrack>],
    video: Option<VideoSource>,
    opts: &ClientOptions,
    stream_id: &str,
    shared: &Arc<Shared>,
) -> Result<PendingMedia, ClientError> {
    let video_codec = media::video_codec_for(video.as_ref());
    let mut pending = PendingMedia {
        tracks: Vec::new(),
        video,
        audio: opts.audio_source.clone(),
    };
    for local in local_tracks {
        let track = local.sample_track(stream_id, &video_codec)?;
        // `sendonly`, as the protocol describes (a browser's addTrack would offer sendrecv).
        let transceiver = publisher
            .add_transceiver_from_track(
                Arc::clone(&track) as Arc<dyn TrackLocal>,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![stream_id.to_owned()],
                    send_encodings: vec![],
                }),
            )
            .await?;
        let sender = transceiver
            .sender()
            .await?
            .ok_or_else(|| ClientError::Protocol("transceiver has no sender".into()))?;
        shared.spawn(media::read_local_rtcp(
            Arc::clone(&track),
            local
                .layers
                .iter()
                .map(|l| (l.ssrc, Arc::clone(&l.counters)))
                .collect(),
        ));
        pending.tracks.push(PendingTrack {
            local: Arc::clone(local),
            track,
            sender,
            transceiver,
        });
    }
    Ok(pending)
}
