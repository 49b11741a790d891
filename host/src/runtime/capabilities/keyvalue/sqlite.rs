//! The embedded backend: one SQLite database file that every worker process
//! opens (WAL mode, so readers never wait for the writer; a busy timeout, so
//! writers queue rather than fail). Calls run on tokio's blocking pool: the
//! worker's event loop never waits for the disk.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Backend, parse_counter};

/// Keys per `list-keys` page.
const PAGE: u64 = 1000;

pub struct Sqlite {
    conn: Arc<Mutex<Connection>>,
}

impl Sqlite {
    /// Creates the database (WAL mode, the table) once, in the primary,
    /// before any worker opens it. Done by the workers at once, the switch to
    /// WAL and the CREATE TABLE are write upgrades that SQLite refuses with
    /// SQLITE_BUSY, without waiting, to all but one of them.
    pub fn prepare(path: &Path) -> Result<()> {
        let init = || -> Result<()> {
            let conn = Connection::open(path)?;
            conn.busy_timeout(Duration::from_secs(5))?;
            let mode: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
            anyhow::ensure!(
                mode.eq_ignore_ascii_case("wal"),
                "it cannot use write-ahead logging (journal mode {mode})"
            );
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS kv (
                     bucket TEXT NOT NULL,
                     key TEXT NOT NULL,
                     value BLOB NOT NULL,
                     PRIMARY KEY (bucket, key)
                 ) WITHOUT ROWID",
            )?;
            Ok(())
        };
        init().with_context(|| format!("the key-value database `{}`", path.display()))
    }

    /// Opens a worker's connection to the database `prepare` made.
    pub async fn open(path: &Path, busy: Duration) -> Result<Self> {
        let path = path.to_path_buf();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection> {
            let conn = Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .with_context(|| format!("cannot open `{}`", path.display()))?;
            conn.busy_timeout(busy)?;
            // Per connection; WAL keeps it crash-safe, a power cut may lose the last commits.
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            Ok(conn)
        })
        .await??;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn)
        })
        .await?
    }
}

#[async_trait::async_trait]
impl Backend for Sqlite {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let (b, k) = (bucket.to_string(), key.to_string());
        self.with(move |c| {
            Ok(
                c.prepare_cached("SELECT value FROM kv WHERE bucket = ?1 AND key = ?2")?
                    .query_row(params![b, k], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }

    async fn set(&self, bucket: &str, key: &str, value: Vec<u8>) -> Result<()> {
        let (b, k) = (bucket.to_string(), key.to_string());
        self.with(move |c| {
            c.prepare_cached(
                "INSERT INTO kv (bucket, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (bucket, key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![b, k, value])?;
            Ok(())
        })
        .await
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        self.delete_many(bucket, vec![key.to_string()]).await
    }

    async fn exists(&self, bucket: &str, key: &str) -> Result<bool> {
        let (b, k) = (bucket.to_string(), key.to_string());
        self.with(move |c| {
            Ok(
                c.prepare_cached("SELECT 1 FROM kv WHERE bucket = ?1 AND key = ?2")?
                    .exists(params![b, k])?,
            )
        })
        .await
    }

    async fn list(&self, bucket: &str, cursor: Option<u64>) -> Result<(Vec<String>, Option<u64>)> {
        let b = bucket.to_string();
        let offset = cursor.unwrap_or(0);
        self.with(move |c| {
            let keys = c
                .prepare_cached(
                    "SELECT key FROM kv WHERE bucket = ?1 ORDER BY key LIMIT ?2 OFFSET ?3",
                )?
                .query_map(params![b, PAGE, offset], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            let next = (keys.len() as u64 == PAGE).then_some(offset + PAGE);
            Ok((keys, next))
        })
        .await
    }

    async fn increment(&self, bucket: &str, key: &str, delta: u64) -> Result<u64> {
        let (b, k) = (bucket.to_string(), key.to_string());
        self.with(move |c| {
            // IMMEDIATE takes the write lock before reading: no other worker
            // can read the old value in between.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let old: Option<Vec<u8>> = tx
                .prepare_cached("SELECT value FROM kv WHERE bucket = ?1 AND key = ?2")?
                .query_row(params![b, k], |r| r.get(0))
                .optional()?;
            let old = old.as_deref().map(parse_counter).transpose()?.unwrap_or(0);
            let new = old
                .checked_add(delta)
                .context("incrementing would overflow a u64")?;
            tx.prepare_cached(
                "INSERT INTO kv (bucket, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (bucket, key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![b, k, new.to_string().into_bytes()])?;
            tx.commit()?;
            Ok(new)
        })
        .await
    }

    async fn get_many(&self, bucket: &str, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>> {
        let b = bucket.to_string();
        self.with(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT value FROM kv WHERE bucket = ?1 AND key = ?2")?;
            keys.iter()
                .map(|k| Ok(stmt.query_row(params![b, k], |r| r.get(0)).optional()?))
                .collect()
        })
        .await
    }

    async fn set_many(&self, bucket: &str, pairs: Vec<(String, Vec<u8>)>) -> Result<()> {
        let b = bucket.to_string();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO kv (bucket, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (bucket, key) DO UPDATE SET value = excluded.value",
                )?;
                for (k, v) in &pairs {
                    stmt.execute(params![b, k, v])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn delete_many(&self, bucket: &str, keys: Vec<String>) -> Result<()> {
        let b = bucket.to_string();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut stmt =
                    tx.prepare_cached("DELETE FROM kv WHERE bucket = ?1 AND key = ?2")?;
                for k in &keys {
                    stmt.execute(params![b, k])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }
}
