//! The trust store: CA certificates and VOMS server trust (certificates and `.lsc` files).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::error::ProxyError;
use crate::name;

/// Largest file read from the trust directories.
const MAX_FILE_LEN: u64 = 1024 * 1024;
/// Most certificates read from one file.
const MAX_CERTS_PER_FILE: usize = 100;
/// Most DNs in one `.lsc` chain.
const MAX_LSC_CHAIN: usize = 10;

/// A certificate kept in the store: its DER and, to find it without parsing, its subject.
#[derive(Clone)]
pub(crate) struct StoredCert {
    pub der: Vec<u8>,
    /// [`name::key`] of the subject.
    pub subject_key: String,
}

impl StoredCert {
    fn new(der: Vec<u8>) -> Result<StoredCert, String> {
        let subject_key = {
            let (rest, cert) = X509Certificate::from_der(&der).map_err(|e| e.to_string())?;
            if !rest.is_empty() {
                return Err("trailing data after the certificate".into());
            }
            name::key(cert.subject())
        };
        Ok(StoredCert { der, subject_key })
    }

    /// Parses the stored certificate (it parsed when it was stored).
    pub fn parse(&self) -> Option<X509Certificate<'_>> {
        X509Certificate::from_der(&self.der).ok().map(|(_, c)| c)
    }
}

/// What the vomsdir says about one VO.
#[derive(Clone, Default)]
pub(crate) struct VoTrust {
    /// VOMS server certificates (`<vo>/*.pem`): an AC signed by one of them is trusted.
    pub certs: Vec<StoredCert>,
    /// Certificate chains described by `.lsc` files: the VOMS server DN first, then its
    /// issuer's, up to the CA. An AC carrying a certificate chain with these DNs, verified up to
    /// a CA of the store, is trusted.
    pub lsc: Vec<Vec<String>>,
}

/// A file the trust store skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedFile {
    /// The file.
    pub path: PathBuf,
    /// Why it was not used.
    pub reason: String,
}

/// Trust anchors for [`read_proxy`](crate::read_proxy): CA certificates (e.g.
/// `/etc/grid-security/certificates`) and VOMS servers (e.g. `/etc/grid-security/vomsdir`).
///
/// Every certificate in the CA directory is a trust anchor, as in the grid's IGTF
/// distribution: a user certificate must be signed directly by one of them. Files that cannot
/// be used are skipped and listed by [`skipped`](TrustStore::skipped), so that one broken CA
/// file does not lock everybody out; the caller should log them.
#[derive(Clone, Default)]
pub struct TrustStore {
    pub(crate) cas: Vec<StoredCert>,
    pub(crate) voms: BTreeMap<String, VoTrust>,
    skipped: Vec<SkippedFile>,
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustStore")
            .field("cas", &self.cas.len())
            .field("vos", &self.voms.keys().collect::<Vec<_>>())
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl TrustStore {
    /// Loads the CA certificates from `ca_dir` and the VOMS trust from `vomsdir`.
    ///
    /// In `ca_dir`, files named `*.pem` or `<hash>.<n>` (OpenSSL hashed names such as
    /// `1d879c6c.0`; symlinks are followed and duplicates merged) are read; CRLs (`*.r0`),
    /// signing policies and the like are ignored. In `vomsdir`, each subdirectory is a VO (its
    /// name must be a valid VO name) holding VOMS server certificates as `*.pem` and/or `.lsc`
    /// files (one DN per line: the VOMS server's, then its CA's; `------ NEW CHAIN ------`
    /// separates alternatives).
    ///
    /// Fails when a directory cannot be read or `ca_dir` has no usable CA certificate;
    /// unusable files are skipped (see [`skipped`](TrustStore::skipped)).
    pub fn load(ca_dir: &Path, vomsdir: Option<&Path>) -> Result<TrustStore, ProxyError> {
        let mut store = TrustStore::default();
        for path in list_dir(ca_dir)? {
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !(file_name.ends_with(".pem") || is_hash_name(file_name)) {
                continue;
            }
            match read_certs(&path) {
                Ok(certs) => {
                    for cert in certs {
                        if !store.cas.iter().any(|c| c.der == cert.der) {
                            store.cas.push(cert);
                        }
                    }
                }
                Err(reason) => store.skip(path, reason),
            }
        }
        if store.cas.is_empty() {
            return Err(ProxyError::NoTrustAnchors {
                path: ca_dir.to_owned(),
            });
        }
        if let Some(vomsdir) = vomsdir {
            store.load_vomsdir(vomsdir)?;
        }
        Ok(store)
    }

    fn load_vomsdir(&mut self, vomsdir: &Path) -> Result<(), ProxyError> {
        for vo_dir in list_dir(vomsdir)? {
            if !vo_dir.is_dir() {
                if vo_dir.is_file() {
                    self.skip(
                        vo_dir,
                        "not in a VO subdirectory (expected <vomsdir>/<vo>/<file>)".into(),
                    );
                }
                continue;
            }
            let vo = match vo_dir.file_name().and_then(|n| n.to_str()) {
                Some(vo) if crate::voms::valid_name(vo) => vo.to_owned(),
                _ => {
                    self.skip(vo_dir, "the directory name is not a valid VO name".into());
                    continue;
                }
            };
            let paths = match list_dir(&vo_dir) {
                Ok(paths) => paths,
                Err(e) => {
                    self.skip(vo_dir, e.to_string());
                    continue;
                }
            };
            let mut trust = VoTrust::default();
            for path in paths {
                let ext = path.extension().and_then(|e| e.to_str());
                let result = match ext {
                    Some("pem") => read_certs(&path).map(|certs| trust.certs.extend(certs)),
                    Some("lsc") => read_lsc(&path).map(|chains| trust.lsc.extend(chains)),
                    _ => continue,
                };
                if let Err(reason) = result {
                    self.skip(path, reason);
                }
            }
            if !trust.certs.is_empty() || !trust.lsc.is_empty() {
                self.voms.insert(vo, trust);
            }
        }
        Ok(())
    }

    fn skip(&mut self, path: PathBuf, reason: String) {
        self.skipped.push(SkippedFile { path, reason });
    }

    /// Files that were not used, and why.
    pub fn skipped(&self) -> &[SkippedFile] {
        &self.skipped
    }

    /// How many CA certificates were loaded.
    pub fn ca_count(&self) -> usize {
        self.cas.len()
    }

    /// The VOs for which the vomsdir has VOMS server certificates or `.lsc` files.
    pub fn vos(&self) -> impl Iterator<Item = &str> {
        self.voms.keys().map(String::as_str)
    }
}

/// The entries of a directory, sorted (so that loading is deterministic).
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, ProxyError> {
    let io_err = |op: &'static str, source| ProxyError::Io {
        path: dir.to_owned(),
        op,
        source,
    };
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err("read directory", e))? {
        let entry = entry.map_err(|e| io_err("read directory", e))?;
        paths.push(entry.path());
    }
    paths.sort();
    Ok(paths)
}

