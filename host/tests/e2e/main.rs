//! End-to-end tests: the real `wcluster` binary, real HTTP, handlers built
//! from source (tests/handlers, examples/).

mod admin;
mod cgi;
mod chaos;
mod config_values;
mod deploy;
mod edges;
mod examples;
mod faults;
mod fleet;
mod h2;
mod harness;
mod hostile;
mod keyvalue;
mod lifecycle;
mod manifest;
mod outbound;
mod overload;
mod reuse;
mod scale;
mod serving;
mod startup;
mod strategies;
mod systemd;
mod tls;
mod trust;
mod wasi_p3;
