//! The trust store: CA certificates with their CRLs and signing policies, and VOMS server trust
//! (certificates and `.lsc` files).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::crl::{self, Crl};
use crate::error::ProxyError;
use crate::name;
use crate::policy;
use crate::time::{rfc3339, system_time, unix_seconds};

/// Largest file read from the trust directories (CRLs: [`crl::MAX_CRL_FILE_LEN`]).
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

/// A CA certificate of the CA directory (a trust anchor) and what the directory's CRLs and
/// signing policies say about it.
#[derive(Clone)]
pub(crate) struct Anchor {
    pub cert: StoredCert,
    /// Its subject in slash form, normalised as signing policies are.
    slash: String,
    /// The `<hash>` parts (lower case) of the `<hash>.<n>` names it was read under.
    hashes: Vec<String>,
    /// Its CRLs: indices into [`TrustStore::crls`].
    crls: Vec<usize>,
    /// Its signing policy, if any file names it.
    policy: Option<SigningPolicy>,
    /// CRL and signing policy files about this CA that cannot be used: while there is one,
    /// the CA is refused (fail closed).
    broken: Vec<BrokenFile>,
}

/// The subjects a CA may sign.
#[derive(Clone)]
struct SigningPolicy {
    /// The first file that names the CA.
    file: PathBuf,
    /// The `cond_subjects` patterns of every `access_id_CA` entry naming the CA.
    subjects: Vec<String>,
}

