//! Everything that touches wasmtime, in three parts:
//! - `artifact/`: a handler file becomes a compiled, cached artifact (the
//!   engines' one configuration, the cache, the compile child);
//! - `guest/`: a loaded version runs requests (the three ABIs, the one call
//!   skeleton they share, instance reuse, the guests' output);
//! - `capabilities/`: what a guest may reach beyond its request (outbound
//!   HTTP, key-value, configuration values).

pub mod artifact;
pub mod capabilities;
pub mod guest;
