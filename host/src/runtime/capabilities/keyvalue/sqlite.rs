//! The embedded backend: one SQLite database file that every worker process
//! opens (WAL mode, so readers never wait for the writer; writers queue
//! rather than fail). Calls run on tokio's blocking pool: the worker's event
//! loop never waits for the disk.
//!
//! An operation lives no longer than its deadline. Its future is dropped
//! when the deadline passes (mod.rs `run`): one still waiting for the
//! worker's connection is never started; one running is cancelled: the
//! statement in progress is interrupted (sqlite3_interrupt), a wait for
//! another process's write lock ends (the busy handler asks), the loop of a
//! batch stops, and the transaction is rolled back, never committed. The
//! one window left is the commit itself: once it has begun (`Op::commit`),
//! a deadline passing no longer stops it, so a write the guest was told
//! timed out may still be in the store, as with any database client.
//!
//! The store's size is SQLite's own `max_page_count`: a write that needs a
//! page beyond `--keyvalue-max-bytes` fails (SQLITE_FULL), and the guest is
//! told the store is full. The files are private: created 0600 (SQLite gives
//! the WAL and shared-memory files the database's mode), a symbolic link or
//! another user's file is refused.

use std::cell::RefCell;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rusqlite::{
    Connection, ErrorCode, InterruptHandle, OpenFlags, OptionalExtension, TransactionBehavior,
    params,
};

use super::{Backend, Values, answer_too_big, full, parse_counter};

/// Keys per `list-keys` page.
const PAGE: u64 = 1000;

/// How long a writer waits between tries for another's write lock (ms):
/// short, so that increments from several workers take turns quickly.
const BUSY_SLEEPS: [u64; 6] = [1, 2, 3, 5, 8, 10];

const UPSERT: &str = "INSERT INTO kv (bucket, key, value) VALUES (?1, ?2, ?3)
     ON CONFLICT (bucket, key) DO UPDATE SET value = excluded.value";

pub struct Sqlite {
    /// A tokio mutex: an operation waiting for the connection waits in the
    /// event loop, where dropping it (its deadline passed) takes it out of
    /// the queue, rather than on a blocking thread that would run it late.
    conn: Arc<tokio::sync::Mutex<Connection>>,
    interrupt: Arc<InterruptHandle>,
    timeout: Duration,
    max_bytes: u64,
}

/// One operation on the connection, which its future cancels when dropped.
struct Op {
    state: Mutex<OpState>,
    started: Instant,
    timeout: Duration,
}

#[derive(Default)]
struct OpState {
    /// On the connection now: an interrupt now hits this operation.
    running: bool,
    /// The commit has begun: too late to cancel.
    committing: bool,
    finished: bool,
    cancelled: bool,
}

impl Op {
    fn state(&self) -> std::sync::MutexGuard<'_, OpState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the operation running, unless it was cancelled before it started.
    fn start(&self) -> Result<()> {
        self.unless_cancelled(|s| s.running = true)
    }

    /// Fails once the operation is cancelled: checked between statements
    /// and before a commit.
    fn check(&self) -> Result<()> {
        if self.state().cancelled {
            bail!("cancelled: past --keyvalue-timeout");
        }
        Ok(())
    }

    /// The last check before a commit, atomic with cancelling: either the
    /// operation was cancelled, or from now on it cannot be.
    fn commit(&self) -> Result<()> {
        self.unless_cancelled(|s| s.committing = true)
    }

    /// Moves the operation on (`next`) under its lock, unless it is cancelled.
    fn unless_cancelled(&self, next: impl FnOnce(&mut OpState)) -> Result<()> {
        let mut s = self.state();
        if s.cancelled {
            bail!("cancelled: past --keyvalue-timeout");
        }
        next(&mut s);
        Ok(())
    }

    fn finish(&self) {
        let mut s = self.state();
        s.running = false;
        s.finished = true;
    }

