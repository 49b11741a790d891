//! wasi:config values: `--config-file` (TOML) overlaid by `--config KEY=VALUE`.
//! The primary reads them once at start-up, so a bad file or key stops it
//! with a message naming the file and line; each worker reads them again
//! when it loads a version, so a changed file goes live with the next deploy
//! (and a file broken meanwhile refuses that deploy). The file gets the
//! handler's treatment: opened without blocking, a regular file only, at
//! most --max-config-size; workers read it off their event loop
//! (worker/deploy.rs).

use std::path::Path;

use anyhow::{Context, Result, bail};
use wasmtime_wasi_config::WasiConfigVariables;

use crate::config::{ConfigGrant, check_config_key};

/// The values, in order: file first, then flags (a later key wins).
pub fn values(grant: &ConfigGrant) -> Result<Vec<(String, String)>> {
    let mut out = match &grant.file {
        Some(path) => read_file(path, grant.max_file_size)?,
        None => Vec::new(),
    };
    out.extend(grant.vars.iter().cloned());
    Ok(out)
}

pub fn variables(grant: &ConfigGrant) -> Result<WasiConfigVariables> {
    Ok(values(grant)?.into_iter().collect())
}

fn read_file(path: &Path, max: u64) -> Result<Vec<(String, String)>> {
    let bytes = crate::files::read_small(path, "--config-file", max, "--max-config-size")?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("--config-file `{}`: not UTF-8 text", path.display()))?;
    // toml's message names the line and column.
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("--config-file `{}`: {e}", path.display()))?;
    let mut out = Vec::new();
    flatten("", &table, &mut out).with_context(|| format!("--config-file `{}`", path.display()))?;
    Ok(out)
}

/// `[db] host = "x"` is the key `db.host`.
fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) -> Result<()> {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        check_config_key(k)?;
        let value = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Datetime(d) => d.to_string(),
            toml::Value::Table(t) => {
                flatten(&key, t, out)?;
                continue;
            }
            toml::Value::Array(_) => {
                bail!("`{key}` is an array; wasi:config values are strings (write it as one)")
            }
        };
        out.push((key, value));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn file_then_flags() {
        let f = file("greeting = \"hi\"\nport = 8080\n[db]\nhost = \"x\"\ntls = true\n");
        let grant = ConfigGrant {
            vars: vec![("greeting".into(), "hello=you".into())],
            file: Some(f.path().to_path_buf()),
            max_file_size: 1 << 20,
        };
        let v = values(&grant).unwrap();
        assert!(v.contains(&("port".into(), "8080".into())));
        assert!(v.contains(&("db.host".into(), "x".into())));
        assert!(v.contains(&("db.tls".into(), "true".into())));
        assert_eq!(v.last().unwrap(), &("greeting".into(), "hello=you".into()));
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let f = file("a = 1\nb = = 2\n");
        let grant = ConfigGrant {
            vars: vec![],
            file: Some(f.path().to_path_buf()),
            max_file_size: 1 << 20,
        };
        let err = format!("{:#}", values(&grant).unwrap_err());
        assert!(err.contains(&f.path().display().to_string()), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let arr = file("list = [1, 2]\n");
        let grant = ConfigGrant {
            vars: vec![],
            file: Some(arr.path().to_path_buf()),
            max_file_size: 1 << 20,
        };
        assert!(format!("{:#}", values(&grant).unwrap_err()).contains("`list` is an array"));
    }

    #[test]
    fn only_a_regular_file_within_the_size_limit_is_read() {
        let grant = |file: &Path, max| ConfigGrant {
            vars: vec![],
            file: Some(file.to_path_buf()),
            max_file_size: max,
        };
        let big = file(&format!("k = \"{}\"\n", "v".repeat(2000)));
        let err = format!("{:#}", values(&grant(big.path(), 1024)).unwrap_err());
        assert!(
            err.contains("over the limit of 1024 (--max-config-size)"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            values(&grant(Path::new("/dev/zero"), 1024)).unwrap_err()
        );
        assert!(err.contains("not a regular file"), "{err}");
        // A FIFO with no writer: refused at once instead of blocking open.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = format!("{:#}", values(&grant(&fifo, 1024)).unwrap_err());
        assert!(err.contains("not a regular file"), "{err}");
    }
}
