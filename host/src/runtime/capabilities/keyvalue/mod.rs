//! wasi:keyvalue (store, atomics, batch at 0.2.0-draft, the version
//! `wasmtime serve -S keyvalue` binds) over a store every worker shares:
//! workers are separate processes, so an in-memory map would give each its
//! own data. A grant like the others: without `--keyvalue` every bucket
//! refuses to open, naming the flag. SQLite is the embedded backend (one
//! database file in the state directory), Redis shares state between
//! nodes. Values of `increment` are decimal ASCII, as wasmtime's own
//! implementation and Redis keep them.
//!
//! Everything is bounded: keys, values, batches (count and bytes, both ways)
//! and the store's size (`--keyvalue-max-bytes`); every operation by
//! `--keyvalue-timeout`: a backend that is down gives the guest an error
//! (and the log a line), never a hung request, and an operation past its
//! deadline is cancelled or never started; only a write whose commit (or
//! Redis command) had already gone out may still land after its guest was
//! told it failed. A Redis URL's credentials appear in no message.

mod redis;
pub(crate) mod sqlite;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::config::worker::redact_url;
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

/// The values of a `get-many`, in the order of its keys (None: no such key).
pub type Values = Vec<Option<Vec<u8>>>;

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
    /// The values of `keys`, refused (`Refused`) when keys and values come
    /// to more than `max_bytes`.
    async fn get_many(&self, bucket: &str, keys: Vec<String>, max_bytes: u64) -> Result<Values>;
    async fn set_many(&self, bucket: &str, pairs: Vec<(String, Vec<u8>)>) -> Result<()>;
    async fn delete_many(&self, bucket: &str, keys: Vec<String>) -> Result<()>;
}

/// What the guest did wrong (a write past the quota, a batch too big):
/// the guest gets the message as it is.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The refusal of a write past `--keyvalue-max-bytes`.
fn full(max_bytes: u64) -> anyhow::Error {
    Refused(format!(
        "the key-value store is full: it holds at most {} (--keyvalue-max-bytes); \
         delete keys, or raise the limit",
        bytesize::ByteSize(max_bytes)
    ))
    .into()
}

/// The refusal of a get-many whose answer would be too big.
fn answer_too_big(bytes: u64, max_bytes: u64) -> anyhow::Error {
    Refused(format!(
        "the keys and values asked for come to {bytes} bytes; a batch carries at most {} \
         (--keyvalue-max-batch-bytes)",
        bytesize::ByteSize(max_bytes)
    ))
    .into()
}

