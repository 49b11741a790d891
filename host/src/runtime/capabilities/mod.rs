//! What a worker's guests may reach beyond their request, built once per
//! worker from the grants: environment and directories (per instance, in
//! guest/mod.rs), the outbound HTTP client (outbound/), and the key-value
//! store (keyvalue/). The configuration values (config_store.rs) belong to
//! a version instead, so a deploy picks up a changed `--config-file`.

pub mod config_store;
pub mod keyvalue;
pub mod outbound;

use std::sync::Arc;

use anyhow::Result;

use crate::config::{Grants, KeyValueBackend};
use keyvalue::KeyValue;
use outbound::Outbound;

pub struct Capabilities {
    pub grants: Grants,
    pub outbound: Arc<Outbound>,
    pub keyvalue: Arc<KeyValue>,
}

/// What the primary checks of the grants before it binds or spawns: the
/// configuration values (a bad file stops start-up with its name and
/// line), the outbound patterns and CA file (errors now, not per request),
/// and the SQLite store, which it creates once for every worker.
pub fn check(grants: &Grants) -> Result<()> {
    config_store::values(&grants.config)?;
    Outbound::new(&grants.outbound)?;
    if let KeyValueBackend::Sqlite(file) = &grants.keyvalue.backend {
        keyvalue::sqlite::Sqlite::prepare(file)?;
    }
    Ok(())
}

impl Capabilities {
    pub fn new(grants: Grants) -> Result<Self> {
        Ok(Self {
            outbound: Arc::new(Outbound::new(&grants.outbound)?),
            keyvalue: Arc::new(KeyValue::new(&grants.keyvalue)),
            grants,
        })
    }
}
