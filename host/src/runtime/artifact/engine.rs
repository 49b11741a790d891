//! The one place the wasmtime `Engine` is configured. The compile child and
//! every worker call it with the same settings, so an artifact compiled by one
//! deserializes in the others.
//!
//! There are two engines, told apart by `Concurrency`: WASI 0.3 components
//! need the component model's concurrency support, which makes every store
//! and every call into a component dearer (a 0.2 request paid about a fifth
//! of its throughput for it). WASI 0.2 components and CGI modules run on an
//! engine without it. An artifact is compiled for one of the two.

use std::sync::{Mutex, OnceLock};

use anyhow::Result;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::EngineSettings;

/// How instances get their memory. Only the workers instantiate; the compile
/// child runs under an address-space limit, where the pool's reservations
/// (terabytes of virtual memory) would not fit. The choice does not change
/// the compiled code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    Pooling,
    OnDemand,
}

/// Instances kept beyond the concurrency limit, for the requests still
/// streaming a body after their permit was counted.
const SPARE_INSTANCES: u32 = 16;
/// Bytes of each table and stack kept resident between instances.
const KEEP_RESIDENT: usize = 2 << 20;
/// Bytes of each linear memory reset in place rather than decommitted.
const KEEP_RESIDENT_MEMORY: usize = 128 << 10;
const DECOMMIT_BATCH: usize = 32;

/// Whether an engine supports the component model's concurrency (async
/// lifts, streams, futures): WASI 0.3 components need it, nothing else does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Concurrency {
    Off,
    On,
}

impl Concurrency {
    /// In the order the compile child tries them: the cheaper engine first.
    pub const ALL: [Concurrency; 2] = [Concurrency::Off, Concurrency::On];
}

pub fn build(
    settings: &EngineSettings,
    allocation: Allocation,
    concurrency: Concurrency,
) -> Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    let on = concurrency == Concurrency::On;
    config.concurrency_support(on);
    config.wasm_component_model_async(on);
    // Epochs rather than fuel: a counter bump from one thread per worker costs
    // nothing on the hot path, and lets a `loop {}` guest yield and be stopped.
    config.epoch_interruption(true);
    config.memory_init_cow(true);
    if allocation == Allocation::Pooling {
        let slots = settings.max_concurrent + SPARE_INSTANCES;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            .total_stacks(slots)
            // Components from Python or JavaScript toolchains hold several core
            // instances, memories and tables each.
            .max_core_instances_per_component(64)
            .max_memories_per_component(16)
            .max_tables_per_component(64)
            .total_core_instances(slots * 16)
            .total_memories(slots * 4)
            .total_tables(slots * 16)
            .max_core_instance_size(16 << 20)
            .max_component_instance_size(16 << 20)
            .max_memory_size(settings.max_memory as usize)
            // A fresh instance per request means a slot is reset per request:
            // dirty pages up to the keep-resident budget are zeroed in place
            // (found with PAGEMAP_SCAN), the rest decommitted. wasmtime 50 no
            // longer stops the scan after 32 regions, and the pages it zeroes
            // stay "written", so it zeroes the whole budget every time: with
            // 2 MiB that was 22% of a worker's time (memset) plus 10%
            // scanning. A small budget keeps the pages small guests touch
            // every time without zeroing what big ones touched once.
            // Measured per budget (one worker, wrk -c32, fresh instances;
            // 0 / 64 KiB / 128 KiB / 256 KiB / 2 MiB): the C CGI example
            // 11.4k / 16.5k / 18.1k / 19.9k / -, the Rust hello 16.4k /
            // 16.5k / 16.5k / 12.2k / 13.2k, p3-hello 15.5k / 12.1-14.3k /
            // 13.6k / 11.2k / 7.0k req/s; JavaScript and Python within
            // noise of each other below 2 MiB.
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
            .table_keep_resident(KEEP_RESIDENT)
            .async_stack_keep_resident(KEEP_RESIDENT)
            .pagemap_scan(wasmtime::Enabled::Auto)
            // Decommit what remains in batches: one TLB shootdown per batch.
            .decommit_batch_size(DECOMMIT_BATCH);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Ok(Engine::new(&config)?)
}

/// A short stable name for "code compiled by either engine with these
/// settings": part of the cache key.
pub fn compatibility_key(settings: &EngineSettings) -> Result<String> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for concurrency in Concurrency::ALL {
        build(settings, Allocation::OnDemand, concurrency)?
            .precompile_compatibility_hash()
            .hash(&mut h);
    }
    Ok(format!("{:016x}", h.finish()))
}

/// A worker's engines, each built when a version first needs it: a worker
/// that serves only 0.2 components never reserves a pool for 0.3 ones.
pub struct Engines {
    settings: EngineSettings,
    allocation: Allocation,
    off: OnceLock<Engine>,
    on: OnceLock<Engine>,
    /// Held while an engine is built, so two first loads build it once.
    building: Mutex<()>,
}

impl Engines {
    pub fn new(settings: EngineSettings, allocation: Allocation) -> Self {
        Self {
            settings,
            allocation,
            off: OnceLock::new(),
            on: OnceLock::new(),
            building: Mutex::new(()),
        }
    }

    pub fn get(&self, concurrency: Concurrency) -> Result<&Engine> {
        let cell = match concurrency {
            Concurrency::Off => &self.off,
            Concurrency::On => &self.on,
        };
        if let Some(engine) = cell.get() {
            return Ok(engine);
        }
        let _building = self.building.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(engine) = cell.get() {
            return Ok(engine);
        }
        let engine = build(&self.settings, self.allocation, concurrency)?;
        Ok(cell.get_or_init(|| engine))
    }

    /// One epoch tick for every engine built so far.
    pub fn increment_epoch(&self) {
        for engine in [self.off.get(), self.on.get()].into_iter().flatten() {
            engine.increment_epoch();
        }
    }
}
