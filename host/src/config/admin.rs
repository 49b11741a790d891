//! The admin endpoint's settings (--admin, --admin-token-file,
//! --admin-max-connections), checked before anything binds.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Result, bail, ensure};

/// A token file larger than this is refused: a token is a line.
const MAX_TOKEN_FILE: u64 = 4096;

#[derive(Debug, Clone)]
pub struct Admin {
    pub addr: SocketAddr,
    /// The bearer token /status asks for; None: /status is not served.
    pub token: Option<String>,
    pub max_connections: usize,
}

pub fn check(
    addr: Option<SocketAddr>,
    token_file: Option<&Path>,
    max_connections: usize,
) -> Result<Option<Admin>> {
    ensure!(
        (1..=10_000).contains(&max_connections),
        "--admin-max-connections must be between 1 and 10000"
    );
    let Some(addr) = addr else {
        if let Some(file) = token_file {
            bail!(
                "--admin-token-file `{}` needs --admin ADDR (the endpoint it guards)",
                file.display()
            );
        }
        return Ok(None);
    };
    Ok(Some(Admin {
        addr,
        token: token_file.map(read_token).transpose()?,
        max_connections,
    }))
}

/// The file's first line: a regular file of at most MAX_TOKEN_FILE bytes,
/// holding a token of 16 characters or more.
fn read_token(path: &Path) -> Result<String> {
    let name = path.display();
    let bytes = crate::files::read_small(
        path,
        "--admin-token-file",
        MAX_TOKEN_FILE,
        "a token's limit",
    )?;
    if let Some(warning) = crate::files::secret_warning(path, "--admin-token-file") {
        tracing::warn!("{warning}");
    }
    let text = String::from_utf8_lossy(&bytes);
    let token = text.lines().next().unwrap_or("").trim().to_string();
    ensure!(
        token.len() >= 16 && token.bytes().all(|b| b.is_ascii_graphic()),
        "--admin-token-file `{}`: the first line must be a token of at least 16 printable \
         characters without spaces (e.g. `openssl rand -hex 32`)",
        name
    );
    Ok(token)
}

/// Whether `given` is `token`, in time that does not depend on where they
/// differ.
pub fn token_matches(token: &str, given: &str) -> bool {
    token.len() == given.len()
        && token
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_checked_and_its_first_line_is_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "0123456789abcdef0123\nignored\n").unwrap();
        let addr = "127.0.0.1:0".parse().ok();
        let admin = check(addr, Some(&file), 8).unwrap().unwrap();
        assert_eq!(admin.token.as_deref(), Some("0123456789abcdef0123"));
        std::fs::write(&file, "short\n").unwrap();
        let err = check(addr, Some(&file), 8).unwrap_err().to_string();
        assert!(err.contains("at least 16"), "{err}");
        let err = check(None, Some(&file), 8).unwrap_err().to_string();
        assert!(err.contains("needs --admin"), "{err}");
        assert!(check(addr, None, 0).is_err());
    }

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(token_matches("secret-token-123", "secret-token-123"));
        assert!(!token_matches("secret-token-123", "secret-token-124"));
        assert!(!token_matches("secret-token-123", "secret-token-12"));
        assert!(!token_matches("secret-token-123", ""));
    }
}
