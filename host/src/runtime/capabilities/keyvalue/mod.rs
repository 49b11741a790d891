//! wasi:keyvalue (store, atomics, batch at 0.2.0-draft, the version
//! `wasmtime serve -S keyvalue` binds) over a store every worker shares:
//! workers are separate processes, so an in-memory map would give each its
//! own data. SQLite by default (one database file in the state directory),
//! Redis to share state between nodes. Values of `increment` are decimal
//! ASCII, as wasmtime's own implementation and Redis keep them.
//!
//! Every operation is bounded by `--keyvalue-timeout`: a backend that is
//! down gives the guest an error (and the log a line), never a hung request.

mod redis;
pub(crate) mod sqlite;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::config::{KeyValueBackend, KeyValueGrant};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/capabilities",
        world: "wasi:keyvalue/imports",
        imports: { default: async },
        with: { "wasi:keyvalue/store.bucket": super::Bucket },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};
use store::{Error, KeyResponse};

/// An open bucket, as the guest holds it.
pub struct Bucket {
    name: String,
}

/// What a backend stores: buckets of keys to bytes.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>>;
    async fn set(&self, bucket: &str, key: &str, value: Vec<u8>) -> Result<()>;
    async fn delete(&self, bucket: &str, key: &str) -> Result<()>;
    async fn exists(&self, bucket: &str, key: &str) -> Result<bool>;
    /// A page of keys from `cursor` on, and the cursor of the next page.
    async fn list(&self, bucket: &str, cursor: Option<u64>) -> Result<(Vec<String>, Option<u64>)>;
    /// Adds `delta` to the number stored at `key` (0 if there is none),
    /// atomically across every worker and node; the new value.
    async fn increment(&self, bucket: &str, key: &str, delta: u64) -> Result<u64>;
    async fn get_many(&self, bucket: &str, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>>;
    async fn set_many(&self, bucket: &str, pairs: Vec<(String, Vec<u8>)>) -> Result<()>;
    async fn delete_many(&self, bucket: &str, keys: Vec<String>) -> Result<()>;
}

/// A worker's key-value store: its backend (opened on first use) and limits.
pub struct KeyValue {
    grant: KeyValueGrant,
    backend: tokio::sync::OnceCell<Arc<dyn Backend>>,
    /// When a backend failure was last logged (unix seconds): one line per
    /// second at most, however many requests fail.
    last_logged: AtomicU64,
}

impl KeyValue {
    pub fn new(grant: &KeyValueGrant) -> Self {
        Self {
            grant: grant.clone(),
            backend: tokio::sync::OnceCell::new(),
            last_logged: AtomicU64::new(0),
        }
    }

    async fn backend(&self) -> Result<&Arc<dyn Backend>> {
        self.backend
            .get_or_try_init(|| async {
                Ok(match &self.grant.backend {
                    KeyValueBackend::Sqlite(path) => {
                        Arc::new(sqlite::Sqlite::open(path, self.grant.timeout).await?)
                            as Arc<dyn Backend>
                    }
                    KeyValueBackend::Redis(url) => {
                        Arc::new(redis::Redis::connect(url, self.grant.timeout)?)
                    }
                })
            })
            .await
    }

    /// Runs one operation within the timeout; a failure becomes the guest's
    /// `other` error and a (rate-limited) log line.
    async fn run<T, F>(
        &self,
        what: &str,
        op: impl FnOnce(Arc<dyn Backend>) -> F,
    ) -> Result<T, Error>
    where
        F: Future<Output = Result<T>>,
    {
        let work = async {
            let backend = self.backend().await?.clone();
            op(backend).await
        };
        let outcome = match tokio::time::timeout(self.grant.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!(
                "no answer within {:?} (--keyvalue-timeout)",
                self.grant.timeout
            )),
        };
        outcome.map_err(|e| {
            let backend = match &self.grant.backend {
                KeyValueBackend::Sqlite(p) => format!("sqlite {}", p.display()),
                KeyValueBackend::Redis(url) => url.clone(),
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if self.last_logged.swap(now, Ordering::Relaxed) != now {
                tracing::warn!("keyvalue {what} failed ({backend}): {e:#}");
            }
            Error::Other(format!("keyvalue backend ({backend}): {e:#}"))
        })
    }