/// An unusable CRL or signing policy file.
#[derive(Clone)]
struct BrokenFile {
    crl: bool,
    path: PathBuf,
    reason: String,
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

/// Trust anchors for [`read_proxy`](crate::read_proxy): CA certificates with their CRLs and
/// signing policies (e.g. `/etc/grid-security/certificates`) and VOMS servers (e.g.
/// `/etc/grid-security/vomsdir`).
///
/// Every certificate in the CA directory is a trust anchor, as in the grid's IGTF
/// distribution: a user certificate must be signed directly by one of them, must not be listed
/// in the CA's CRL, and must have a subject the CA's signing policy allows. Files that cannot
/// be used are skipped and listed by [`skipped`](TrustStore::skipped), so that one broken CA
/// file does not lock everybody out; the caller should log them. A CRL or signing policy file
/// that cannot be used is listed there too, and the CA it is about is refused until it is fixed
/// (fail closed), since ignoring it could accept a revoked certificate or a subject the CA may
/// not sign.
///
/// CRLs are read once, by [`load`](TrustStore::load): a long-lived store must be loaded again
/// after fetch-crl updates them, at the latest at
/// [`crl_next_update`](TrustStore::crl_next_update), or every user of a CA whose CRL expired
/// is refused.
#[derive(Clone, Default)]
pub struct TrustStore {
    pub(crate) cas: Vec<Anchor>,
    crls: Vec<Crl>,
    signing_policies: usize,
    pub(crate) voms: BTreeMap<String, VoTrust>,
    skipped: Vec<SkippedFile>,
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustStore")
            .field("cas", &self.cas.len())
            .field("crls", &self.crls.len())
            .field("signing_policies", &self.signing_policies)
            .field("vos", &self.voms.keys().collect::<Vec<_>>())
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl TrustStore {
    /// Loads the CA certificates, CRLs and signing policies from `ca_dir` and the VOMS trust
    /// from `vomsdir`.
    ///
    /// In `ca_dir`:
    ///
    /// - CA certificates: files named `*.pem` or `<hash>.<n>` (OpenSSL hashed names such as
    ///   `1d879c6c.0`; symlinks are followed and duplicates merged).
    /// - CRLs: files named `<hash>.r<n>` (as written by fetch-crl and `openssl rehash`; PEM
    ///   `X509 CRL` blocks or DER), up to 32 MiB and 2^20 revoked certificates each. A CRL
    ///   belongs to the CA whose subject is its issuer and whose key (with `cRLSign` in its
    ///   keyUsage, if it has one) verifies its signature. A certificate issued by a CA with
    ///   CRLs is refused when one of them lists its serial number, and when the `nextUpdate`
    ///   of every one of them has passed (a CRL without `nextUpdate` does not expire). Delta,
    ///   indirect and partial CRLs (`issuingDistributionPoint` other than
    ///   `onlyContainsUserCerts`) and CRLs with unknown critical extensions are unusable. A CA
    ///   without CRL file is accepted without revocation check: sites without fetch-crl get
    ///   that.
    /// - Signing policies: files named `<hash>.signing_policy` (Globus EACL format:
    ///   `access_id_CA X509 '<CA DN>'`, `pos_rights globus CA:sign`, `cond_subjects globus
    ///   '"<pattern>" ...'`, with `*` and `?` wildcards, case-sensitive). A CA is named by the
    ///   DN of an `access_id_CA` line (`/Email=` and `/E=` read as `/emailAddress=`); a
    ///   certificate it issues must have a subject matching one of the patterns of the entries
    ///   naming it. A `<hash>.signing_policy` file applies to the CAs read as `<hash>.<n>`: one
    ///   of its entries must name them. A CA no signing policy applies to may sign any subject.
    /// - `.namespaces` files (EUGridPMA namespace policies) are not read, nor is anything else.
    ///
    /// Unusable CRL and signing policy files are listed by [`skipped`](TrustStore::skipped)
    /// and make the CAs they are about unusable: the CA the file names, or, when the file does
    /// not say, the CAs read as `<hash>.<n>` with the file's `<hash>`. A CRL whose issuer is no
    /// CA of the directory is listed and otherwise ignored. A CRL that is not valid yet
    /// (`thisUpdate` after the time of loading) is listed, and refuses its CA's certificates
    /// until then.
    ///
    /// In `vomsdir`, each subdirectory is a VO (its name must be a valid VO name) holding VOMS
    /// server certificates as `*.pem` and/or `.lsc` files (one DN per line: the VOMS server's,
    /// then its CA's; `------ NEW CHAIN ------` separates alternatives).
    ///
    /// Fails when a directory cannot be read or `ca_dir` has no usable CA certificate;
    /// unusable files are skipped (see [`skipped`](TrustStore::skipped)).
    pub fn load(ca_dir: &Path, vomsdir: Option<&Path>) -> Result<TrustStore, ProxyError> {
        TrustStore::load_at(ca_dir, vomsdir, SystemTime::now())
    }

    /// [`load`](TrustStore::load) at time `now`, which only decides which CRLs
    /// [`skipped`](TrustStore::skipped) reports as not valid yet ([`read_proxy`](crate::read_proxy)
    /// checks CRL dates at its own `now`).
    pub fn load_at(
        ca_dir: &Path,
        vomsdir: Option<&Path>,
        now: SystemTime,
    ) -> Result<TrustStore, ProxyError> {
        let mut store = TrustStore::default();
        let mut crl_files = Vec::new();
        let mut policy_files = Vec::new();
        for path in list_dir(ca_dir)? {
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(hash) = crl_hash(file_name) {
                crl_files.push((path, hash));
                continue;
            }
            if let Some(hash) = policy_hash(file_name) {
                policy_files.push((path, hash));
                continue;
            }
            let hash = cert_hash(file_name);
            if !(file_name.ends_with(".pem") || hash.is_some()) {
                continue;
            }
            match read_certs(&path) {
                Ok(certs) => {
                    for cert in certs {
                        store.add_ca(cert, hash.as_deref());
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
        let now = unix_seconds(now);
        let mut seen = HashSet::new();
        for (path, hash) in crl_files {
            store.load_crl(path, &hash, now, &mut seen);
        }
        for (path, hash) in policy_files {
            store.load_signing_policy(path, &hash);
        }
        if let Some(vomsdir) = vomsdir {
            store.load_vomsdir(vomsdir)?;
        }
        Ok(store)
    }

    fn add_ca(&mut self, cert: StoredCert, hash: Option<&str>) {
        let anchor = match self.cas.iter_mut().find(|a| a.cert.der == cert.der) {
            Some(anchor) => anchor,
            None => {
                let slash = cert.parse().map_or_else(String::new, |c| {
                    name::normalize_slash_dn(&name::slash_form(c.subject()))
                });
                self.cas.push(Anchor {
                    cert,
                    slash,
                    hashes: Vec::new(),
                    crls: Vec::new(),
                    policy: None,
                    broken: Vec::new(),
                });
                let Some(anchor) = self.cas.last_mut() else {
                    return;
                };
                anchor
            }
        };
        if let Some(hash) = hash {
            if !anchor.hashes.iter().any(|h| h == hash) {
                anchor.hashes.push(hash.to_owned());
            }
        }
    }

    /// The CAs read as `<hash>.<n>`.
    fn cas_of_hash(&self, hash: &str) -> Vec<usize> {
        self.cas
            .iter()
            .enumerate()
            .filter(|(_, a)| a.hashes.iter().any(|h| h == hash))
            .map(|(i, _)| i)
            .collect()
    }

    /// The subjects of CAs, for messages: `"/DC=org/CN=CA one", "/DC=org/CN=CA two"`.
    fn ca_names(&self, cas: &[usize]) -> String {
        let mut names: Vec<String> = cas
            .iter()
            .filter_map(|&i| self.cas.get(i))
            .filter_map(|a| a.cert.parse().map(|c| name::display(c.subject())))
            .collect();
        names.dedup();
        names.join(", ")
    }

    /// Marks the CAs `cas` unusable because of the file `path` and lists the file as skipped.
    fn refuse(&mut self, path: PathBuf, cas: &[usize], crl: bool, reason: String) {
        let skipped = if cas.is_empty() {
            format!("{reason}; no CA certificate of the directory is affected")
        } else {
            format!(
                "{reason}; certificates issued by {} are refused until it is fixed",
                self.ca_names(cas)
            )
        };
        for &i in cas {
            if let Some(anchor) = self.cas.get_mut(i) {
                anchor.broken.push(BrokenFile {
                    crl,
                    path: path.clone(),
                    reason: reason.clone(),
                });
            }
        }
        self.skip(path, skipped);
    }

    fn load_crl(&mut self, path: PathBuf, hash: &str, now: i64, seen: &mut HashSet<Vec<u8>>) {
        let ders = match read_limited(&path, crl::MAX_CRL_FILE_LEN).and_then(|data| crl_ders(&data))
        {
            Ok(ders) => ders,
            Err(reason) => {
                let cas = self.cas_of_hash(hash);
                self.refuse(path, &cas, true, format!("CRL: {reason}"));
                return;
            }
        };
        let several = ders.len() > 1;
        for (n, der) in ders.into_iter().enumerate() {
            let what = if several {
                format!("CRL {}", n + 1)
            } else {
                "CRL".to_owned()
            };
            if !seen.insert(der.clone()) {
                continue;
            }
            match crl::load(&der, path.clone(), &self.cas) {
                crl::Outcome::Usable { crl, cas } => {
                    if now < crl.this_update {
                        let names = self.ca_names(&cas);
                        self.skip(
                            path.clone(),
                            format!(
                                "{what}: not valid before {} (thisUpdate is in the future); \
                                 certificates issued by {names} are refused until then",
                                rfc3339(system_time(crl.this_update))
                            ),
                        );
                    }
                    let index = self.crls.len();
                    self.crls.push(crl);
                    for i in cas {
                        if let Some(anchor) = self.cas.get_mut(i) {
                            anchor.crls.push(index);
                        }
                    }
                }
                crl::Outcome::Unusable { cas, reason } => {
                    let cas = cas.unwrap_or_else(|| self.cas_of_hash(hash));
                    self.refuse(path.clone(), &cas, true, format!("{what}: {reason}"));
                }
                crl::Outcome::UnknownIssuer { issuer } => self.skip(
                    path.clone(),
                    format!(
                        "{what} of {issuer}, which is not a CA certificate of the directory; \
                         not used"
                    ),
                ),
            }
        }
    }

    fn load_signing_policy(&mut self, path: PathBuf, hash: &str) {
        let data = match read_limited(&path, MAX_FILE_LEN) {
            Ok(data) => data,
            Err(reason) => {
                let cas = self.cas_of_hash(hash);
                self.refuse(path, &cas, false, format!("signing policy: {reason}"));
                return;
            }
        };
        let blocks = match policy::parse(&data) {
            Ok(blocks) => blocks,
            Err(e) => {
                let mut cas = self.cas_of_hash(hash);
                for (i, anchor) in self.cas.iter().enumerate() {
                    if e.named.contains(&anchor.slash) && !cas.contains(&i) {
                        cas.push(i);
                    }
                }
                cas.sort_unstable();
                self.refuse(path, &cas, false, format!("signing policy: {e}"));
                return;
            }
        };
        self.signing_policies += 1;
        let mut unnamed = Vec::new();
        for (i, anchor) in self.cas.iter_mut().enumerate() {
            let mut subjects = blocks
                .iter()
                .filter(|b| b.ca == anchor.slash)
                .flat_map(|b| b.subjects.iter().cloned())
                .peekable();
            if subjects.peek().is_some() {
                match &mut anchor.policy {
                    Some(p) => p.subjects.extend(subjects),
                    None => {
                        anchor.policy = Some(SigningPolicy {
                            file: path.clone(),
                            subjects: subjects.collect(),
                        })
                    }
                }
            } else if anchor.hashes.iter().any(|h| h == hash) {
                unnamed.push(i);
            }
        }
        if !unnamed.is_empty() {
            let named: Vec<String> = blocks
                .iter()
                .map(|b| format!("\"{}\"", name::escape(&b.ca)))
                .collect();
            let reason = format!(
                "signing policy: it is the policy of {} (by its name), but has no access_id_CA \
                 entry for that CA (it names {})",
                self.ca_names(&unnamed),
                named.join(", ")
            );
            self.refuse(path, &unnamed, false, reason);
        }
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

    /// Files that were not used, and why. For a CRL or signing policy file, the reason also
    /// says which CAs are refused because of it (a CRL not valid yet at the time of loading is
    /// listed although it is used: it refuses its CA's certificates until it is valid).
    pub fn skipped(&self) -> &[SkippedFile] {
        &self.skipped
    }

    /// How many CA certificates were loaded.
    pub fn ca_count(&self) -> usize {
        self.cas.len()
    }

    /// How many CRLs are in use (each belongs to at least one CA).
    pub fn crl_count(&self) -> usize {
        self.crls.len()
    }

    /// How many signing policy files were read.
    pub fn signing_policy_count(&self) -> usize {
        self.signing_policies
    }

    /// The earliest `nextUpdate` of the CRLs in use: the store should be loaded again (after
    /// fetch-crl updated the CRLs) by then, since a certificate of a CA whose CRLs all expired
    /// is refused. `None` without CRL (or when no CRL has a `nextUpdate`).
    pub fn crl_next_update(&self) -> Option<SystemTime> {
        self.crls
            .iter()
            .filter_map(|c| c.next_update)
            .min()
            .map(system_time)
    }

    /// The VOs for which the vomsdir has VOMS server certificates or `.lsc` files.
    pub fn vos(&self) -> impl Iterator<Item = &str> {
        self.voms.keys().map(String::as_str)
    }

    /// Checks what the CA directory says about `cert`, issued (and signed) by `ca`, the
    /// certificate of `anchor`: the CA must have no unusable CRL or signing policy file, `cert`
    /// must not be revoked, one of the CA's CRLs (if it has any) must be current, and the
    /// CA's signing policy (if any) must allow `cert`'s subject.
    pub(crate) fn check_issued(
        &self,
        anchor: &Anchor,
        ca: &X509Certificate<'_>,
        cert: &X509Certificate<'_>,
        now: i64,
    ) -> Result<(), ProxyError> {
        if let Some(broken) = anchor.broken.first() {
            let ca = name::display(ca.subject());
            let file = broken.path.clone();
            let reason = broken.reason.clone();
            return Err(if broken.crl {
                ProxyError::BadCrl { ca, file, reason }
            } else {
                ProxyError::BadSigningPolicy { ca, file, reason }
            });
        }
        let mut current = anchor.crls.is_empty();
        let mut expired: Option<&Crl> = None;
        for crl in anchor.crls.iter().filter_map(|&i| self.crls.get(i)) {
            if now < crl.this_update {
                return Err(ProxyError::BadCrl {
                    ca: name::display(ca.subject()),
                    file: crl.path.clone(),
                    reason: format!(
                        "it is not valid before {} (thisUpdate is in the future)",
                        rfc3339(system_time(crl.this_update))
                    ),
                });
            }
            if let Some(at) = crl.revoked_at(cert.raw_serial()) {
                return Err(ProxyError::Revoked {
                    subject: name::display(cert.subject()),
                    serial: serial_hex(cert.raw_serial()),
                    issuer: name::display(ca.subject()),
                    revoked_at: system_time(at),
                });
            }
            match crl.next_update {
                Some(next) if next < now => {
                    if expired.is_none_or(|e| e.next_update < crl.next_update) {
                        expired = Some(crl);
                    }
                }
                _ => current = true,
            }
        }
        if !current {
            if let Some(crl) = expired {
                return Err(ProxyError::CrlExpired {
                    ca: name::display(ca.subject()),
                    file: crl.path.clone(),
                    next_update: system_time(crl.next_update.unwrap_or(i64::MIN)),
                });
            }
        }
        if let Some(policy) = &anchor.policy {
            let subject = name::normalize_slash_dn(&name::slash_form(cert.subject()));
            if !policy.subjects.iter().any(|p| policy::matches(p, &subject)) {
                return Err(ProxyError::SigningPolicy {
                    subject: name::display(cert.subject()),
                    ca: name::display(ca.subject()),
                    file: policy.file.clone(),
                });
            }
        }
        Ok(())
    }
}

/// A serial number in hex as `openssl x509 -serial` prints it: `123456789ABC`.
fn serial_hex(raw: &[u8]) -> String {
    let digits = crate::der::strip_leading_zeros(raw);
    if digits.is_empty() {
        return "00".into();
    }
    digits.iter().map(|b| format!("{b:02X}")).collect()
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

/// The `<hash>` (lower case) of a name `<8 hex digits><sep><suffix>`, where `suffix` passes
/// `rest`.
fn hash_of(name: &str, rest: impl Fn(&str) -> bool) -> Option<String> {
    let hash = name.get(..8)?;
    let suffix = name.get(8..)?.strip_prefix('.')?;
    (hash.bytes().all(|b| b.is_ascii_hexdigit()) && rest(suffix)).then(|| hash.to_ascii_lowercase())
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `<8 hex digits>.<digits>`, the names `c_rehash` / `openssl rehash` give certificates.
fn cert_hash(name: &str) -> Option<String> {
    hash_of(name, digits)
}

/// `<8 hex digits>.r<digits>`, the names fetch-crl and `openssl rehash` give CRLs.
fn crl_hash(name: &str) -> Option<String> {
    hash_of(name, |s| s.strip_prefix('r').is_some_and(digits))
}

/// `<8 hex digits>.signing_policy`.
fn policy_hash(name: &str) -> Option<String> {
    hash_of(name, |s| s == "signing_policy")
}

/// Reads a regular file of at most `max` bytes.
fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let meta = fs::metadata(path).map_err(|e| format!("stat: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let too_large = |len: u64| format!("{len} bytes, more than the limit of {max}");
    if meta.len() > max {
        return Err(too_large(meta.len()));
    }
    let file = fs::File::open(path).map_err(|e| format!("open: {e}"))?;
    let mut data = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| format!("read: {e}"))?;
    if u64::try_from(data.len()).map_or(true, |n| n > max) {
        return Err(too_large(u64::try_from(data.len()).unwrap_or(u64::MAX)));
    }
    Ok(data)
}

fn read_small(path: &Path) -> Result<Vec<u8>, String> {
    read_limited(path, MAX_FILE_LEN)
}

/// The DER CRLs of a CRL file: one DER CRL, or PEM `X509 CRL` blocks.
fn crl_ders(data: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if data.first() == Some(&0x30) {
        return Ok(vec![data.to_vec()]);
    }
    crate::pem::crls(data, crl::MAX_CRLS_PER_FILE)
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
        chain.push(name::normalize_slash_dn(line));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_names() {
        assert_eq!(cert_hash("1d879c6c.0").as_deref(), Some("1d879c6c"));
        assert_eq!(cert_hash("ABCDEF01.12").as_deref(), Some("abcdef01"));
        assert!(cert_hash("1d879c6c.r0").is_none());
        assert!(cert_hash("1d879c6c.signing_policy").is_none());
        assert!(cert_hash("1d879c6.0").is_none());
        assert!(cert_hash("1d879c6c.").is_none());
        assert!(cert_hash("1d879c6c0").is_none());
        assert!(cert_hash("1d87\u{e9}c6.0").is_none());
        assert_eq!(crl_hash("1d879c6c.r0").as_deref(), Some("1d879c6c"));
        assert_eq!(crl_hash("1D879C6C.r12").as_deref(), Some("1d879c6c"));
        assert!(crl_hash("1d879c6c.r").is_none());
        assert!(crl_hash("1d879c6c.0").is_none());
        assert!(crl_hash("1d879c6c.rx").is_none());
        assert!(crl_hash("xd879c6c.r0").is_none());
        assert_eq!(
            policy_hash("1d879c6c.signing_policy").as_deref(),
            Some("1d879c6c")
        );
        assert!(policy_hash("CERN-GridCA.signing_policy").is_none());
        assert!(policy_hash("1d879c6c.namespaces").is_none());
    }

    #[test]
    fn serials_in_hex() {
        assert_eq!(
            serial_hex(&[0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc]),
            "123456789ABC"
        );
        assert_eq!(serial_hex(&[0x00, 0x80]), "80");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[]), "00");
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
