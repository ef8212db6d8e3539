//! The pace of a CA rotation's writes: after a bundle change every Secret
//! needs new trust files, after a switch every leaf of the previous CA a new
//! certificate. Each request gets its own turn, spaced evenly, so 10,000
//! Secrets are rewritten at a steady rate instead of all at once, and a
//! request waiting for its turn costs nothing until then. No I/O.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;

use crate::api::CertificateRequest;

/// Turns handed out at `per_second`, with bursts of up to [`BURST`].
pub struct Pace {
    interval: Duration,
    state: Mutex<State>,
}

/// Turns that may be taken at once after a quiet spell.
pub const BURST: u32 = 20;

struct State {
    /// The first free turn.
    next_free: Instant,
    /// Requests told to come back, and when their turn is.
    booked: HashMap<ObjectRef<CertificateRequest>, Instant>,
}

impl Pace {
    pub fn new(per_second: f64) -> Self {
        let per_second = per_second.max(0.01);
        let interval = Duration::from_secs_f64(1.0 / per_second);
        let now = Instant::now();
        Pace {
            interval,
            state: Mutex::new(State {
                // A quiet spell before the first turn: a burst is free at once.
                next_free: now.checked_sub(interval * BURST).unwrap_or(now),
                booked: HashMap::new(),
            }),
        }
    }

    /// `Ok` when it is `request`'s turn now (the turn is used up); otherwise
    /// how long until it is. A request keeps the turn it was given.
    pub fn turn(&self, request: &ObjectRef<CertificateRequest>) -> Result<(), Duration> {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap();
        if let Some(at) = s.booked.get(request).copied() {
            if at <= now {
                s.booked.remove(request);
                super::context::shrink_if_sparse(&mut s.booked);
                return Ok(());
            }
            return Err(at - now);
        }
        let earliest = now.checked_sub(self.interval * BURST).unwrap_or(now);
        let slot = s.next_free.max(earliest);
        s.next_free = slot + self.interval;
        if slot <= now {
            Ok(())
        } else {
            s.booked.insert(request.clone(), slot);
            Err(slot - now)
        }
    }

    /// Forgets a deleted request's turn.
    pub fn forget(&self, request: &ObjectRef<CertificateRequest>) {
        self.state.lock().unwrap().booked.remove(request);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(i: usize) -> ObjectRef<CertificateRequest> {
        ObjectRef::new(&format!("r{i}")).within("ns")
    }

    #[test]
    fn turns_come_in_a_burst_then_evenly_and_each_request_keeps_its_own() {
        let pace = Pace::new(10.0);
        std::thread::sleep(Duration::from_millis(50));
        let mut waits = Vec::new();
        for i in 0..100 {
            if let Err(w) = pace.turn(&req(i)) {
                waits.push((i, w));
            }
        }
        assert!(
            (BURST as usize..=BURST as usize + 2).contains(&(100 - waits.len())),
            "a burst of {BURST} at once, then turns: {} waited",
            waits.len()
        );
        // The last request waits about 80 turns of 100 ms.
        let (last, wait) = waits.last().unwrap();
        assert_eq!(*last, 99);
        assert!(
            (Duration::from_millis(7_500)..Duration::from_millis(8_100)).contains(wait),
            "{wait:?}"
        );
        // Asking again does not move the turn back.
        let again = pace.turn(&req(99)).unwrap_err();
        assert!(again <= *wait && *wait - again < Duration::from_millis(100));
        // A forgotten request leaves no booking behind.
        pace.forget(&req(99));
        assert!(!pace.state.lock().unwrap().booked.contains_key(&req(99)));
    }
}
