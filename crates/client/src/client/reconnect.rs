//! A lost WebSocket: reconnect with backoff and `resume` the session (restarting ICE on the
//! publisher connection; the server restarts the subscriber's), or, when the server no longer
//! has it (`resume_failed`), join afresh and publish again. The app hears each step as a
//! [`ReconnectEvent`] ([`Client::next_reconnect_event`](super::Client::next_reconnect_event)).
//!
//! A WebSocket the server closed (leave, removal, a refusal) is not reconnected: only one that
//! failed or ended without a close frame.

use super::dispatch::SignalingContext;
use super::error::ClientError;
use super::options::ClientOptions;
use super::signaling::{self, NewSink, WsSource};
use super::Client;
use chorus_signal::protocol::{ClientMessage, ErrorCode, ServerMessage, PROTOCOL_VERSION};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How a client reconnects a lost WebSocket: exponential backoff with jitter, bounded by a
/// number of attempts and a total time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Delay before the first attempt (before jitter).
    pub initial_delay: Duration,
    /// The delay doubles per attempt up to this.
    pub max_delay: Duration,
    /// Most attempts before giving up ([`ReconnectEvent::Failed`]).
    pub max_attempts: u32,
    /// Most time spent reconnecting before giving up.
    pub max_total: Duration,
    /// A WebSocket from which nothing at all (no message, no ping frame) arrives this long is
    /// taken as lost (a half-open connection: the network went without closing it). The
    /// client pings the server at a third of this, at most every 15 s; the server pings every
    /// 15 s (`ping_interval_secs`), so keep it above that.
    pub silence_timeout: Duration,
}

impl Default for ReconnectPolicy {
    /// 250 ms doubling to 5 s, at most 12 attempts within 30 s; lost after 35 s of silence.
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
            max_attempts: 12,
            max_total: Duration::from_secs(30),
            silence_timeout: Duration::from_secs(35),
        }
    }
}

impl ReconnectPolicy {
    /// The delay before attempt `attempt` (0-based): `initial_delay * 2^attempt`, capped at
    /// `max_delay`, scaled by `jitter` in [0, 1) to between half and all of it (so clients
    /// cut off together do not come back together).
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let base = self
            .initial_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_delay);
        base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// What happened to a client's signaling connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReconnectEvent {
    /// The WebSocket was lost; attempt `attempt` (1-based) to get it back is under way.
    Reconnecting {
        /// 1 for the first attempt.
        attempt: u32,
    },
    /// The session was resumed on a new WebSocket: same participant id, tracks and
    /// subscriptions; ICE restarts on both connections.
    Resumed,
    /// The server no longer had the session: the client joined afresh (a new participant
    /// id) and publishes again. The [`Client`] handle now is that new participant.
    Rejoined,
    /// Reconnecting gave up (attempts or time exhausted, or refused); the client is
    /// disconnected.
    Failed {
        /// Why.
        reason: String,
    },
}

/// What the signaling task tells the handle.
pub(super) enum Notice {
    Event(ReconnectEvent),
    /// A rejoin made a new client: the handle becomes it.
    Rejoined(Box<Client>),
}

/// What the signaling task needs to get the session back.
pub(super) struct ResumeContext {
    pub(super) opts: ClientOptions,
    pub(super) participant_id: String,
    pub(super) resume_token: String,
    pub(super) sinks: mpsc::UnboundedSender<NewSink>,
    pub(super) notices: mpsc::UnboundedSender<Notice>,
}

/// How one reconnection ended.
enum Outcome {
    Resumed(Box<(signaling::WsSink, WsSource, signaling::Joined)>),
    Rejoin,
    Failed(String),
}

