//! Test PKI built at run time: a DER encoder, keys (ring), certificates, proxies, VOMS
//! attribute certificates, CRLs, signing policies, and trust store directories.
//!
//! Certificates are encoded by hand (rcgen cannot repeat attribute types in a DN, which grid DNs
//! need: `/DC=ch/DC=cern/OU=.../OU=.../CN=.../CN=...`).

#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dms_proxy::TrustStore;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING, RSA_PKCS1_SHA256,
};

/// The tests' "now": 2030-03-17T17:46:40Z.
pub const NOW: i64 = 1_900_000_000;
pub const HOUR: i64 = 3600;
pub const DAY: i64 = 86_400;

pub fn at(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
}

pub fn now() -> SystemTime {
    at(NOW)
}

// ---------------------------------------------------------------------------------------------
// DER encoding

pub mod der {
    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes: Vec<u8> = n
                .to_be_bytes()
                .into_iter()
                .skip_while(|&b| b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(content);
        out
    }

    pub fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    pub fn set(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x31, &parts.concat())
    }

    /// Context-specific constructed `[n]`.
    pub fn ctx(n: u8, parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0xa0 | n, &parts.concat())
    }

    pub fn oid(dotted: &str) -> Vec<u8> {
        let arcs: Vec<u64> = dotted.split('.').map(|a| a.parse().unwrap()).collect();
        let mut content = vec![(arcs[0] * 40 + arcs[1]) as u8];
        for &arc in &arcs[2..] {
            let mut groups = vec![(arc & 0x7f) as u8];
            let mut rest = arc >> 7;
            while rest > 0 {
                groups.push(0x80 | (rest & 0x7f) as u8);
                rest >>= 7;
            }
            groups.reverse();
            content.extend(groups);
        }
        tlv(0x06, &content)
    }

    pub fn uint(v: u64) -> Vec<u8> {
        let mut bytes: Vec<u8> = v
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        if bytes.first().is_none_or(|&b| b & 0x80 != 0) {
            bytes.insert(0, 0);
        }
        tlv(0x02, &bytes)
    }

    pub fn boolean(v: bool) -> Vec<u8> {
        tlv(0x01, &[if v { 0xff } else { 0 }])
    }

    pub fn null() -> Vec<u8> {
        tlv(0x05, &[])
    }

    pub fn octets(b: &[u8]) -> Vec<u8> {
        tlv(0x04, b)
    }

    pub fn bits(b: &[u8]) -> Vec<u8> {
        let mut c = vec![0];
        c.extend_from_slice(b);
        tlv(0x03, &c)
    }

    pub fn utf8(s: &str) -> Vec<u8> {
        tlv(0x0c, s.as_bytes())
    }

    pub fn printable(s: &str) -> Vec<u8> {
        tlv(0x13, s.as_bytes())
    }

    pub fn ia5(s: &str) -> Vec<u8> {
        tlv(0x16, s.as_bytes())
    }

    fn civil(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
    }

    pub fn generalized_time(secs: i64) -> Vec<u8> {
        let (y, m, d, h, mi, s) = civil(secs);
        tlv(
            0x18,
            format!("{y:04}{m:02}{d:02}{h:02}{mi:02}{s:02}Z").as_bytes(),
        )
    }

    /// UTCTime before 2050, GeneralizedTime from then on (RFC 5280).
    pub fn cert_time(secs: i64) -> Vec<u8> {
        let (y, m, d, h, mi, s) = civil(secs);
        if (1950..2050).contains(&y) {
            tlv(
                0x17,
                format!("{:02}{m:02}{d:02}{h:02}{mi:02}{s:02}Z", y % 100).as_bytes(),
            )
        } else {
            generalized_time(secs)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Names

/// A DN as (attribute, value) pairs in certificate order; each pair is its own RDN.
#[derive(Debug, Clone, PartialEq)]
pub struct Dn(pub Vec<(String, String)>);

impl Dn {
    pub fn new(pairs: &[(&str, &str)]) -> Dn {
        Dn(pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// Parses `/K=v/K=v` (values without `/`).
    pub fn parse(slash: &str) -> Dn {
        Dn(slash
            .split('/')
            .skip(1)
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect())
    }

    pub fn with_cn(&self, cn: &str) -> Dn {
        let mut d = self.clone();
        d.0.push(("CN".into(), cn.into()));
        d
    }

    pub fn slash(&self) -> String {
        self.0.iter().map(|(k, v)| format!("/{k}={v}")).collect()
    }

    pub fn der(&self) -> Vec<u8> {
        let rdns: Vec<Vec<u8>> = self
            .0
            .iter()
            .map(|(k, v)| {
                let (oid, value) = match k.as_str() {
                    "C" => ("2.5.4.6", der::printable(v)),
                    "ST" => ("2.5.4.8", der::utf8(v)),
                    "L" => ("2.5.4.7", der::utf8(v)),
                    "O" => ("2.5.4.10", der::utf8(v)),
                    "OU" => ("2.5.4.11", der::utf8(v)),
                    "CN" => ("2.5.4.3", der::utf8(v)),
                    "DC" => ("0.9.2342.19200300.100.1.25", der::ia5(v)),
                    "UID" => ("0.9.2342.19200300.100.1.1", der::utf8(v)),
                    "emailAddress" => ("1.2.840.113549.1.9.1", der::ia5(v)),
                    other => panic!("unknown attribute {other}"),
                };
                der::set(&[der::seq(&[der::oid(oid), value])])
            })
            .collect();
        der::seq(&rdns)
    }
}

// ---------------------------------------------------------------------------------------------
// Keys

pub enum Key {
    Ec(EcdsaKeyPair, Vec<u8>),
    Rsa(RsaKeyPair),
}

impl Key {
    pub fn ec() -> Key {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Key::Ec(key, pkcs8.as_ref().to_vec())
    }

    /// The committed test RSA key (tests/fixtures/test-rsa-2048.pk8.pem).
    pub fn rsa() -> Key {
        let pem = include_str!("../fixtures/test-rsa-2048.pk8.pem");
        let b64: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        let der = data_encoding::BASE64.decode(b64.as_bytes()).unwrap();
        Key::Rsa(RsaKeyPair::from_pkcs8(&der).unwrap())
    }

    pub fn spki(&self) -> Vec<u8> {
        match self {
            Key::Ec(k, _) => der::seq(&[
                der::seq(&[
                    der::oid("1.2.840.10045.2.1"),
                    der::oid("1.2.840.10045.3.1.7"),
                ]),
                der::bits(k.public_key().as_ref()),
            ]),
            Key::Rsa(k) => der::seq(&[
                der::seq(&[der::oid("1.2.840.113549.1.1.1"), der::null()]),
                der::bits(k.public().as_ref()),
            ]),
        }
    }

    pub fn alg(&self) -> Vec<u8> {
        match self {
            Key::Ec(..) => der::seq(&[der::oid("1.2.840.10045.4.3.2")]),
            Key::Rsa(_) => der::seq(&[der::oid("1.2.840.113549.1.1.11"), der::null()]),
        }
    }

    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Key::Ec(k, _) => k.sign(&rng, msg).unwrap().as_ref().to_vec(),
            Key::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, msg, &mut sig).unwrap();
                sig
            }
        }
    }

    /// A PEM private key block (only EC keys are ever written to proxy files here).
    pub fn pem(&self) -> String {
        match self {
            Key::Ec(_, pkcs8) => pem_block("PRIVATE KEY", pkcs8),
            Key::Rsa(_) => String::new(),
        }
    }
}

