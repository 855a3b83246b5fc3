//! Which engine a room lives on. A room is placed on the least-loaded engine (fewest sessions)
//! when its first participant joins, and stays there while it has sessions: everything of a
//! room lives in one engine, so engines never talk to each other.
//!
//! Touched on join and leave only, never on the media path; the lock is never held across an
//! await.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::{Metrics, SfuError};

/// The room -> engine map of one server. See the module docs.
pub(crate) struct Placement {
    inner: Mutex<Inner>,
    max_rooms: usize,
    metrics: Metrics,
}

struct Inner {
    /// Per room: its engine and how many sessions it has.
    rooms: HashMap<String, (usize, usize)>,
    /// Sessions per engine.
    load: Vec<usize>,
}

impl Placement {
    /// Placement over `engines` engines, at most `max_rooms` rooms in all.
    pub(crate) fn new(engines: usize, max_rooms: usize, metrics: Metrics) -> Placement {
        Placement {
            inner: Mutex::new(Inner {
                rooms: HashMap::new(),
                load: vec![0; engines.max(1)],
            }),
            max_rooms,
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain counts behind: still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The engine a new session of `room` goes to, counted from now on (undo with
    /// [`Placement::leave`]).
    pub(crate) fn enter(&self, room: &str) -> Result<usize, SfuError> {
        let mut inner = self.lock();
        let engine = match inner.rooms.get_mut(room) {
            Some((engine, sessions)) => {
                *sessions += 1;
                *engine
            }
            None => {
                if inner.rooms.len() >= self.max_rooms {
                    return Err(SfuError::RoomFull);
                }
                let engine = inner
                    .load
                    .iter()
                    .enumerate()
                    .min_by_key(|(i, load)| (**load, *i))
                    .map_or(0, |(i, _)| i);
                inner.rooms.insert(room.to_owned(), (engine, 1));
                engine
            }
        };
        inner.load[engine] += 1;
        self.gauge(engine, inner.load[engine]);
        Ok(engine)
    }

    /// A session of `room` is gone; the room is forgotten with its last one.
    pub(crate) fn leave(&self, room: &str) {
        let mut inner = self.lock();
        let Some((engine, sessions)) = inner.rooms.get_mut(room) else {
            return;
        };
        let engine = *engine;
        *sessions -= 1;
        if *sessions == 0 {
            inner.rooms.remove(room);
        }
        inner.load[engine] = inner.load[engine].saturating_sub(1);
        self.gauge(engine, inner.load[engine]);
    }

    /// The engine `room` lives on, if it has sessions.
    pub(crate) fn engine_of(&self, room: &str) -> Option<usize> {
        self.lock().rooms.get(room).map(|(e, _)| *e)
    }

    fn gauge(&self, engine: usize, load: usize) {
        self.metrics
            .engine_participants
            .with_label_values(&[&engine.to_string()])
            .set(load as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_go_to_the_least_loaded_engine_and_stay_there() {
        let p = Placement::new(2, 10, Metrics::unregistered());
        assert_eq!(p.enter("a").ok(), Some(0));
        assert_eq!(p.enter("a").ok(), Some(0), "a room stays on its engine");
        assert_eq!(p.enter("b").ok(), Some(1), "engine 1 has fewer sessions");
        assert_eq!(p.enter("c").ok(), Some(1), "2 on engine 0, 1 on engine 1");
        p.leave("a");
        p.leave("a");
        assert!(
            !p.lock().rooms.contains_key("a"),
            "forgotten with its last session"
        );
        assert_eq!(p.enter("d").ok(), Some(0));
        // Leaving a room that is not placed changes nothing.
        p.leave("zzz");
        assert_eq!(p.enter("e").ok(), Some(0), "1 each: the lower index wins");
    }

    #[test]
    fn the_room_limit_is_server_wide() {
        let p = Placement::new(2, 2, Metrics::unregistered());
        assert!(p.enter("a").is_ok());
        assert!(p.enter("b").is_ok());
        assert_eq!(p.enter("c"), Err(SfuError::RoomFull));
        assert!(p.enter("a").is_ok(), "joining an existing room is fine");
        p.leave("b");
        assert!(p.enter("c").is_ok());
    }
}