/// The signaling task: applies server messages; when the WebSocket is lost, reconnects.
pub(super) async fn run_signaling(
    mut stream: WsSource,
    mut ctx: SignalingContext,
    mut resume: ResumeContext,
) {
    let silence = resume.opts.reconnect.map(|p| p.silence_timeout);
    loop {
        if !ctx.read_until_end(&mut stream, silence).await {
            return; // the server closed it: the session is over
        }
        let Some(policy) = resume.opts.reconnect else {
            return;
        };
        tracing::info!(participant = %resume.participant_id, "signaling lost, reconnecting");
        let outcome = if resume.resume_token.is_empty() {
            Outcome::Rejoin
        } else {
            reconnect(&policy, &resume).await
        };
        match outcome {
            Outcome::Resumed(resumed) => {
                let (sink, next, joined) = *resumed;
                resume.resume_token = joined.resume_token.clone();
                let (ready, wait) = oneshot::channel();
                if resume.sinks.send((sink, ready)).is_err() || wait.await.is_err() {
                    return; // the client is closing
                }
                stream = next;
                let msg = ServerMessage::Resumed {
                    version: PROTOCOL_VERSION,
                    room: joined.room,
                    participant: joined.participant,
                    participants: joined.participants,
                    ice_servers: joined.ice_servers,
                    resume_token: joined.resume_token,
                };
                if let Err(e) = ctx.handle(&msg).await {
                    tracing::warn!(error = %e, "applying resumed failed");
                }
                ctx.deliver(msg);
                // The server restarts the subscriber's ICE with its next offer; restart ours.
                match ctx.publisher.restart_offer().await {
                    Ok(Some(sdp)) => {
                        let _ = ctx.shared.send(ClientMessage::Offer { sdp });
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "publisher ICE restart failed"),
                }
                let _ = resume.notices.send(Notice::Event(ReconnectEvent::Resumed));
            }
            Outcome::Rejoin => {
                tracing::info!(participant = %resume.participant_id, "no session to resume, joining afresh");
                let mut opts = resume.opts.clone();
                opts.join_timeout = opts.join_timeout.min(Duration::from_secs(10));
                match rejoin(opts).await {
                    Ok(client) => {
                        let _ = resume.notices.send(Notice::Rejoined(Box::new(client)));
                    }
                    Err(e) => {
                        let _ = resume.notices.send(Notice::Event(ReconnectEvent::Failed {
                            reason: format!("rejoin: {e}"),
                        }));
                    }
                }
                return;
            }
            Outcome::Failed(reason) => {
                tracing::warn!(%reason, "reconnecting gave up");
                let _ = resume
                    .notices
                    .send(Notice::Event(ReconnectEvent::Failed { reason }));
                return;
            }
        }
    }
}

/// A fresh join (boxed: a client's signaling task may make a new client).
fn rejoin(
    opts: ClientOptions,
) -> Pin<Box<dyn Future<Output = Result<Client, ClientError>> + Send>> {
    Box::pin(Client::join(opts))
}

/// Attempts `resume` with backoff until it works, the server says the session is gone, or
/// the policy gives up.
async fn reconnect(policy: &ReconnectPolicy, resume: &ResumeContext) -> Outcome {
    let started = tokio::time::Instant::now();
    let mut attempt = 0;
    loop {
        if attempt >= policy.max_attempts {
            return Outcome::Failed(format!("no connection after {attempt} attempts"));
        }
        let delay = policy.delay(attempt, rand::random::<f64>());
        if started.elapsed() + delay > policy.max_total {
            return Outcome::Failed(format!("no connection within {:?}", policy.max_total));
        }
        tokio::time::sleep(delay).await;
        attempt += 1;
        let _ = resume
            .notices
            .send(Notice::Event(ReconnectEvent::Reconnecting { attempt }));
        let message = ClientMessage::Resume {
            version: PROTOCOL_VERSION,
            token: resume.opts.token.clone(),
            participant_id: resume.participant_id.clone(),
            resume_token: resume.resume_token.clone(),
        };
        let timeout = resume.opts.join_timeout.min(Duration::from_secs(5));
        match signaling::join(&resume.opts.url, message, timeout).await {
            Ok((sink, stream, joined)) => {
                return Outcome::Resumed(Box::new((sink, stream, joined)));
            }
            Err(ClientError::Rejected {
                code: ErrorCode::ResumeFailed,
                ..
            }) => return Outcome::Rejoin,
            Err(ClientError::Rejected { code, message }) if code != ErrorCode::Internal => {
                // A refusal that another attempt will not change (an expired token, ...).
                return Outcome::Failed(format!("{}: {message}", code.as_str()));
            }
            Err(e) => tracing::debug!(attempt, error = %e, "reconnect attempt failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_to_the_cap_with_jitter() {
        let p = ReconnectPolicy::default();
        let ms = |d: Duration| d.as_millis();
        assert!((249..=250).contains(&ms(p.delay(0, 1.0 - f64::EPSILON))));
        assert_eq!(ms(p.delay(0, 0.0)), 125);
        assert_eq!(ms(p.delay(1, 0.0)), 250);
        assert_eq!(ms(p.delay(3, 0.0)), 1000);
        assert_eq!(ms(p.delay(5, 0.0)), 2500);
        assert_eq!(ms(p.delay(30, 0.0)), 2500);
        assert_eq!(ms(p.delay(30, 2.0)), 5000);
    }
}