    /// Whether a wait for another process's write lock may go on.
    fn may_wait(&self) -> bool {
        !self.state().cancelled && self.started.elapsed() < self.timeout
    }
}

/// Marks its operation finished (and no longer the thread's) when dropped.
struct Finished<'a>(&'a Op);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        CURRENT.with(|c| c.borrow_mut().take());
        self.0.finish();
    }
}

/// Cancels its operation when dropped before the operation finished.
struct CancelOnDrop {
    op: Arc<Op>,
    interrupt: Arc<InterruptHandle>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let mut s = self.op.state();
        if !s.finished && !s.committing {
            s.cancelled = true;
            // Under the operation's lock: it cannot finish and let the next
            // operation start on the connection while this interrupt lands.
            if s.running {
                self.interrupt.interrupt();
            }
        }
    }
}

thread_local! {
    /// The operation this blocking thread runs, for the busy handler.
    static CURRENT: RefCell<Option<Arc<Op>>> = const { RefCell::new(None) };
}

/// SQLite's busy handler: waits for another process's write lock while
/// the operation running on this thread is neither cancelled nor past its
/// timeout.
fn busy(attempt: i32) -> bool {
    let wait = CURRENT.with(|c| c.borrow().as_ref().is_some_and(|op| op.may_wait()));
    if wait {
        let i = usize::try_from(attempt)
            .unwrap_or(0)
            .min(BUSY_SLEEPS.len() - 1);
        std::thread::sleep(Duration::from_millis(BUSY_SLEEPS[i]));
    }
    wait
}

/// Opens (creating it 0600 if missing) the database file or its WAL or
/// shared-memory file, and refuses one that is a symbolic link, not a
/// regular file or another user's; one that others may read (an older
/// wcluster left it 0644) is made 0600.
fn private_file(path: &Path, create: bool) -> Result<()> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
    {
        Ok(file) => file,
        Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => bail!(
            "`{}` is a symbolic link; refused. Remove it (the state directory must hold \
             the database itself)",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot open `{}`", path.display())),
    };
    let meta = file.metadata()?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_file() || meta.uid() != me {
        bail!(
            "`{}` is not a regular file of this user (uid {}); refused",
            path.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make `{}` private", path.display()))?;
    }
    Ok(())
}

/// `path` with `suffix` appended to its name (`-wal`, `-shm`).
fn sibling(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

fn flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW
}

impl Sqlite {
    /// Creates the database (WAL mode, the table) once, in the primary,
    /// before any worker opens it. Done by the workers at once, the switch to
    /// WAL and the CREATE TABLE are write upgrades that SQLite refuses with
    /// SQLITE_BUSY, without waiting, to all but one of them.
    pub fn prepare(path: &Path) -> Result<()> {
        let init = || -> Result<()> {
            private_file(path, true)?;
            for suffix in ["-wal", "-shm"] {
                private_file(&sibling(path, suffix), false)?;
            }
            let conn = Connection::open_with_flags(path, flags())?;
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

    /// Opens a worker's connection to the database `prepare` made; its
    /// operations last at most `timeout`, and the database may grow to
    /// `max_bytes`.
    pub async fn open(path: &Path, timeout: Duration, max_bytes: u64) -> Result<Self> {
        let path = path.to_path_buf();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection> {
            let conn = Connection::open_with_flags(&path, flags())
                .with_context(|| format!("cannot open `{}`", path.display()))?;
            conn.busy_handler(Some(busy))?;
            // Per connection; WAL keeps it crash-safe, a power cut may lose the last commits.
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            let page: u64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
            let pages = (max_bytes / page.max(512)).clamp(1, u64::from(u32::MAX - 1));
            let _: u64 =
                conn.pragma_update_and_check(None, "max_page_count", pages, |r| r.get(0))?;
            // A WAL that a big write grew is cut back after each checkpoint.
            let _: i64 =
                conn.pragma_update_and_check(None, "journal_size_limit", 64i64 << 20, |r| {
                    r.get(0)
                })?;
            Ok(conn)
        })
        .await??;
        Ok(Self {
            interrupt: Arc::new(conn.get_interrupt_handle()),
            conn: Arc::new(tokio::sync::Mutex::new(conn)),
            timeout,
            max_bytes,
        })
    }

    /// Runs `f` on the connection, on the blocking pool, cancelled if this
    /// future is dropped (module docs). `f` calls `Op::check` between
    /// statements and before committing.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &Op) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let op = Arc::new(Op {
            state: Mutex::default(),
            started: Instant::now(),
            timeout: self.timeout,
        });
        let _cancel = CancelOnDrop {
            op: op.clone(),
            interrupt: self.interrupt.clone(),
        };
        let mut conn = self.conn.clone().lock_owned().await;
        let max_bytes = self.max_bytes;
        tokio::task::spawn_blocking(move || {
            op.start()?;
            CURRENT.with(|c| *c.borrow_mut() = Some(op.clone()));
            // Finished even if `f` panics: an interrupt meant for this
            // operation must never reach the next one on the connection.
            let finished = Finished(&op);
            let result = f(&mut conn, &op);
            drop(finished);
            // Only now may the next operation have the connection.
            drop(conn);
            result.map_err(|e| match e.downcast_ref::<rusqlite::Error>() {
                Some(rusqlite::Error::SqliteFailure(err, _)) if err.code == ErrorCode::DiskFull => {
                    full(max_bytes)
                }
                Some(rusqlite::Error::SqliteFailure(err, _))
                    if err.code == ErrorCode::OperationInterrupted =>
                {
                    anyhow::anyhow!("cancelled: past --keyvalue-timeout")
                }
                _ => e,
            })
        })
        .await?
    }
}

