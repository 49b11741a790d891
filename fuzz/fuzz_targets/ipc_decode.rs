//! Any bytes on the channel: decoding never panics, and what decodes
//! re-encodes to something that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../host/src/ipc/messages.rs"]
#[allow(dead_code)]
mod messages;
// messages.rs names the counters as `super::counts`.
#[path = "../../host/src/ipc/counts.rs"]
#[allow(dead_code)]
mod counts;

// messages.rs names the worker settings as `crate::config::worker`. The
// file is included at the top level: a `#[path]` inside an inline module is
// resolved through a `config/` directory that does not exist here.
#[path = "../../host/src/config/worker.rs"]
#[allow(dead_code)]
mod config_worker;
// The application a worker loads (in Init and Load).
#[path = "../../host/src/config/app.rs"]
#[allow(dead_code)]
mod config_app;
mod config {
    pub(crate) use super::config_app as app;
    pub(crate) use super::config_worker as worker;
}

use messages::{ToPrimary, ToWorker, decode};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode::<ToWorker>(data) {
        let again = serde_json::to_vec(&msg).expect("a decoded message encodes");
        let back: ToWorker = decode(&again).expect("an encoded message decodes");
        assert_eq!(format!("{msg:?}"), format!("{back:?}"));
    }
    if let Ok(msg) = decode::<ToPrimary>(data) {
        let again = serde_json::to_vec(&msg).expect("a decoded message encodes");
        let back: ToPrimary = decode(&again).expect("an encoded message decodes");
        assert_eq!(format!("{msg:?}"), format!("{back:?}"));
    }
});
