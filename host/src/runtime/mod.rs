//! Everything that touches wasmtime: the engine configuration (one function
//! for the compile child and the workers), artifacts, and the handler ABIs.

pub mod artifact;
pub mod cache;
pub mod capabilities;
pub mod cgi;
pub mod cgi_head;
pub mod compile;
pub mod component;
pub mod component_p3;
pub mod config_store;
pub mod engine;
pub mod guest;
pub mod guest_io;
pub mod handler;
pub mod instance_pool;
pub mod keyvalue;
pub mod outbound;
pub mod prefetch;
