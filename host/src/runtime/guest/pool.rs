//! Where a request's instance comes from, for the strategies that run one
//! request at a time in an instance: fresh (every instance serves one
//! request) or reused (an instance serves a number of requests drawn at
//! random in a range, then is dropped). Reuse trades isolation for speed:
//! state a guest keeps in globals or memory is seen by the requests after
//! it. The random lifetime keeps a guest from counting on when its instance
//! ends. An instance that trapped or ran out of time is never given back.
//! The same code serves 0.2 components (`I` is their `Proxy`) and 0.3 ones
//! (their `Service`).

use std::sync::{Arc, Mutex};

use wasmtime::{Engine, Store};

use super::call::{GuestError, prepare_store};
use super::component::GuestState;

/// Idle instances kept per worker at most: enough for a busy worker's
/// concurrency; more are dropped when they come back.
const MAX_IDLE: usize = 64;

pub struct Instances<I> {
    idle: Mutex<Vec<Pooled<I>>>,
    /// Requests an instance serves, drawn in this range per instance.
    lifetime: (u32, u32),
}

/// An instance with its store, and how many more requests it may serve.
struct Pooled<I> {
    store: Store<GuestState>,
    instance: I,
    left: u32,
}

/// A request's store, and the instance in it if it is a reused one (the
/// caller instantiates otherwise). The lease gives both back once the
/// request has gone well.
pub struct Checkout<I> {
    pub store: Store<GuestState>,
    pub instance: Option<I>,
    pub lease: Lease<I>,
}

impl<I> Instances<I> {
    /// Every instance serves one request.
    pub fn fresh() -> Arc<Self> {
        Self::reused(1, 1)
    }

    /// Every instance serves between `min` and `max` requests.
    pub fn reused(min: u32, max: u32) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(Vec::new()),
            lifetime: (min.max(1), max.max(min).max(1)),
        })
    }

    /// Drops the idle instances.
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The store and instance for the request `request_id`: an idle one,
    /// its output now labelled with `request_id`, or a new store with
    /// `state` (whose output is labelled already).
    pub fn checkout(
        self: &Arc<Self>,
        engine: &Engine,
        request_id: &Arc<str>,
        state: impl FnOnce() -> Result<GuestState, GuestError>,
    ) -> Result<Checkout<I>, GuestError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let (mut store, instance, left) = match idle {
            Some(p) => {
                p.store.data().serve(request_id);
                (p.store, Some(p.instance), p.left)
            }
            None => {
                let mut store = Store::new(engine, state()?);
                prepare_store(&mut store);
                (store, None, self.draw())
            }
        };
        store.set_epoch_deadline(1);
        Ok(Checkout {
            store,
            instance,
            lease: Lease {
                pool: self.clone(),
                left: left - 1,
            },
        })
    }

    /// A new instance's lifetime.
    fn draw(&self) -> u32 {
        let (min, max) = self.lifetime;
        fastrand::u32(min..=max)
    }
}

pub struct Lease<I> {
    pool: Arc<Instances<I>>,
    /// Requests the instance may serve after this one.
    left: u32,
}

impl<I> Lease<I> {
    /// Keeps the instance for a later request, unless it has served its
    /// number or the pool is full.
    pub fn give_back(self, store: Store<GuestState>, instance: I) {
        if self.left == 0 {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Pooled {
                store,
                instance,
                left: self.left,
            });
        }
    }
}

/// The lifetime of a reused instance, drawn for each one: tested here
/// because the e2e tests cannot see an instance's number.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lifetime_is_drawn_within_its_range_and_covers_it() {
        let pool = Instances::<()>::reused(3, 6);
        let drawn: Vec<u32> = (0..400).map(|_| pool.draw()).collect();
        assert!(drawn.iter().all(|n| (3..=6).contains(n)));
        for n in 3..=6 {
            assert!(drawn.contains(&n), "{n} never drawn in 400 draws");
        }
    }

    #[test]
    fn a_fresh_pool_draws_one_request_and_a_fixed_one_its_number() {
        assert_eq!(Instances::<()>::fresh().draw(), 1);
        assert_eq!(Instances::<()>::reused(5, 5).draw(), 5);
    }
}
