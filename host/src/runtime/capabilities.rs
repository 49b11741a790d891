//! What a worker's guests may reach beyond their request, built once per
//! worker from the grants: environment and directories (per instance, in
//! handler.rs), the outbound HTTP client, and the key-value store. The
//! configuration values belong to a version instead (handler.rs), so a
//! deploy picks up a changed `--config-file`.

use std::sync::Arc;

use anyhow::Result;

use super::keyvalue::KeyValue;
use super::outbound::Outbound;
use crate::config::Grants;

pub struct Capabilities {
    pub grants: Grants,
    pub outbound: Arc<Outbound>,
    pub keyvalue: Arc<KeyValue>,
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