/// `<8 hex digits>.<digits>`, the names `c_rehash` / `openssl rehash` give certificates.
fn is_hash_name(name: &str) -> bool {
    match name.split_once('.') {
        Some((hash, n)) => {
            hash.len() == 8
                && hash.bytes().all(|b| b.is_ascii_hexdigit())
                && !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

fn read_small(path: &Path) -> Result<Vec<u8>, String> {
    let meta = fs::metadata(path).map_err(|e| format!("stat: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_FILE_LEN {
        return Err(format!(
            "{} bytes, more than the limit of {MAX_FILE_LEN}",
            meta.len()
        ));
    }
    fs::read(path).map_err(|e| format!("read: {e}"))
}

fn read_certs(path: &Path) -> Result<Vec<StoredCert>, String> {
    let data = read_small(path)?;
    let ders = crate::pem::certificates(&data, MAX_CERTS_PER_FILE).map_err(|e| e.to_string())?;
    ders.into_iter()
        .enumerate()
        .map(|(i, der)| StoredCert::new(der).map_err(|e| format!("certificate {}: {e}", i + 1)))
        .collect()
}

/// Parses an `.lsc` file into its chains of DNs.
fn read_lsc(path: &Path) -> Result<Vec<Vec<String>>, String> {
    let data = read_small(path)?;
    let text = String::from_utf8(data).map_err(|_| "not UTF-8 text".to_owned())?;
    parse_lsc(&text)
}

pub(crate) fn parse_lsc(text: &str) -> Result<Vec<Vec<String>>, String> {
    let mut chains = Vec::new();
    let mut chain: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('-') {
            // "------ NEW CHAIN ------"
            if !chain.is_empty() {
                chains.push(std::mem::take(&mut chain));
            }
            continue;
        }
        if !line.starts_with('/') {
            return Err(format!(
                "line {:?} is not a DN in /KEY=value form",
                name::escape(line)
            ));
        }
        if chain.len() == MAX_LSC_CHAIN {
            return Err(format!("a chain has more than {MAX_LSC_CHAIN} DNs"));
        }
        chain.push(normalize_lsc_dn(line));
    }
    if !chain.is_empty() {
        chains.push(chain);
    }
    if chains.iter().any(|c| c.len() < 2) {
        return Err("a chain needs at least two DNs (the VOMS server's and its CA's)".to_owned());
    }
    if chains.is_empty() {
        return Err("no DN in the file".into());
    }
    Ok(chains)
}

/// Maps the attribute names other tools write to OpenSSL's.
fn normalize_lsc_dn(dn: &str) -> String {
    dn.replace("/Email=", "/emailAddress=")
        .replace("/E=", "/emailAddress=")
        .replace("/USERID=", "/UID=")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_names() {
        assert!(is_hash_name("1d879c6c.0"));
        assert!(is_hash_name("ABCDEF01.12"));
        assert!(!is_hash_name("1d879c6c.r0"));
        assert!(!is_hash_name("1d879c6c.signing_policy"));
        assert!(!is_hash_name("1d879c6.0"));
        assert!(!is_hash_name("1d879c6c."));
    }

    #[test]
    fn lsc_files() {
        let text = "# comment\n/DC=org/CN=voms.example.org\n/DC=org/CN=CA\n\
                    ------ NEW CHAIN ------\n/DC=org/CN=voms2/Email=a@b\r\n/DC=org/CN=CA2\n";
        let chains = parse_lsc(text).unwrap();
        assert_eq!(
            chains,
            vec![
                vec!["/DC=org/CN=voms.example.org", "/DC=org/CN=CA"],
                vec!["/DC=org/CN=voms2/emailAddress=a@b", "/DC=org/CN=CA2"],
            ]
        );
        assert!(parse_lsc("/CN=a\n").unwrap_err().contains("at least two"));
        assert!(parse_lsc("CN=a\n/CN=b\n").unwrap_err().contains("not a DN"));
        assert!(parse_lsc("# nothing\n").unwrap_err().contains("no DN"));
    }
}