pub fn pem_block(label: &str, der: &[u8]) -> String {
    let b64 = data_encoding::BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

// ---------------------------------------------------------------------------------------------
// Certificates

pub fn ext(oid: &str, critical: bool, value: &[u8]) -> Vec<u8> {
    let mut parts = vec![der::oid(oid)];
    if critical {
        parts.push(der::boolean(true));
    }
    parts.push(der::octets(value));
    der::seq(&parts)
}

pub fn basic_constraints_ca() -> Vec<u8> {
    ext("2.5.29.19", true, &der::seq(&[der::boolean(true)]))
}

/// keyUsage digitalSignature + keyEncipherment (user and proxy certificates).
pub fn key_usage_user() -> Vec<u8> {
    ext("2.5.29.15", true, &der::tlv(0x03, &[0x05, 0xa0]))
}

/// keyUsage keyEncipherment only (no digitalSignature).
pub fn key_usage_no_signature() -> Vec<u8> {
    ext("2.5.29.15", true, &der::tlv(0x03, &[0x05, 0x20]))
}

/// RFC 3820 proxyCertInfo, inheritAll, with an optional path length constraint.
pub fn proxy_cert_info(path_len: Option<u64>) -> Vec<u8> {
    proxy_cert_info_lang(path_len, "1.3.6.1.5.5.7.21.1")
}

pub fn proxy_cert_info_lang(path_len: Option<u64>, lang: &str) -> Vec<u8> {
    let mut parts = Vec::new();
    if let Some(n) = path_len {
        parts.push(der::uint(n));
    }
    parts.push(der::seq(&[der::oid(lang)]));
    ext("1.3.6.1.5.5.7.1.14", true, &der::seq(&parts))
}

pub struct CertSpec {
    pub serial: u64,
    pub issuer: Dn,
    pub subject: Dn,
    pub not_before: i64,
    pub not_after: i64,
    pub extensions: Vec<Vec<u8>>,
}

/// A certificate for `subject_key`, signed by `signer`.
pub fn cert(spec: &CertSpec, subject_key: &Key, signer: &Key) -> Vec<u8> {
    let mut tbs = vec![
        der::ctx(0, &[der::uint(2)]),
        der::uint(spec.serial),
        signer.alg(),
        spec.issuer.der(),
        der::seq(&[
            der::cert_time(spec.not_before),
            der::cert_time(spec.not_after),
        ]),
        spec.subject.der(),
        subject_key.spki(),
    ];
    if !spec.extensions.is_empty() {
        tbs.push(der::ctx(3, &[der::seq(&spec.extensions)]));
    }
    let tbs = der::seq(&tbs);
    let sig = signer.sign(&tbs);
    der::seq(&[tbs, signer.alg(), der::bits(&sig)])
}

/// A proxy file for the user certificate `user_cert` (subject `user_dn`, key `user_key`): a
/// fresh RFC 3820 proxy, its key, the user certificate.
pub fn proxy_file_of(user_dn: &Dn, user_key: &Key, user_cert: &[u8]) -> String {
    let key = Key::ec();
    let proxy = cert(
        &CertSpec {
            serial: 987_654_321,
            issuer: user_dn.clone(),
            subject: user_dn.with_cn("987654321"),
            not_before: NOW - HOUR,
            not_after: NOW + 11 * HOUR,
            extensions: vec![key_usage_user(), proxy_cert_info(None)],
        },
        &key,
        user_key,
    );
    format!(
        "{}{}{}",
        pem_block("CERTIFICATE", &proxy),
        key.pem(),
        pem_block("CERTIFICATE", user_cert)
    )
}

// ---------------------------------------------------------------------------------------------
// CRLs and signing policies

pub struct CrlSpec {
    pub issuer: Dn,
    pub this_update: i64,
    /// `None` leaves nextUpdate out.
    pub next_update: Option<i64>,
    /// Revoked serial numbers and their revocation dates.
    pub revoked: Vec<(u64, i64)>,
    pub extensions: Vec<Vec<u8>>,
}

/// A v2 CRL for `spec`, signed by `signer`.
pub fn crl(spec: &CrlSpec, signer: &Key) -> Vec<u8> {
    sign_crl(crl_tbs(spec, signer), signer)
}

/// A CertificateList with the TBSCertList `tbs`, signed by `signer`.
pub fn sign_crl(tbs: Vec<u8>, signer: &Key) -> Vec<u8> {
    let sig = signer.sign(&tbs);
    der::seq(&[tbs, signer.alg(), der::bits(&sig)])
}

/// The TBSCertList of a v2 CRL for `spec` (with `signer`'s signature algorithm).
pub fn crl_tbs(spec: &CrlSpec, signer: &Key) -> Vec<u8> {
    let mut tbs = vec![
        der::uint(1),
        signer.alg(),
        spec.issuer.der(),
        der::cert_time(spec.this_update),
    ];
    if let Some(next) = spec.next_update {
        tbs.push(der::cert_time(next));
    }
    if !spec.revoked.is_empty() {
        let entries: Vec<Vec<u8>> = spec
            .revoked
            .iter()
            .map(|&(serial, at)| der::seq(&[der::uint(serial), der::cert_time(at)]))
            .collect();
        tbs.push(der::seq(&entries));
    }
    if !spec.extensions.is_empty() {
        tbs.push(der::ctx(0, &[der::seq(&spec.extensions)]));
    }
    der::seq(&tbs)
}

/// The cRLNumber extension.
pub fn crl_number(n: u64) -> Vec<u8> {
    ext("2.5.29.20", false, &der::uint(n))
}

/// A signing policy file with one access_id_CA entry for `ca` allowing `patterns`.
pub fn signing_policy(ca: &str, patterns: &[&str]) -> String {
    let quoted: Vec<String> = patterns.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "# Signing policy of {ca}\n\
         access_id_CA      X509         '{ca}'\n\
         pos_rights        globus        CA:sign\n\
         cond_subjects     globus       '{}'\n",
        quoted.join(" ")
    )
}

