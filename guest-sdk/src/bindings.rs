//! Bindings for the capabilities beyond wasi:http/proxy: wasi:config and
//! wasi:keyvalue, generated from the WIT vendored at `wit/capabilities` (the
//! versions `wasmtime serve -S config,keyvalue` binds). The world imports no
//! wasi:http, so nothing here clashes with the `wasi` crate's types.
//!
//! A component imports only the interfaces its code calls: a handler that
//! uses none of these helpers keeps the imports of a plain proxy component.

wit_bindgen::generate!({
    path: "../wit/capabilities",
    world: "capabilities",
    // The interfaces come from other packages (wasi:config, wasi:keyvalue):
    // generate them here rather than map them to another crate's types.
    generate_all,
});