#[async_trait::async_trait]
impl Backend for Sqlite {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let (b, k) = (bucket.to_string(), key.to_string());
        self.with(move |c, _| {
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
        self.with(move |c, op| {
            // A transaction, so that a cancelled write is rolled back rather
            // than committed as its statement ends.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached(UPSERT)?.execute(params![b, k, value])?;
            op.commit()?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        self.delete_many(bucket, vec![key.to_string()]).await
    }

    async fn exists(&self, bucket: &str, key: &str) -> Result<bool> {
        let (b, k) = (bucket.to_string(), key.to_string());
        self.with(move |c, _| {
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
        self.with(move |c, _| {
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
        self.with(move |c, op| {
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
            tx.prepare_cached(UPSERT)?
                .execute(params![b, k, new.to_string().into_bytes()])?;
            op.commit()?;
            tx.commit()?;
            Ok(new)
        })
        .await
    }

    async fn get_many(&self, bucket: &str, keys: Vec<String>, max_bytes: u64) -> Result<Values> {
        let b = bucket.to_string();
        self.with(move |c, op| {
            let mut stmt =
                c.prepare_cached("SELECT value FROM kv WHERE bucket = ?1 AND key = ?2")?;
            let mut bytes = 0u64;
            let mut values = Vec::with_capacity(keys.len());
            for k in &keys {
                op.check()?;
                let v: Option<Vec<u8>> = stmt.query_row(params![b, k], |r| r.get(0)).optional()?;
                bytes += (k.len() + v.as_ref().map_or(0, Vec::len)) as u64;
                if bytes > max_bytes {
                    return Err(answer_too_big(bytes, max_bytes));
                }
                values.push(v);
            }
            Ok(values)
        })
        .await
    }

    async fn set_many(&self, bucket: &str, pairs: Vec<(String, Vec<u8>)>) -> Result<()> {
        let b = bucket.to_string();
        self.with(move |c, op| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut stmt = tx.prepare_cached(UPSERT)?;
                for (k, v) in &pairs {
                    op.check()?;
                    stmt.execute(params![b, k, v])?;
                }
            }
            op.commit()?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn delete_many(&self, bucket: &str, keys: Vec<String>) -> Result<()> {
        let b = bucket.to_string();
        self.with(move |c, op| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut stmt =
                    tx.prepare_cached("DELETE FROM kv WHERE bucket = ?1 AND key = ?2")?;
                for k in &keys {
                    op.check()?;
                    stmt.execute(params![b, k])?;
                }
            }
            op.commit()?;
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &Path, timeout: Duration, max_bytes: u64) -> Sqlite {
        let path = dir.join("keyvalue.sqlite3");
        Sqlite::prepare(&path).unwrap();
        Sqlite::open(&path, timeout, max_bytes).await.unwrap()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o777
    }

    #[tokio::test]
    async fn a_dropped_operation_is_interrupted_and_the_next_one_runs() {
        let dir = tempfile::tempdir().unwrap();
        let db = store(dir.path(), Duration::from_secs(30), 1 << 30).await;
        // A statement that would run for minutes, dropped after 100 ms.
        let endless = db.with(|c, _| {
            Ok(c.query_row(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n)
                 SELECT count(*) FROM n WHERE i < 0",
                [],
                |r| r.get::<_, i64>(0),
            )?)
        });
        let start = Instant::now();
        assert!(
            tokio::time::timeout(Duration::from_millis(100), endless)
                .await
                .is_err()
        );
        // The connection is free again at once, and the next operation is
        // not hit by the interrupt meant for the one before.
        db.set("b", "k", b"v".to_vec()).await.unwrap();
        assert_eq!(db.get("b", "k").await.unwrap(), Some(b"v".to_vec()));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn a_batch_cancelled_while_it_runs_or_waits_is_never_committed() {
        let dir = tempfile::tempdir().unwrap();
        let db = store(dir.path(), Duration::from_secs(30), 1 << 30).await;
        // Another process holds the write lock: the batch waits in the busy
        // handler, then is dropped; the lock goes, and nothing appears.
        let other = Connection::open(dir.path().join("keyvalue.sqlite3")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let pairs = vec![("a".to_string(), b"1".to_vec())];
        let batch = db.set_many("b", pairs);
        let start = Instant::now();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), batch)
                .await
                .is_err()
        );
        // Queued behind it, with its own deadline already gone: never starts.
        let queued = db.set("b", "queued", b"1".to_vec());
        assert!(
            tokio::time::timeout(Duration::from_millis(1), queued)
                .await
                .is_err()
        );
        other.execute_batch("COMMIT").unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(db.get("b", "a").await.unwrap(), None);
        assert_eq!(db.get("b", "queued").await.unwrap(), None);
    }

    #[tokio::test]
    async fn writes_past_the_size_limit_are_refused_and_deleting_makes_room() {
        let dir = tempfile::tempdir().unwrap();
        let db = store(dir.path(), Duration::from_secs(30), 1 << 20).await;
        let value = vec![7u8; 200_000];
        let mut stored = 0;
        let err = loop {
            match db.set("b", &format!("k{stored}"), value.clone()).await {
                Ok(()) => stored += 1,
                Err(e) => break e,
            }
            assert!(stored < 10, "10 x 200 kB went into a 1 MiB store");
        };
        assert!(stored >= 3, "{stored}");
        assert!(
            err.downcast_ref::<super::super::Refused>().is_some(),
            "{err:#}"
        );
        assert!(format!("{err}").contains("--keyvalue-max-bytes"), "{err}");
        db.delete("b", "k0").await.unwrap();
        db.set("b", "again", value).await.unwrap();
    }

    #[tokio::test]
    async fn the_files_are_private_and_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = store(dir.path(), Duration::from_secs(5), 1 << 30).await;
        db.set("b", "k", b"v".to_vec()).await.unwrap();
        let path = dir.path().join("keyvalue.sqlite3");
        for p in [path.clone(), sibling(&path, "-wal"), sibling(&path, "-shm")] {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        drop(db);

        let other = tempfile::tempdir().unwrap();
        let link = other.path().join("keyvalue.sqlite3");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = Sqlite::prepare(&link).unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
    }
}
