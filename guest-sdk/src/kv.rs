//! Key-value storage shared by every instance: `wasi:keyvalue`.
//!
//! A handler instance lives for one request, so anything that must outlast
//! it (a counter, a session, a cache) goes to the host's store. On wcluster
//! that is `--keyvalue sqlite` (one file shared by every worker) or
//! `--keyvalue redis://HOST:PORT` (shared by every node); without the flag
//! the store is not granted and every operation fails.
//!
//! A [`Bucket`] is a namespace of keys with byte values. On wcluster `""`
//! and `"default"` name the same default bucket; `wasmtime serve -S
//! keyvalue` knows only `""` and keeps it in memory, per instance, so a
//! component meant to run on both opens `""`.
//!
//! ```no_run
//! use wcluster_guest::{Request, kv};
//!
//! fn handle(_req: Request) -> Result<String, kv::KvError> {
//!     let bucket = kv::Bucket::open("")?;
//!     let n = bucket.increment("hits", 1)?;
//!     bucket.set("last-seen", b"now")?;
//!     Ok(format!("hit #{n}\n"))
//! }
//! ```

use std::collections::HashMap;
use std::fmt;

use crate::bindings::wasi::keyvalue::{atomics, batch, store};

/// Why a key-value operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvError {
    /// The host knows no bucket by that name.
    NoSuchStore,
    /// The component may not use that bucket.
    AccessDenied,
    /// Anything else, such as the backend being unreachable.
    Other(String),
}

impl From<store::Error> for KvError {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::NoSuchStore => Self::NoSuchStore,
            store::Error::AccessDenied => Self::AccessDenied,
            store::Error::Other(m) => Self::Other(m),
        }
    }
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchStore => f.write_str("no such key-value bucket"),
            Self::AccessDenied => f.write_str("access to the key-value bucket denied"),
            Self::Other(m) => write!(f, "key-value store error: {m}"),
        }
    }
}

impl std::error::Error for KvError {}

/// An open bucket: keys (strings) to values (bytes).
#[derive(Debug)]
pub struct Bucket {
    inner: store::Bucket,
}

impl Bucket {
    /// Opens the bucket `name`. On wcluster `""` and `"default"` are the
    /// default bucket; `""` is the only one `wasmtime serve -S keyvalue`
    /// knows.
    pub fn open(name: &str) -> Result<Bucket, KvError> {
        Ok(Bucket {
            inner: store::open(name)?,
        })
    }

    /// The value of `key`, or `None` when it is not set.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.inner.get(key)?)
    }

    /// Sets `key` to `value`, replacing any value it had.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        Ok(self.inner.set(key, value)?)
    }

    /// Removes `key`; removing a key that is not set is no error.
    pub fn delete(&self, key: &str) -> Result<(), KvError> {
        Ok(self.inner.delete(key)?)
    }

    /// Whether `key` is set.
    pub fn exists(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.inner.exists(key)?)
    }

    /// Every key in the bucket, in no particular order (all pages of
    /// `list-keys`): mind that a large bucket makes a large list.
    pub fn keys(&self) -> Result<Vec<String>, KvError> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.inner.list_keys(cursor)?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Atomically adds `delta` to the number stored at `key` (starting from
    /// 0 when it is not set) and returns the new value.
    pub fn increment(&self, key: &str, delta: u64) -> Result<u64, KvError> {
        Ok(atomics::increment(&self.inner, key, delta)?)
    }

    /// The values of `keys` in one round trip: one entry per key, in the
    /// same order, `None` for a key that is not set.
    pub fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        let wanted: Vec<String> = keys.iter().map(|k| k.as_ref().to_string()).collect();
        // Matched by name, not position: the host returns one entry per
        // key, but nothing is lost if it orders them otherwise.
        let found: HashMap<String, Vec<u8>> = batch::get_many(&self.inner, &wanted)?
            .into_iter()
            .flatten()
            .collect();
        Ok(wanted.iter().map(|k| found.get(k).cloned()).collect())
    }

    /// Sets every `(key, value)` pair in one round trip; not atomic: on an
    /// error some may have been set.
    pub fn set_many<K: AsRef<str>, V: AsRef<[u8]>>(&self, pairs: &[(K, V)]) -> Result<(), KvError> {
        let pairs: Vec<(String, Vec<u8>)> = pairs
            .iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_vec()))
            .collect();
        Ok(batch::set_many(&self.inner, &pairs)?)
    }

    /// Removes every key in `keys` in one round trip; not atomic.
    pub fn delete_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<(), KvError> {
        let keys: Vec<String> = keys.iter().map(|k| k.as_ref().to_string()).collect();
        Ok(batch::delete_many(&self.inner, &keys)?)
    }
}
