//! The shared backend: a Redis (or Valkey) server that several wcluster nodes
//! use at once. A bucket is one hash (`wcluster:kv:BUCKET`), so `increment`
//! is HINCRBY, atomic on the server, and `list-keys` is HSCAN with its own
//! cursor. The connection manager reconnects by itself when the server comes
//! back; until then each call fails within the timeout.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::Backend;

pub struct Redis {
    conn: ConnectionManager,
}

fn hash(bucket: &str) -> String {
    format!("wcluster:kv:{bucket}")
}

impl Redis {
    /// Connects lazily: a server that is down now is tried again per call.
    pub fn connect(url: &str, timeout: Duration) -> Result<Self> {
        let client = redis::Client::open(url).with_context(|| format!("--keyvalue `{url}`"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .with_context(|| format!("--keyvalue `{url}`"))?;
        Ok(Self { conn })
    }
}

#[async_trait::async_trait]
impl Backend for Redis {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.conn.clone().hget(hash(bucket), key).await?)
    }

    async fn set(&self, bucket: &str, key: &str, value: Vec<u8>) -> Result<()> {
        let _: () = self.conn.clone().hset(hash(bucket), key, value).await?;
        Ok(())
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        let _: () = self.conn.clone().hdel(hash(bucket), key).await?;
        Ok(())
    }

    async fn exists(&self, bucket: &str, key: &str) -> Result<bool> {
        Ok(self.conn.clone().hexists(hash(bucket), key).await?)
    }

    async fn list(&self, bucket: &str, cursor: Option<u64>) -> Result<(Vec<String>, Option<u64>)> {
        let (next, pairs): (u64, Vec<Vec<u8>>) = redis::cmd("HSCAN")
            .arg(hash(bucket))
            .arg(cursor.unwrap_or(0))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut self.conn.clone())
            .await?;
        // HSCAN answers field, value, field, value...
        let keys = pairs
            .chunks(2)
            .map(|p| String::from_utf8_lossy(&p[0]).into_owned())
            .collect();
        Ok((keys, (next != 0).then_some(next)))
    }

    async fn increment(&self, bucket: &str, key: &str, delta: u64) -> Result<u64> {
        let Ok(delta) = i64::try_from(delta) else {
            bail!("Redis increments by at most {}", i64::MAX);
        };
        let new: i64 = self.conn.clone().hincr(hash(bucket), key, delta).await?;
        u64::try_from(new).context("the stored number is negative")
    }

    async fn get_many(&self, bucket: &str, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        Ok(redis::cmd("HMGET")
            .arg(hash(bucket))
            .arg(&keys)
            .query_async(&mut self.conn.clone())
            .await?)
    }

    async fn set_many(&self, bucket: &str, pairs: Vec<(String, Vec<u8>)>) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let _: () = self
            .conn
            .clone()
            .hset_multiple(hash(bucket), &pairs)
            .await?;
        Ok(())
    }

    async fn delete_many(&self, bucket: &str, keys: Vec<String>) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let _: () = self.conn.clone().hdel(hash(bucket), &keys).await?;
        Ok(())
    }
}
