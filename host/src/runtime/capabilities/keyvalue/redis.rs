//! The shared backend: a Redis (or Valkey) server that several wcluster nodes
//! use at once. A bucket is one hash (`wcluster:kv:BUCKET`), so `increment`
//! is HINCRBY, atomic on the server, and `list-keys` is HSCAN with its own
//! cursor. The connection manager reconnects by itself when the server comes
//! back; until then each call fails within the timeout.
//!
//! The store's size (`--keyvalue-max-bytes`) is the sum of the keys and
//! values wcluster wrote, kept in `wcluster:kv-bytes` (no bucket's hash can
//! have that name) by the Lua scripts that write, so a write and its
//! accounting are one atomic step for every node; data written before the
//! count existed is not counted. A command is sent only while its deadline
//! has not passed (mod.rs drops it then); one sent runs whole, bounded by
//! the batch limits.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Value};

use super::{Backend, Values, answer_too_big, full};

pub struct Redis {
    conn: ConnectionManager,
    max_bytes: u64,
}

fn hash(bucket: &str) -> String {
    format!("wcluster:kv:{bucket}")
}

/// The bytes of keys and values wcluster stored.
const COUNTER: &str = "wcluster:kv-bytes";

/// KEYS: the hash, the counter. ARGV: the quota, then field, value pairs.
/// Sets them all and counts the growth, or (-1) none when it would pass
/// the quota. A field given twice counts once, as HSET stores it.
const SET: &str = r"
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local size, delta = {}, 0
for i = 2, #ARGV, 2 do
  local k = ARGV[i]
  local old = size[k]
  if old == nil then
    old = 0
    if redis.call('HEXISTS', KEYS[1], k) == 1 then
      old = #k + redis.call('HSTRLEN', KEYS[1], k)
    end
  end
  size[k] = #k + #ARGV[i + 1]
  delta = delta + size[k] - old
end
if delta > 0 and used + delta > tonumber(ARGV[1]) then
  return -1
end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
if redis.call('INCRBY', KEYS[2], delta) < 0 then
  redis.call('SET', KEYS[2], 0)
end
return 0
";

/// KEYS: the hash, the counter. ARGV: the fields to delete.
const DELETE: &str = r"
local delta = 0
for i = 1, #ARGV do
  local k = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], k) == 1 then
    delta = delta + #k + redis.call('HSTRLEN', KEYS[1], k)
    redis.call('HDEL', KEYS[1], k)
  end
end
if delta > 0 and redis.call('DECRBY', KEYS[2], delta) < 0 then
  redis.call('SET', KEYS[2], 0)
end
return 0
";

/// KEYS: the hash, the counter. ARGV: the quota, the field, the delta.
/// The new value as a string (a Lua number would round it), or nil when a
/// new counter would pass the quota (an existing one grows by a few bytes
/// at most, and is let).
const INCREMENT: &str = r"
local k = ARGV[2]
local old = 0
if redis.call('HEXISTS', KEYS[1], k) == 1 then
  old = #k + redis.call('HSTRLEN', KEYS[1], k)
elseif tonumber(redis.call('GET', KEYS[2]) or '0') + #k + 20 > tonumber(ARGV[1]) then
  return false
end
redis.call('HINCRBY', KEYS[1], k, ARGV[3])
redis.call('INCRBY', KEYS[2], #k + redis.call('HSTRLEN', KEYS[1], k) - old)
return redis.call('HGET', KEYS[1], k)
";

/// KEYS: the hash. ARGV: the most bytes, then the fields. {total} when the
/// keys and values come to more than that, else {total, value or nil...}.
const GET_MANY: &str = r"
local total = 0
for i = 2, #ARGV do
  total = total + #ARGV[i] + redis.call('HSTRLEN', KEYS[1], ARGV[i])
end
if total > tonumber(ARGV[1]) then
  return {total}
end
local out = {total}
for i = 2, #ARGV do
  out[#out + 1] = redis.call('HGET', KEYS[1], ARGV[i])
end
return out
";

impl Redis {
    /// Connects lazily: a server that is down now is tried again per call.
    /// Errors never show `url`: it may hold a password (mod.rs names the
    /// backend, redacted).
    pub fn connect(url: &str, timeout: Duration, max_bytes: u64) -> Result<Self> {
        let client = redis::Client::open(url).context("--keyvalue")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config).context("--keyvalue")?;
        Ok(Self { conn, max_bytes })
    }

    fn script(&self, script: &str, bucket: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(2).arg(hash(bucket)).arg(COUNTER);
        cmd
    }
}

#[async_trait::async_trait]
impl Backend for Redis {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.conn.clone().hget(hash(bucket), key).await?)
    }

    async fn set(&self, bucket: &str, key: &str, value: Vec<u8>) -> Result<()> {
        self.set_many(bucket, vec![(key.to_string(), value)]).await
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        self.delete_many(bucket, vec![key.to_string()]).await
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
        let new: Option<String> = self
            .script(INCREMENT, bucket)
            .arg(self.max_bytes)
            .arg(key)
            .arg(delta)
            .query_async(&mut self.conn.clone())
            .await?;
        let new = new.ok_or_else(|| full(self.max_bytes))?;
        new.parse().context("the stored number is negative")
    }

    async fn get_many(&self, bucket: &str, keys: Vec<String>, max_bytes: u64) -> Result<Values> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(GET_MANY)
            .arg(1)
            .arg(hash(bucket))
            .arg(max_bytes)
            .arg(&keys);
        let answer: Vec<Value> = cmd.query_async(&mut self.conn.clone()).await?;
        let mut answer = answer.into_iter();
        let total: u64 = redis::from_redis_value(answer.next().unwrap_or(Value::Nil))?;
        if total > max_bytes {
            return Err(answer_too_big(total, max_bytes));
        }
        let values = answer
            .map(redis::from_redis_value::<Option<Vec<u8>>>)
            .collect::<Result<Vec<_>, _>>()?;
        anyhow::ensure!(
            values.len() == keys.len(),
            "Redis answered {} values",
            values.len()
        );
        Ok(values)
    }

    async fn set_many(&self, bucket: &str, pairs: Vec<(String, Vec<u8>)>) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let mut cmd = self.script(SET, bucket);
        cmd.arg(self.max_bytes);
        for (k, v) in &pairs {
            cmd.arg(k).arg(v);
        }
        let answer: i64 = cmd.query_async(&mut self.conn.clone()).await?;
        if answer < 0 {
            return Err(full(self.max_bytes));
        }
        Ok(())
    }

    async fn delete_many(&self, bucket: &str, keys: Vec<String>) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let _: i64 = self
            .script(DELETE, bucket)
            .arg(&keys)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}
