//! The WebSocket sessions a new connection may take back (`resume`, docs/protocol.md §13).
//!
//! [`Resumable`] owns one entry per joined WebSocket participant: its resume token (32 random
//! bytes, base64url; compared in constant time), who it is, and the channel through which a
//! `resume` asks the session's current holder to hand it over. The holder is either the live
//! connection task (`ws::run`; a resume then replaces a stale socket: at most one WebSocket per
//! session) or, after the socket was lost without `leave`, the parked task ([`park`]) that keeps
//! the session for `signal.resume_grace_secs` while media flows, discarding its room events (the
//! resumed client gets the room as it is then). A token works once: the entry is removed by a
//! successful take and the resumed connection registers a new token. An entry goes for good with
//! its session: leave, removal by the server (admin, replacement, room closed), token expiry,
//! the grace period's end, or shutdown ([`Resumable::end_all`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use chorus_sfu::{RoomEvent, Session};
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use crate::auth::{constant_time_eq, Claims};
use crate::SharedState;

/// A joined participant's session as its WebSocket task holds it, handed from one holder to
/// the next.
pub(crate) struct Held {
    /// The membership (dropping it leaves the room).
    pub(crate) session: Session,
    /// The verified token it runs under (the expiry counts).
    pub(crate) claims: Claims,
    /// ICE candidates trickled so far (capped per participant).
    pub(crate) candidates: usize,
    /// Tracks subscribed explicitly (capped per participant).
    pub(crate) subscribed: HashSet<String>,
}

/// A request to hand the session over: the holder sends it back on the oneshot.
pub(crate) type Takeover = oneshot::Sender<Held>;

/// The holder's end of an entry: take-over requests arrive here.
pub(crate) struct Ticket {
    /// The participant id.
    pub(crate) id: String,
    generation: u64,
    /// Take-over requests; closed when the entry is gone (shutdown).
    pub(crate) requests: mpsc::Receiver<Takeover>,
}

struct Entry {
    token: String,
    identity: String,
    room: String,
    generation: u64,
    requests: mpsc::Sender<Takeover>,
}

/// Why a resume was refused (all answered `resume_failed`; the reason is logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No session with that participant id (never was, ended, or already resumed).
    Unknown,
    /// The resume token does not match.
    WrongToken,
    /// The access token names another identity or room.
    OtherIdentity,
    /// The holder let go before handing over (the grace period ended meanwhile).
    Gone,
}

impl Refused {
    /// A few words for the log.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Unknown => "no such session",
            Self::WrongToken => "wrong resume token",
            Self::OtherIdentity => "another identity or room",
            Self::Gone => "the session ended",
        }
    }
}

/// See the module docs.
#[derive(Default)]
pub struct Resumable {
    entries: Mutex<HashMap<String, Entry>>,
    next_generation: AtomicU64,
    /// Set by [`Self::end_all`]: nothing is parked or registered any more.
    closed: AtomicBool,
}

impl Resumable {
    /// Registers (or re-registers, after a resume) the session of participant `id`; returns
    /// its new resume token and the holder's ticket. An empty token when resuming is off
    /// (`grace` zero) or the server is shutting down.
    pub(crate) fn register(
        &self,
        id: &str,
        claims: &Claims,
        grace: Duration,
    ) -> (String, Option<Ticket>) {
        if grace.is_zero() || self.closed.load(Ordering::Relaxed) {
            return (String::new(), None);
        }
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(1);
        self.lock().insert(
            id.to_owned(),
            Entry {
                token: token.clone(),
                identity: claims.sub.clone(),
                room: claims.grants.room.clone(),
                generation,
                requests: tx,
            },
        );
        let ticket = Ticket {
            id: id.to_owned(),
            generation,
            requests: rx,
        };
        (token, Some(ticket))
    }

    /// Takes the session of participant `id` back for a client holding `token` and an access
    /// token with `claims`: the entry is removed (the token works once) and its holder asked
    /// to hand the session over.
    pub(crate) async fn take(
        &self,
        id: &str,
        token: &str,
        claims: &Claims,
    ) -> Result<Held, Refused> {
        let requests = {
            let mut entries = self.lock();
            let entry = entries.get(id).ok_or(Refused::Unknown)?;
            if !constant_time_eq(entry.token.as_bytes(), token.as_bytes()) {
                return Err(Refused::WrongToken);
            }
            if entry.identity != claims.sub || entry.room != claims.grants.room {
                return Err(Refused::OtherIdentity);
            }
            entries.remove(id).ok_or(Refused::Unknown)?.requests
        };
        let (reply, held) = oneshot::channel();
        requests.send(reply).await.map_err(|_| Refused::Gone)?;
        held.await.map_err(|_| Refused::Gone)
    }

    /// Forgets the entry of `ticket` (its session ended for good), unless a resume replaced it.
    pub(crate) fn remove(&self, ticket: &Ticket) {
        let mut entries = self.lock();
        if entries
            .get(&ticket.id)
            .is_some_and(|e| e.generation == ticket.generation)
        {
            entries.remove(&ticket.id);
        }
    }

    /// Whether a lost WebSocket's session may still be kept (not shutting down).
    pub(crate) fn open(&self) -> bool {
        !self.closed.load(Ordering::Relaxed)
    }

    /// Shutdown: no session is kept or resumed any more; parked ones end now (their
    /// participants leave the room).
    pub fn end_all(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.lock().clear();
    }

    /// Sessions that may be resumed (live and parked).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session may be resumed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps the session of a lost WebSocket for `grace` (at most until its token expires): hands it to a `resume` if one comes,
/// else (grace over, removed by the server, shutdown) lets it go, which leaves the room.
pub(crate) async fn park(state: SharedState, mut held: Held, mut ticket: Ticket, grace: Duration) {
    state.metrics.parked.inc();
    // Not past the token's expiry, which ends a session for good.
    let left = held.claims.exp.saturating_sub(crate::auth::unix_now());
    let deadline = tokio::time::sleep(grace.min(Duration::from_secs(left)));
    tokio::pin!(deadline);
    let handed = loop {
        tokio::select! {
            () = &mut deadline => {
                info!(participant = %ticket.id, "resume grace over, removing participant");
                break false;
            }
            req = ticket.requests.recv() => match req {
                Some(reply) => match reply.send(held) {
                    Ok(()) => break true,
                    // The resumer gave up waiting: keep holding.
                    Err(back) => held = back,
                },
                None => break false, // shutdown
            },
            ev = held.session.events.recv() => match ev {
                // Removed by the server (admin, replaced by a new join, room closed): over.
                None | Some(RoomEvent::Closed { .. }) => break false,
                // The resumed client gets the room as it is then; nothing here is kept.
                Some(_) => {}
            },
        }
    };
    state.metrics.parked.dec();
    if !handed {
        state.resumable.remove(&ticket);
    }
}