/// A CA other than the PKI's (EC key), with a user certificate.
pub struct OtherCa {
    pub key: Key,
    pub dn: Dn,
    pub cert: Vec<u8>,
    pub user_key: Key,
    pub user_dn: Dn,
    pub user_cert: Vec<u8>,
}

pub const OTHER_CA_DN: &str = "/DC=org/DC=example/CN=Example Grid CA";
pub const OTHER_USER_DN: &str = "/DC=org/DC=example/OU=People/CN=Alice Example";

impl OtherCa {
    /// The CA, and a user certificate with serial [`USER_SERIAL`] (the same as the PKI's user).
    pub fn new() -> OtherCa {
        let key = Key::ec();
        let dn = Dn::parse(OTHER_CA_DN);
        let cert = cert(
            &CertSpec {
                serial: 1,
                issuer: dn.clone(),
                subject: dn.clone(),
                not_before: NOW - 365 * DAY,
                not_after: NOW + 365 * DAY,
                extensions: vec![basic_constraints_ca()],
            },
            &key,
            &key,
        );
        let user_key = Key::ec();
        let user_dn = Dn::parse(OTHER_USER_DN);
        let user_cert = self::cert(
            &CertSpec {
                serial: USER_SERIAL,
                issuer: dn.clone(),
                subject: user_dn.clone(),
                not_before: NOW - DAY,
                not_after: NOW + 30 * DAY,
                extensions: vec![key_usage_user()],
            },
            &user_key,
            &key,
        );
        OtherCa {
            key,
            dn,
            cert,
            user_key,
            user_dn,
            user_cert,
        }
    }

