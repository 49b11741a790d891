//! --tls-cert / --tls-key: a PEM certificate chain and its private key,
//! loaded and checked. The primary checks the pair before anything binds, so
//! bad input is a start-up error that names the file and what is wrong with
//! it; workers load the same files with the same code when they start and
//! whenever the files change (worker/tls.rs), so a rotated pair is checked
//! the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{ASN1Time, FromDer, X509Certificate};

/// Larger files are refused: a chain of a few certificates is a few KiB.
const MAX_PEM: u64 = 1024 * 1024;

/// The crypto provider of every TLS connection wcluster serves: ring (its
/// only alternative in rustls, aws-lc-rs, needs cmake to build).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and the private key that matches it, ready to serve.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// The leaf certificate's serial number, subject and end of validity.
    pub describe: String,
    /// Not fatal, but worth a warning line: the leaf certificate has
    /// expired, or is not valid yet.
    pub warnings: Vec<String>,
}

/// Checks the flags at start-up: both or neither, and a pair that loads.
/// Logs the warnings; returns the absolute paths, (certificate, key), which
/// the workers load again.
pub fn check(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<(PathBuf, PathBuf)>> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => bail!("--tls-cert needs --tls-key (the certificate's private key)"),
        (None, Some(_)) => bail!("--tls-key needs --tls-cert (the certificate chain)"),
    };
    let absolute = |flag: &str, path: &Path| {
        std::path::absolute(path).with_context(|| format!("{flag} `{}`", path.display()))
    };
    let (cert, key) = (absolute("--tls-cert", &cert)?, absolute("--tls-key", &key)?);
    let loaded = load(&cert, &key)?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!("TLS certificate: {}", loaded.describe);
    Ok(Some((cert, key)))
}

/// Reads and checks the pair: each file is PEM, the first holds at least one
/// X.509 certificate (the leaf first), the second exactly one private key
/// that rustls can sign with, and the key is the leaf's.
pub fn load(cert: &Path, key: &Path) -> Result<Loaded> {
    let chain = certificates(cert, &read(cert, "--tls-cert")?)?;
    let key_der = private_key(key, &read(key, "--tls-key")?)?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| {
            anyhow!(
                "--tls-key `{}`: not a private key wcluster can use: {e}",
                key.display()
            )
        })?;
    // Parsed again for its dates (certificates() checked that it parses).
    let (_, leaf) = X509Certificate::from_der(&chain[0])
        .map_err(|e| anyhow!("--tls-cert `{}`: {e}", cert.display()))?;
    let validity = leaf.validity();
    let now = ASN1Time::now();
    let mut warnings = Vec::new();
    warnings.extend(crate::files::secret_warning(key, "--tls-key"));
    if now > validity.not_after {
        warnings.push(format!(
            "--tls-cert `{}`: the certificate expired on {}: clients will refuse it",
            cert.display(),
            validity.not_after
        ));
    } else if now < validity.not_before {
        warnings.push(format!(
            "--tls-cert `{}`: the certificate is not valid before {}: clients will refuse it until then",
            cert.display(),
            validity.not_before
        ));
    }
    let describe = format!(
        "serial {}, subject `{}`, valid until {}",
        leaf.raw_serial_as_string(),
        leaf.subject(),
        validity.not_after
    );
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // Unknown: the key cannot tell its public half (never with ring).
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => bail!(
            "--tls-key `{}` does not match the certificate in --tls-cert `{}` \
             (the certificate names another public key)",
            key.display(),
            cert.display()
        ),
        Err(e) => bail!("--tls-cert `{}`: {e}", cert.display()),
    }
    Ok(Loaded {
        key: Arc::new(certified),
        describe,
        warnings,
    })
}

/// The file's bytes: a regular file of at most MAX_PEM bytes.
fn read(path: &Path, flag: &str) -> Result<Vec<u8>> {
    crate::files::read_small(path, flag, MAX_PEM, "a PEM file's limit")
}

/// Every PEM block of the file, with its kind (blocks of unknown kinds are
/// skipped; text outside blocks is ignored, as openssl does).
fn sections(path: &Path, flag: &str, bytes: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>> {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            let why = match e {
                pem::Error::MissingSectionEnd { end_marker } => format!(
                    "the `-----BEGIN {}-----` block has no END line (is the file cut short?)",
                    String::from_utf8_lossy(&end_marker)
                ),
                pem::Error::IllegalSectionStart { line } => {
                    format!("malformed BEGIN line `{}`", String::from_utf8_lossy(&line))
                }
                pem::Error::Base64Decode(e) => format!("a block is not valid base64 ({e})"),
                e => e.to_string(),
            };
            anyhow!("{flag} `{}`: not valid PEM: {why}", path.display())
        })
}

/// What a file with none of the blocks looked for holds instead.
fn hint(bytes: &[u8], sections: &[(SectionKind, Vec<u8>)], other: &str) -> String {
    let has = |kinds: &[SectionKind]| sections.iter().any(|(k, _)| kinds.contains(k));
    let keys = [
        SectionKind::PrivateKey,
        SectionKind::RsaPrivateKey,
        SectionKind::EcPrivateKey,
    ];
    if other == "--tls-key" && has(&keys) {
        " (it holds a private key: are --tls-cert and --tls-key swapped?)".into()
    } else if other == "--tls-cert" && has(&[SectionKind::Certificate]) {
        " (it holds a certificate: are --tls-cert and --tls-key swapped?)".into()
    } else if bytes.starts_with(&[0x30]) && !bytes.is_ascii() {
        " (it looks like binary DER: convert it to PEM with openssl)".into()
    } else if bytes.is_empty() {
        " (the file is empty)".into()
    } else {
        String::new()
    }
}