    fn check_key(&self, key: &str) -> Result<(), Error> {
        if key.len() > self.grant.max_key {
            return Err(Error::Other(format!(
                "the key is {} bytes; the limit is {} (--keyvalue-max-key)",
                key.len(),
                self.grant.max_key
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Error> {
        if value.len() > self.grant.max_value {
            return Err(Error::Other(format!(
                "the value is {} bytes; the limit is {} (--keyvalue-max-value)",
                value.len(),
                self.grant.max_value
            )));
        }
        Ok(())
    }
}

/// Bucket names: `""` (what `wasmtime serve` guests open) and `"default"`
/// are the same default bucket; others are letters, digits, `_-.`.
fn bucket_name(identifier: &str) -> Result<String, Error> {
    if identifier.is_empty() {
        return Ok("default".into());
    }
    let ok = identifier.len() <= 64
        && identifier
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        return Err(Error::Other(format!(
            "bucket `{identifier}`: a name is 1 to 64 letters, digits, `_`, `-` or `.`"
        )));
    }
    Ok(identifier.to_string())
}

/// The store's view for the generated host traits.
pub struct KvView<'a> {
    pub table: &'a mut ResourceTable,
    pub kv: &'a KeyValue,
}

struct HasKv;

impl HasData for HasKv {
    type Data<'a> = KvView<'a>;
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KvView<'_>,
) -> wasmtime::Result<()> {
    bindings::Imports::add_to_linker::<T, HasKv>(linker, view)
}

impl KvView<'_> {
    fn bucket(&self, b: &Resource<Bucket>) -> Result<String, Error> {
        self.table
            .get(b)
            .map(|b| b.name.clone())
            .map_err(|e| Error::Other(e.to_string()))
    }
}

impl store::Host for KvView<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, Error> {
        let name = bucket_name(&identifier)?;
        self.table
            .push(Bucket { name })
            .map_err(|e| Error::Other(e.to_string()))
    }
}

impl store::HostBucket for KvView<'_> {
    async fn get(&mut self, b: Resource<Bucket>, key: String) -> Result<Option<Vec<u8>>, Error> {
        let bucket = self.bucket(&b)?;
        self.kv.check_key(&key)?;
        self.kv
            .run("get", |be| async move { be.get(&bucket, &key).await })
            .await
    }

    async fn set(&mut self, b: Resource<Bucket>, key: String, value: Vec<u8>) -> Result<(), Error> {
        let bucket = self.bucket(&b)?;
        self.kv.check_key(&key)?;
        self.kv.check_value(&value)?;
        self.kv
            .run(
                "set",
                |be| async move { be.set(&bucket, &key, value).await },
            )
            .await
    }

    async fn delete(&mut self, b: Resource<Bucket>, key: String) -> Result<(), Error> {
        let bucket = self.bucket(&b)?;
        self.kv.check_key(&key)?;
        self.kv
            .run("delete", |be| async move { be.delete(&bucket, &key).await })
            .await
    }

    async fn exists(&mut self, b: Resource<Bucket>, key: String) -> Result<bool, Error> {
        let bucket = self.bucket(&b)?;
        self.kv.check_key(&key)?;
        self.kv
            .run("exists", |be| async move { be.exists(&bucket, &key).await })
            .await
    }

    async fn list_keys(
        &mut self,
        b: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<KeyResponse, Error> {
        let bucket = self.bucket(&b)?;
        let (keys, cursor) = self
            .kv
            .run(
                "list-keys",
                |be| async move { be.list(&bucket, cursor).await },
            )
            .await?;
        Ok(KeyResponse { keys, cursor })
    }

    async fn drop(&mut self, b: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(b)?;
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        b: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, Error> {
        let bucket = self.bucket(&b)?;
        self.kv.check_key(&key)?;
        self.kv
            .run("increment", |be| async move {
                be.increment(&bucket, &key, delta).await
            })
            .await
    }
}

impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        b: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, Error> {
        let bucket = self.bucket(&b)?;
        for k in &keys {
            self.kv.check_key(k)?;
        }
        let names = keys.clone();
        let values = self
            .kv
            .run(
                "get-many",
                |be| async move { be.get_many(&bucket, keys).await },
            )
            .await?;
        Ok(names
            .into_iter()
            .zip(values)
            .map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    async fn set_many(
        &mut self,
        b: Resource<Bucket>,
        pairs: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Error> {
        let bucket = self.bucket(&b)?;
        for (k, v) in &pairs {
            self.kv.check_key(k)?;
            self.kv.check_value(v)?;
        }
        self.kv
            .run(
                "set-many",
                |be| async move { be.set_many(&bucket, pairs).await },
            )
            .await
    }

    async fn delete_many(&mut self, b: Resource<Bucket>, keys: Vec<String>) -> Result<(), Error> {
        let bucket = self.bucket(&b)?;
        for k in &keys {
            self.kv.check_key(k)?;
        }
        self.kv
            .run("delete-many", |be| async move {
                be.delete_many(&bucket, keys).await
            })
            .await
    }
}

/// A stored counter: decimal ASCII digits.
fn parse_counter(bytes: &[u8]) -> Result<u64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            anyhow::anyhow!("the value is not a decimal number, so it cannot be incremented")
        })
}
