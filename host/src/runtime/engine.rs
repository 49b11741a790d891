//! The one place the wasmtime `Engine` is configured. The compile child and
//! every worker call it with the same settings, so an artifact compiled by one
//! deserializes in the others.

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
/// Bytes of each memory, table and stack kept resident between instances.
const KEEP_RESIDENT: usize = 2 << 20;
const DECOMMIT_BATCH: usize = 32;

pub fn build(settings: &EngineSettings, allocation: Allocation) -> Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
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
            // resetting the low, hot pages with memset (only the dirty ones,
            // where the kernel has PAGEMAP_SCAN) instead of madvise avoids a
            // page fault per touched page and a TLB flush per request, which
            // profiles showed as the largest costs.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .async_stack_keep_resident(KEEP_RESIDENT)
            .pagemap_scan(wasmtime::Enabled::Auto)
            // Decommit what remains in batches: one TLB shootdown per batch.
            .decommit_batch_size(DECOMMIT_BATCH);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Ok(Engine::new(&config)?)
}

/// A short stable name for "code compiled by this engine": part of the cache key.
pub fn compatibility_key(engine: &Engine) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}