/// The chain, leaf first; each one a well-formed X.509 certificate.
fn certificates(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let sections = sections(path, "--tls-cert", bytes)?;
    let chain: Vec<CertificateDer<'static>> = sections
        .iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der.clone()))
        .collect();
    if chain.is_empty() {
        bail!(
            "--tls-cert `{}`: no certificate (no `-----BEGIN CERTIFICATE-----` block){}",
            path.display(),
            hint(bytes, &sections, "--tls-key")
        );
    }
    for (i, der) in chain.iter().enumerate() {
        if let Err(e) = X509Certificate::from_der(der) {
            bail!(
                "--tls-cert `{}`: certificate {} of {} is not a valid X.509 certificate: {e}",
                path.display(),
                i + 1,
                chain.len()
            );
        }
    }
    Ok(chain)
}

/// The one private key of the file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
fn private_key(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>> {
    let sections = sections(path, "--tls-key", bytes)?;
    let mut keys: Vec<PrivateKeyDer<'static>> = sections
        .iter()
        .filter_map(|(kind, der)| PrivateKeyDer::from_pem(*kind, der.clone()))
        .collect();
    match keys.len() {
        1 => Ok(keys.remove(0)),
        0 if bytes
            .windows(b"-----BEGIN ENCRYPTED PRIVATE KEY-----".len())
            .any(|w| w == b"-----BEGIN ENCRYPTED PRIVATE KEY-----") =>
        {
            bail!(
                "--tls-key `{}`: the private key is encrypted; wcluster needs it unencrypted \
                 (`openssl pkey -in KEY -out KEY.plain`)",
                path.display()
            )
        }
        0 => bail!(
            "--tls-key `{}`: no private key (no `-----BEGIN PRIVATE KEY-----`, \
             `RSA PRIVATE KEY` or `EC PRIVATE KEY` block){}",
            path.display(),
            hint(bytes, &sections, "--tls-cert")
        ),
        n => bail!(
            "--tls-key `{}`: {n} private keys; it must hold exactly one",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn files(cert: &str, key: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        (dir, c, k)
    }

    fn error(cert: &str, key: &str) -> String {
        let (_dir, c, k) = files(cert, key);
        match load(&c, &k) {
            Ok(_) => panic!("loaded"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn a_matching_pair_loads() {
        let (cert, key) = pair("localhost");
        let (_dir, c, k) = files(&cert, &key);
        let loaded = load(&c, &k).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert!(loaded.describe.contains("serial"), "{}", loaded.describe);
        // The same key readable by others loads too, with a warning.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o640)).unwrap();
        let warnings = load(&c, &k).unwrap().warnings;
        assert!(
            warnings.len() == 1 && warnings[0].contains("readable by other users (mode 0640)"),
            "{warnings:?}"
        );
    }

    #[test]
    fn each_bad_input_names_the_file_and_the_problem() {
        let (cert, key) = pair("localhost");
        let (_, other_key) = pair("localhost");
        let e = error(&cert, &other_key);
        assert!(
            e.contains("key.pem` does not match") && e.contains("cert.pem"),
            "{e}"
        );
        let e = error(&key, &key);
        assert!(
            e.contains("cert.pem`: no certificate") && e.contains("swapped"),
            "{e}"
        );
        let e = error(&cert, &cert);
        assert!(
            e.contains("key.pem`: no private key") && e.contains("swapped"),
            "{e}"
        );
        let e = error("hello\n", &key);
        assert!(e.contains("cert.pem`: no certificate"), "{e}");
        let e = error("", &key);
        assert!(e.contains("empty"), "{e}");
        let e = error(&cert[..cert.len() / 2], &key);
        assert!(
            e.contains("cert.pem`: not valid PEM") && e.contains("no END"),
            "{e}"
        );
        let e = error(
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            &key,
        );
        assert!(
            e.contains("cert.pem`: not valid PEM") && e.contains("base64"),
            "{e}"
        );
        let e = error(
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
            &key,
        );
        assert!(e.contains("not a valid X.509 certificate"), "{e}");
        let e = error(&cert, &format!("{key}{key}"));
        assert!(e.contains("2 private keys"), "{e}");
        let e = error(
            &cert,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\naGVsbG8=\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        assert!(e.contains("encrypted"), "{e}");
        let e = error(
            &cert,
            "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n",
        );
        assert!(e.contains("key.pem`: not a private key"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = format!("{:#}", load(&missing, &missing).err().unwrap());
        assert!(e.contains("missing.pem`: no such file"), "{e}");
    }

    #[test]
    fn an_expired_certificate_is_a_warning() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let (_dir, c, k) = files(&cert.pem(), &key.serialize_pem());
        let loaded = load(&c, &k).unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert!(
            loaded.warnings[0].contains("expired"),
            "{:?}",
            loaded.warnings
        );
    }

    #[test]
    fn only_one_flag_is_an_error() {
        let p = Some(PathBuf::from("x.pem"));
        assert!(check(None, None).unwrap().is_none());
        let e = check(p.clone(), None).unwrap_err().to_string();
        assert!(e.contains("--tls-cert needs --tls-key"), "{e}");
        let e = check(None, p).unwrap_err().to_string();
        assert!(e.contains("--tls-key needs --tls-cert"), "{e}");
    }
}