const NOT_GRANTED: &str = "wasi:keyvalue is not granted: start wcluster with \
     --keyvalue sqlite (or --keyvalue redis://HOST:PORT) to give handlers a store";

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
        let grant = &self.grant;
        self.backend
            .get_or_try_init(|| async {
                Ok(match &grant.backend {
                    KeyValueBackend::Off => anyhow::bail!(NOT_GRANTED),
                    KeyValueBackend::Sqlite(path) => {
                        Arc::new(sqlite::Sqlite::open(path, grant.timeout, grant.max_bytes).await?)
                            as Arc<dyn Backend>
                    }
                    KeyValueBackend::Redis(url) => {
                        Arc::new(redis::Redis::connect(url, grant.timeout, grant.max_bytes)?)
                    }
                })
            })
            .await
    }

    /// The backend as messages name it: a Redis URL without credentials.
    fn describe(&self) -> String {
        match &self.grant.backend {
            KeyValueBackend::Off => "not granted".into(),
            KeyValueBackend::Sqlite(p) => format!("sqlite {}", p.display()),
            KeyValueBackend::Redis(url) => redact_url(url),
        }
    }

    /// `text` without the Redis URL's credentials, wherever a library may
    /// have put them.
    fn scrub(&self, text: String) -> String {
        let KeyValueBackend::Redis(url) = &self.grant.backend else {
            return text;
        };
        let mut text = text.replace(url.as_str(), &redact_url(url));
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        if let Some((userinfo, _)) = rest.rsplit_once('@') {
            let password = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
            for secret in [userinfo, password] {
                if secret.len() >= 3 {
                    text = text.replace(secret, "***");
                }
            }
        }
        text
    }

    /// One log line per second at most, however many requests fail.
    fn log(&self, line: impl FnOnce() -> String) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.last_logged.swap(now, Ordering::Relaxed) != now {
            tracing::warn!("{}", self.scrub(line()));
        }
    }

    /// Runs one operation within the timeout; a failure becomes the guest's
    /// `other` error and a (rate-limited) log line. At the deadline the
    /// operation's future is dropped: one still waiting for the backend
    /// never starts, one running is cancelled (sqlite.rs).
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
                "no answer within {:?} (--keyvalue-timeout); the operation was cancelled",
                self.grant.timeout
            )),
        };
        outcome.map_err(|e| {
            if let Some(Refused(why)) = e.downcast_ref::<Refused>() {
                self.log(|| format!("keyvalue {what} refused: {why}"));
                return Error::Other(why.clone());
            }
            let backend = self.describe();
            self.log(|| format!("keyvalue {what} failed ({backend}): {e:#}"));
            Error::Other(self.scrub(format!("keyvalue backend ({backend}): {e:#}")))
        })
    }

    /// A batch's size: at most `--keyvalue-max-batch` keys and
    /// `--keyvalue-max-batch-bytes` bytes.
    fn check_batch(&self, count: usize, bytes: u64) -> Result<(), Error> {
        if count > self.grant.max_batch {
            return Err(Error::Other(format!(
                "the batch has {count} keys; the limit is {} (--keyvalue-max-batch)",
                self.grant.max_batch
            )));
        }
        if bytes > self.grant.max_batch_bytes {
            return Err(Error::Other(format!(
                "the batch carries {bytes} bytes; the limit is {} (--keyvalue-max-batch-bytes)",
                bytesize::ByteSize(self.grant.max_batch_bytes)
            )));
        }
        Ok(())
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
        if self.kv.grant.backend == KeyValueBackend::Off {
            self.kv
                .log(|| format!("a handler opened a key-value bucket, but {NOT_GRANTED}"));
            return Err(Error::Other(NOT_GRANTED.into()));
        }
        let name = bucket_name(&identifier)?;
        // A manifest's handler opens only the buckets it names: any other
        // is wasi:keyvalue's access-denied, never another handler's data.
        if let Some(allowed) = &self.kv.grant.buckets
            && !allowed
                .iter()
                .any(|b| bucket_name(b).is_ok_and(|b| b == name))
        {
            self.kv.log(|| {
                format!("a handler opened key-value bucket `{name}`, which its manifest entry does not name (key_value_stores)")
            });
            return Err(Error::AccessDenied);
        }
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
        let bytes = keys.iter().map(|k| k.len() as u64).sum();
        self.kv.check_batch(keys.len(), bytes)?;
        let names = keys.clone();
        let max = self.kv.grant.max_batch_bytes;
        let values = self
            .kv
            .run("get-many", |be| async move {
                be.get_many(&bucket, keys, max).await
            })
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
        let bytes = pairs.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        self.kv.check_batch(pairs.len(), bytes)?;
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
        let bytes = keys.iter().map(|k| k.len() as u64).sum();
        self.kv.check_batch(keys.len(), bytes)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_from_urls_and_messages() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://:pw@10.0.0.5:6379/0", "redis://***@10.0.0.5:6379/0"),
            ("rediss://user:p%40ss@h:1", "rediss://***@h:1"),
            ("redis://:pa/ss@h:1/0", "redis://***@h:1/0"),
            ("redis://:pa?ss@h:1/0", "redis://***@h:1/0"),
            ("redis://h:1/0?password=pw", "redis://h:1/0?***"),
            ("memcached://x", "memcached://x"),
            ("user:pw@h", "***@h"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        let grant = KeyValueGrant {
            backend: KeyValueBackend::Redis("redis://admin:hunter22@h:1/0".into()),
            ..KeyValueGrant::default()
        };
        assert_eq!(
            format!("{:?}", grant.backend),
            r#"Redis("redis://***@h:1/0")"#
        );
        let kv = KeyValue::new(&grant);
        let text = kv.scrub("at redis://admin:hunter22@h:1/0, auth hunter22 failed".into());
        assert_eq!(text, "at redis://***@h:1/0, auth *** failed");
    }

    #[tokio::test]
    async fn without_the_grant_every_operation_names_the_flag() {
        let kv = KeyValue::new(&KeyValueGrant::default());
        let err = kv
            .run("get", |be| async move { be.get("default", "k").await })
            .await
            .unwrap_err();
        let Error::Other(msg) = err else {
            panic!("{err:?}")
        };
        assert!(msg.contains("--keyvalue sqlite"), "{msg}");
    }

    #[test]
    fn batches_are_bounded_in_count_and_bytes() {
        let kv = KeyValue::new(&KeyValueGrant::default());
        assert!(kv.check_batch(1000, 4 << 20).is_ok());
        let Err(Error::Other(msg)) = kv.check_batch(1001, 10) else {
            panic!()
        };
        assert!(msg.contains("--keyvalue-max-batch"), "{msg}");
        let Err(Error::Other(msg)) = kv.check_batch(5, (4 << 20) + 1) else {
            panic!()
        };
        assert!(msg.contains("--keyvalue-max-batch-bytes"), "{msg}");
    }
}