    pub fn proxy_file(&self) -> String {
        proxy_file_of(&self.user_dn, &self.user_key, &self.user_cert)
    }

    /// A current CRL of this CA revoking `revoked`.
    pub fn crl(&self, revoked: &[u64]) -> Vec<u8> {
        crl(
            &CrlSpec {
                issuer: self.dn.clone(),
                this_update: NOW - DAY,
                next_update: Some(NOW + 6 * DAY),
                revoked: revoked.iter().map(|&s| (s, NOW - 2 * DAY)).collect(),
                extensions: vec![crl_number(7)],
            },
            &self.key,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// VOMS attribute certificates

pub struct AcSpec {
    pub holder_issuer: Dn,
    pub holder_serial: u64,
    pub issuer: Dn,
    pub serial: u64,
    pub not_before: i64,
    pub not_after: i64,
    /// The policy authority, `<vo>://<host>:<port>`; `None` leaves it out.
    pub authority: Option<String>,
    pub fqans: Vec<String>,
    /// The VOMS server's certificate chain (AC extension 1.3.6.1.4.1.8005.100.100.10).
    pub chain: Vec<Vec<u8>>,
    pub extra_extensions: Vec<Vec<u8>>,
}

pub fn ac(spec: &AcSpec, signer: &Key) -> Vec<u8> {
    sign_ac(&ac_info(spec, signer), signer)
}

/// An AttributeCertificate with `info` (AttributeCertificateInfo) signed by `signer`.
pub fn sign_ac(info: &[u8], signer: &Key) -> Vec<u8> {
    let sig = signer.sign(info);
    der::seq(&[info.to_vec(), signer.alg(), der::bits(&sig)])
}

/// The signed part of an AC.
pub fn ac_info(spec: &AcSpec, signer: &Key) -> Vec<u8> {
    let general_names = |dn: &Dn| der::seq(&[der::ctx(4, &[dn.der()])]);
    let mut ietf = Vec::new();
    if let Some(authority) = &spec.authority {
        ietf.push(der::ctx(0, &[der::tlv(0x86, authority.as_bytes())]));
    }
    ietf.push(der::seq(
        &spec
            .fqans
            .iter()
            .map(|f| der::octets(f.as_bytes()))
            .collect::<Vec<_>>(),
    ));
    let attributes = der::seq(&[der::seq(&[
        der::oid("1.3.6.1.4.1.8005.100.100.4"),
        der::set(&[der::seq(&ietf)]),
    ])]);
    let mut exts = vec![
        ext("2.5.29.56", false, &der::null()),
        ext(
            "2.5.29.35",
            false,
            &der::seq(&[der::tlv(0x80, &[1, 2, 3, 4])]),
        ),
    ];
    if !spec.chain.is_empty() {
        exts.push(ext(
            "1.3.6.1.4.1.8005.100.100.10",
            false,
            &der::seq(&[der::seq(&spec.chain)]),
        ));
    }
    exts.extend(spec.extra_extensions.iter().cloned());
    der::seq(&[
        der::uint(1),
        der::seq(&[der::ctx(
            0,
            &[
                general_names(&spec.holder_issuer),
                der::uint(spec.holder_serial),
            ],
        )]),
        der::ctx(0, &[general_names(&spec.issuer)]),
        signer.alg(),
        der::uint(spec.serial),
        der::seq(&[
            der::generalized_time(spec.not_before),
            der::generalized_time(spec.not_after),
        ]),
        attributes,
        der::seq(&exts),
    ])
}

/// The proxy extension carrying ACs.
pub fn voms_extension(acs: &[Vec<u8>]) -> Vec<u8> {
    ext(
        "1.3.6.1.4.1.8005.100.100.5",
        false,
        &der::seq(&[der::seq(acs)]),
    )
}

// ---------------------------------------------------------------------------------------------
// A grid PKI

pub const USER_DN: &str = "/DC=ch/DC=cern/OU=Organic Units/OU=Users/CN=jdoe/CN=123456/CN=John Doe";
pub const CA_DN: &str = "/DC=ch/DC=cern/CN=CERN Grid Certification Authority";
pub const VOMS_DN: &str = "/DC=ch/DC=cern/OU=computers/CN=voms-atlas.cern.ch";
pub const USER_SERIAL: u64 = 0x1234_5678_9abc;
/// The serial number of the VOMS server certificate.
pub const VOMS_SERIAL: u64 = 77;
/// The made-up OpenSSL hash the CA is filed under in [`Pki::ca_dir_hashed`].
pub const CA_HASH: &str = "1d879c6c";

pub struct Pki {
    pub ca_key: Key,
    pub ca_dn: Dn,
    pub ca_cert: Vec<u8>,
    pub user_key: Key,
    pub user_dn: Dn,
    pub user_cert: Vec<u8>,
    pub voms_key: Key,
    pub voms_dn: Dn,
    pub voms_cert: Vec<u8>,
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        Pki::with_user(USER_DN, NOW - 300 * DAY, NOW + 65 * DAY)
    }

    /// A PKI whose user certificate has subject `user_dn` and the given validity.
    pub fn with_user(user_dn: &str, not_before: i64, not_after: i64) -> Pki {
        let ca_key = Key::rsa();
        let ca_dn = Dn::parse(CA_DN);
        let ca_cert = cert(
            &CertSpec {
                serial: 1,
                issuer: ca_dn.clone(),
                subject: ca_dn.clone(),
                not_before: NOW - 3650 * DAY,
                not_after: NOW + 3650 * DAY,
                extensions: vec![basic_constraints_ca()],
            },
            &ca_key,
            &ca_key,
        );
        let user_key = Key::ec();
        let user_dn = Dn::parse(user_dn);
        let user_cert = cert(
            &CertSpec {
                serial: USER_SERIAL,
                issuer: ca_dn.clone(),
                subject: user_dn.clone(),
                not_before,
                not_after,
                extensions: vec![key_usage_user()],
            },
            &user_key,
            &ca_key,
        );
        let voms_key = Key::ec();
        let voms_dn = Dn::parse(VOMS_DN);
        let voms_cert = cert(
            &CertSpec {
                serial: VOMS_SERIAL,
                issuer: ca_dn.clone(),
                subject: voms_dn.clone(),
                not_before: NOW - 100 * DAY,
                not_after: NOW + 300 * DAY,
                extensions: vec![],
            },
            &voms_key,
            &ca_key,
        );
        Pki {
            ca_key,
            ca_dn,
            ca_cert,
            user_key,
            user_dn,
            user_cert,
            voms_key,
            voms_dn,
            voms_cert,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A valid AC of VO atlas for the user, with `fqans`, signed by the VOMS server.
    pub fn ac_spec(&self, fqans: &[&str]) -> AcSpec {
        AcSpec {
            holder_issuer: self.ca_dn.clone(),
            holder_serial: USER_SERIAL,
            issuer: self.voms_dn.clone(),
            serial: 4242,
            not_before: NOW - HOUR,
            not_after: NOW + 24 * HOUR,
            authority: Some("atlas://voms-atlas.cern.ch:15001".into()),
            fqans: fqans.iter().map(|s| s.to_string()).collect(),
            chain: vec![],
            extra_extensions: vec![],
        }
    }

    pub fn ac(&self, fqans: &[&str]) -> Vec<u8> {
        ac(&self.ac_spec(fqans), &self.voms_key)
    }

    /// The spec of a proxy of the user certificate, valid from 1 h ago for 12 h.
    pub fn proxy_spec(&self, extensions: Vec<Vec<u8>>) -> CertSpec {
        let mut exts = vec![key_usage_user(), proxy_cert_info(None)];
        exts.extend(extensions);
        CertSpec {
            serial: 987_654_321,
            issuer: self.user_dn.clone(),
            subject: self.user_dn.with_cn("987654321"),
            not_before: NOW - HOUR,
            not_after: NOW + 11 * HOUR,
            extensions: exts,
        }
    }

    /// A proxy file: a proxy with `extensions` (plus keyUsage and proxyCertInfo), its key,
    /// the user certificate.
    pub fn proxy_file(&self, extensions: Vec<Vec<u8>>) -> String {
        self.proxy_file_from(&self.proxy_spec(extensions))
    }

    /// A proxy file for `spec`, signed by the user key.
    pub fn proxy_file_from(&self, spec: &CertSpec) -> String {
        let key = Key::ec();
        let proxy = cert(spec, &key, &self.user_key);
        format!(
            "{}{}{}",
            pem_block("CERTIFICATE", &proxy),
            key.pem(),
            pem_block("CERTIFICATE", &self.user_cert)
        )
    }

    /// A current CRL of the CA (thisUpdate a day ago, nextUpdate in 6 days) revoking
    /// `revoked` (two days ago).
    pub fn crl_spec(&self, revoked: &[u64]) -> CrlSpec {
        CrlSpec {
            issuer: self.ca_dn.clone(),
            this_update: NOW - DAY,
            next_update: Some(NOW + 6 * DAY),
            revoked: revoked.iter().map(|&s| (s, NOW - 2 * DAY)).collect(),
            extensions: vec![crl_number(42)],
        }
    }

    pub fn crl(&self, revoked: &[u64]) -> Vec<u8> {
        crl(&self.crl_spec(revoked), &self.ca_key)
    }

    /// The CA directory with the CA also under its (made-up) hashed name `CA_HASH.0`, a
    /// symlink, as `openssl rehash` makes.
    pub fn ca_dir_hashed(&self) -> PathBuf {
        let dir = self.ca_dir();
        let link = dir.join(format!("{CA_HASH}.0"));
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("cern-ca.pem", &link).unwrap();
        }
        dir
    }

    /// The trust store (at the tests' now) of the CA directory and the vomsdir (if any) as
    /// they are.
    pub fn reload(&self) -> TrustStore {
        let vomsdir = self.vomsdir();
        TrustStore::load_at(
            &self.dir.path().join("certificates"),
            vomsdir.exists().then_some(vomsdir.as_path()),
            now(),
        )
        .unwrap()
    }

    fn write(&self, rel: &str, data: &[u8]) -> PathBuf {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        path
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.write(
            "certificates/cern-ca.pem",
            pem_block("CERTIFICATE", &self.ca_cert).as_bytes(),
        );
        self.dir.path().join("certificates")
    }

    pub fn vomsdir(&self) -> PathBuf {
        self.dir.path().join("vomsdir")
    }

    /// The trust store: the CA, and the VOMS server certificate for VO atlas.
    pub fn trust(&self) -> TrustStore {
        let ca_dir = self.ca_dir();
        self.write(
            "vomsdir/atlas/voms-atlas.cern.ch.pem",
            pem_block("CERTIFICATE", &self.voms_cert).as_bytes(),
        );
        TrustStore::load_at(&ca_dir, Some(&self.vomsdir()), now()).unwrap()
    }

    /// The trust store with the CA only (no vomsdir).
    pub fn trust_ca_only(&self) -> TrustStore {
        TrustStore::load_at(&self.ca_dir(), None, now()).unwrap()
    }

    /// Writes a file below the PKI's directory (for trust store variants).
    pub fn put(&self, rel: &str, data: &[u8]) -> PathBuf {
        self.write(rel, data)
    }
}
