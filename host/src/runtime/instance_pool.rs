//! Opt-in instance reuse (`--reuse-instances N`): an instance serves up to
//! N requests, one at a time, before it is dropped. Trades isolation for
//! speed: state a guest keeps in globals or memory is seen by the requests
//! after it. An instance that trapped or ran out of time is never given
//! back. The same pool serves 0.2 components (`P` is their `Proxy`) and
//! 0.3 ones (their `Service`).

use std::sync::{Arc, Mutex};

use wasmtime::{Engine, Store};

use super::component::GuestState;

/// Idle instances kept per worker at most: enough for a busy worker's
/// concurrency; more are dropped when they come back.
const MAX_IDLE: usize = 64;

pub struct InstancePool<P> {
    idle: Mutex<Vec<Pooled<P>>>,
    max_uses: u32,
}

/// An instance with its store, and how many requests it has served.
struct Pooled<P> {
    store: Store<GuestState>,
    instance: P,
    uses: u32,
}

impl<P> InstancePool<P> {
    pub fn new(max_uses: u32) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(Vec::new()),
            max_uses,
        })
    }

    /// Drops the idle instances.
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// An idle instance, its output now labelled with `request_id`.
    fn take(&self, request_id: &Arc<str>) -> Option<Pooled<P>> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
        pooled.store.data().serve(request_id);
        Some(pooled)
    }

    /// Keeps `pooled`, which has just served one more request, unless it
    /// has served its N or the pool is full.
    fn give_back(&self, mut pooled: Pooled<P>) {
        pooled.uses += 1;
        if pooled.uses >= self.max_uses {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(pooled);
        }
    }
}

/// The store for one request, and the instance in it if it is a reused one
/// (the caller instantiates otherwise). With reuse, the lease gives both
/// back once the request has gone well.
pub fn checkout<P>(
    // With reuse: the pool, and the id of this request, which a reused
    // instance's output is labelled with.
    reuse: Option<(&Arc<InstancePool<P>>, Arc<str>)>,
    engine: &Engine,
    state: impl FnOnce() -> GuestState,
) -> (Store<GuestState>, Option<P>, Option<Lease<P>>) {
    let (pool, reused) = match reuse {
        Some((pool, id)) => (Some(pool.clone()), pool.take(&id)),
        None => (None, None),
    };
    let (mut store, instance, uses) = match reused {
        Some(p) => (p.store, Some(p.instance), p.uses),
        None => {
            let mut store = Store::new(engine, state());
            super::guest::yield_at_every_tick(&mut store);
            (store, None, 0)
        }
    };
    store.set_epoch_deadline(1);
    (store, instance, pool.map(|pool| Lease { pool, uses }))
}

pub struct Lease<P> {
    pool: Arc<InstancePool<P>>,
    uses: u32,
}

impl<P> Lease<P> {
    pub fn give_back(self, store: Store<GuestState>, instance: P) {
        self.pool.give_back(Pooled {
            store,
            instance,
            uses: self.uses,
        });
    }
}
