//! Opt-in instance reuse (`--reuse-instances N`): an instance serves up to
//! N requests, one at a time, before it is dropped. Trades isolation for
//! speed: state a guest keeps in globals or memory is seen by the requests
//! after it. An instance that trapped or ran out of time is never given
//! back. The same pool serves 0.2 components (`P` is their `Proxy`) and
//! 0.3 ones (their `Service`).

use std::sync::{Arc, Mutex};

use wasmtime::Store;

use super::component::GuestState;

/// Idle instances kept per worker at most: enough for a busy worker's
/// concurrency; more are dropped when they come back.
const MAX_IDLE: usize = 64;

pub struct InstancePool<P> {
    idle: Mutex<Vec<Pooled<P>>>,
    max_uses: u32,
}

/// An instance with its store, and how many requests it has served.
pub struct Pooled<P> {
    pub store: Store<GuestState>,
    pub instance: P,
    pub uses: u32,
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
    pub fn take(&self, request_id: &Arc<str>) -> Option<Pooled<P>> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
        pooled.store.data().serve(request_id);
        Some(pooled)
    }

    /// Keeps `pooled`, which has just served one more request, unless it
    /// has served its N or the pool is full.
    pub fn give_back(&self, mut pooled: Pooled<P>) {
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
