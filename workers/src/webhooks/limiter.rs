//! The per-endpoint bound: at most `per_endpoint` deliveries to one subscription in flight in
//! this process. A delivery that finds its endpoint full does not wait for a slot (it would
//! hold one of the consumer's slots while waiting, which is exactly how a slow endpoint would
//! starve the healthy ones); it is nak'ed with a short delay and comes back later.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Forget idle endpoints once the map holds this many, so it cannot grow without bound.
const PRUNE_ABOVE: usize = 10_000;

pub struct EndpointLimiter {
    per_endpoint: usize,
    // A std Mutex: held only for a map lookup, never across an await.
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl EndpointLimiter {
    pub fn new(per_endpoint: usize) -> Self {
        Self {
            per_endpoint: per_endpoint.max(1),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for `endpoint`, or `None` when it already has `per_endpoint` in flight.
    pub fn try_acquire(&self, endpoint: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if slots.len() > PRUNE_ABOVE {
                let full = self.per_endpoint;
                slots.retain(|_, s| s.available_permits() < full);
            }
            slots
                .entry(endpoint.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_endpoint)))
                .clone()
        };
        semaphore.try_acquire_owned().ok()
    }

    pub fn in_flight(&self, endpoint: &str) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .get(endpoint)
            .map_or(0, |s| self.per_endpoint - s.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_each_endpoint_separately() {
        let l = EndpointLimiter::new(2);
        let a1 = l.try_acquire("we_a").unwrap();
        let _a2 = l.try_acquire("we_a").unwrap();
        assert!(l.try_acquire("we_a").is_none());
        assert_eq!(l.in_flight("we_a"), 2);
        // Another endpoint is unaffected by a full one.
        let _b = l.try_acquire("we_b").unwrap();
        drop(a1);
        assert!(l.try_acquire("we_a").is_some());
        assert_eq!(l.in_flight("we_unknown"), 0);
    }

    #[test]
    fn idle_endpoints_are_pruned() {
        let l = EndpointLimiter::new(1);
        let held = l.try_acquire("busy").unwrap();
        for i in 0..=PRUNE_ABOVE {
            drop(l.try_acquire(&format!("idle{i}")));
        }
        l.try_acquire("trigger");
        let size = l.slots.lock().unwrap().len();
        assert!(size < 10, "{size}");
        assert_eq!(l.in_flight("busy"), 1);
        drop(held);
    }
}
