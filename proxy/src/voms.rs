//! VOMS attribute certificates (RFC 5755 ACs in the proxy extension 1.3.6.1.4.1.8005.100.100.5):
//! parsing, trust, FQANs.
//!
//! ```text
//! AttributeCertificate ::= SEQUENCE { acinfo AttributeCertificateInfo,
//!     signatureAlgorithm AlgorithmIdentifier, signatureValue BIT STRING }
//! AttributeCertificateInfo ::= SEQUENCE {
//!     version INTEGER (v2 = 1), holder Holder, issuer AttCertIssuer,
//!     signature AlgorithmIdentifier, serialNumber INTEGER,
//!     attrCertValidityPeriod SEQUENCE { notBefore GeneralizedTime, notAfter GeneralizedTime },
//!     attributes SEQUENCE OF Attribute, issuerUniqueID BIT STRING OPTIONAL,
//!     extensions Extensions OPTIONAL }
//! Holder ::= SEQUENCE { baseCertificateID [0] IssuerSerial OPTIONAL, ... }
//! IssuerSerial ::= SEQUENCE { issuer GeneralNames, serial INTEGER, issuerUID OPTIONAL }
//! AttCertIssuer ::= CHOICE { v1Form GeneralNames, v2Form [0] V2Form }
//! V2Form ::= SEQUENCE { issuerName GeneralNames OPTIONAL, ... }
//! IetfAttrSyntax ::= SEQUENCE { policyAuthority [0] GeneralNames OPTIONAL,
//!     values SEQUENCE OF CHOICE { octets OCTET STRING, oid OBJECT IDENTIFIER, string UTF8String } }
//! ```

use x509_parser::asn1_rs::BitString;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::x509::{AlgorithmIdentifier, X509Name};

use crate::chain;
use crate::der::{self, tag, Reader};
use crate::error::ProxyError;
use crate::name;
use crate::time::{parse_generalized_time, system_time};
use crate::trust::TrustStore;

/// The proxy certificate extension holding the ACs.
pub(crate) const OID_VOMS_EXTENSION: &str = "1.3.6.1.4.1.8005.100.100.5";
/// The AC attribute holding the FQANs.
const OID_FQAN_ATTRIBUTE: &str = "1.3.6.1.4.1.8005.100.100.4";
/// AC extension: the VOMS server's certificate chain (checked against `.lsc` files).
const OID_AC_CERTS: &str = "1.3.6.1.4.1.8005.100.100.10";
/// AC extensions VOMS servers add that need no processing here.
const OID_AC_TAGS: &str = "1.3.6.1.4.1.8005.100.100.11";
const OID_NO_REV_AVAIL: &str = "2.5.29.56";
const OID_AUTHORITY_KEY_ID: &str = "2.5.29.35";
const OID_TARGETS: &str = "2.5.29.55";

/// Most ACs accepted in one proxy (one per VO in practice).
const MAX_ACS: usize = 8;
/// Most FQANs accepted, over all ACs.
pub(crate) const MAX_FQANS: usize = 64;
/// Most certificates in an AC's certificate chain.
const MAX_AC_CERTS: usize = 10;
/// Longest FQAN, in bytes (as in dms-policies).
const MAX_FQAN_LEN: usize = 255;
/// Longest VO, group, role or capability name, in bytes (as in dms-policies).
const MAX_NAME_LEN: usize = 64;

/// What the ACs of a proxy say.
#[derive(Debug, Default)]
pub(crate) struct Attributes {
    /// Normalised FQANs, in order (the first is the primary one).
    pub fqans: Vec<String>,
    /// The earliest end of validity of the ACs.
    pub not_after: Option<i64>,
}

/// A parsed AC; slices point into the proxy certificate's extension.
struct Ac<'a> {
    /// The signed part (AttributeCertificateInfo, full encoding).
    info: &'a [u8],
    holder_issuers: Vec<&'a [u8]>,
    holder_serial: Option<&'a [u8]>,
    issuer_names: Vec<&'a [u8]>,
    inner_alg: &'a [u8],
    outer_alg: &'a [u8],
    signature: &'a [u8],
    not_before: i64,
    not_after: i64,
    policy_authority: Option<String>,
    values: Vec<&'a [u8]>,
    certs: Option<&'a [u8]>,
}

fn bad(reason: String) -> ProxyError {
    ProxyError::BadAc { reason }
}

/// Checks every AC of the VOMS extension value `value` against the user certificate `eec` and
/// the trust store, and returns their FQANs.
pub(crate) fn verify(
    value: &[u8],
    eec: &X509Certificate<'_>,
    trust: &TrustStore,
    now: i64,
) -> Result<Attributes, ProxyError> {
    let mut out = Attributes::default();
    let mut fqan_count = 0usize;
    let mut ac_count = 0usize;
    let mut outer = der::single(value, tag::SEQUENCE, "VOMS extension").map_err(bad)?;
    while !outer.is_empty() {
        let seq = outer.expect(tag::SEQUENCE, "VOMS extension").map_err(bad)?;
        let mut acs = Reader::new(seq.content);
        while !acs.is_empty() {
            ac_count += 1;
            if ac_count > MAX_ACS {
                return Err(bad(format!("more than {MAX_ACS} attribute certificates")));
            }
            let raw = acs
                .expect(tag::SEQUENCE, "AttributeCertificate")
                .map_err(bad)?;
            let ac = parse_ac(raw.raw, &mut fqan_count).map_err(|e| match e {
                ProxyError::BadAc { reason } if ac_count > 1 => {
                    bad(format!("AC {ac_count}: {reason}"))
                }
                other => other,
            })?;
            let fqans = verify_ac(&ac, eec, trust, now)?;
            out.fqans.extend(fqans);
            out.not_after = Some(out.not_after.map_or(ac.not_after, |t| t.min(ac.not_after)));
        }
    }
    if ac_count == 0 {
        return Err(bad(
            "the VOMS extension holds no attribute certificate".into()
        ));
    }
    Ok(out)
}

fn parse_ac<'a>(raw: &'a [u8], fqan_count: &mut usize) -> Result<Ac<'a>, ProxyError> {
    let mut ac = der::single(raw, tag::SEQUENCE, "AttributeCertificate").map_err(bad)?;
    let info = ac.expect(tag::SEQUENCE, "acinfo").map_err(bad)?;
    let outer_alg = ac
        .expect(tag::SEQUENCE, "signatureAlgorithm")
        .map_err(bad)?;
    let signature = ac.expect(tag::BIT_STRING, "signatureValue").map_err(bad)?;
    ac.finish("AttributeCertificate").map_err(bad)?;

    let mut r = Reader::new(info.content);
    let version = r.expect(tag::INTEGER, "version").map_err(bad)?;
    if der::uint(version.content).ok() != Some(1) {
        return Err(bad("not a version 2 attribute certificate".into()));
    }

    let holder = r.expect(tag::SEQUENCE, "holder").map_err(bad)?;
    let mut h = Reader::new(holder.content);
    let mut holder_issuers = Vec::new();
    let mut holder_serial = None;
    if let Some(base) = h
        .optional(tag::CTX0, "holder baseCertificateID")
        .map_err(bad)?
    {
        let mut is = Reader::new(base.content);
        let names = is.expect(tag::SEQUENCE, "holder issuer").map_err(bad)?;
        holder_issuers = directory_names(names.content).map_err(bad)?;
        let serial = is.expect(tag::INTEGER, "holder serial").map_err(bad)?;
        holder_serial = Some(serial.content);
    }

    let issuer = r.read().map_err(|e| bad(format!("issuer: {e}")))?;
    let issuer_names = match issuer.tag {
        // v2Form: issuerName GeneralNames OPTIONAL, then fields not used here.
        tag::CTX0 => {
            let mut v2 = Reader::new(issuer.content);
            match v2.optional(tag::SEQUENCE, "issuerName").map_err(bad)? {
                Some(names) => directory_names(names.content).map_err(bad)?,
                None => Vec::new(),
            }
        }
        // v1Form
        tag::SEQUENCE => directory_names(issuer.content).map_err(bad)?,
        other => return Err(bad(format!("issuer: unexpected tag {other:#04x}"))),
    };

    let inner_alg = r.expect(tag::SEQUENCE, "signature").map_err(bad)?;
    r.expect(tag::INTEGER, "serialNumber").map_err(bad)?;
    let validity = r
        .expect(tag::SEQUENCE, "attrCertValidityPeriod")
        .map_err(bad)?;
    let mut v = Reader::new(validity.content);
    let mut time = |what: &str| -> Result<i64, ProxyError> {
        let t = v.expect(tag::GENERALIZED_TIME, what).map_err(bad)?;
        parse_generalized_time(t.content).ok_or_else(|| {
            bad(format!(
                "{what}: malformed GeneralizedTime {:?}",
                String::from_utf8_lossy(t.content)
            ))
        })
    };
    let not_before = time("notBeforeTime")?;
    let not_after = time("notAfterTime")?;
    v.finish("attrCertValidityPeriod").map_err(bad)?;

    let attributes = r.expect(tag::SEQUENCE, "attributes").map_err(bad)?;
    let (policy_authority, values) = fqan_attribute(attributes.content, fqan_count)?;

    r.optional(tag::BIT_STRING, "issuerUniqueID").map_err(bad)?;
    let mut certs = None;
    if let Some(exts) = r.optional(tag::SEQUENCE, "extensions").map_err(bad)? {
        certs = extensions(exts.content).map_err(bad)?;
    }
    r.finish("AttributeCertificateInfo").map_err(bad)?;

    Ok(Ac {
        info: info.raw,
        holder_issuers,
        holder_serial,
        issuer_names,
        inner_alg: inner_alg.raw,
        outer_alg: outer_alg.raw,
        signature: signature.content,
        not_before,
        not_after,
        policy_authority,
        values,
        certs,
    })
}

/// The `directoryName` entries of a GeneralNames content (each a full Name encoding).
fn directory_names(content: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut r = Reader::new(content);
    let mut out = Vec::new();
    while !r.is_empty() {
        let gn = r.read().map_err(|e| format!("GeneralName: {e}"))?;
        if gn.tag == tag::CTX4 {
            let mut inner = Reader::new(gn.content);
            let name = inner.expect(tag::SEQUENCE, "directoryName")?;
            inner.finish("directoryName")?;
            out.push(name.raw);
        }
    }
    Ok(out)
}

/// The FQAN attribute: the policy authority (`<vo>://<host>:<port>`) and the raw values.
fn fqan_attribute<'a>(
    content: &'a [u8],
    fqan_count: &mut usize,
) -> Result<(Option<String>, Vec<&'a [u8]>), ProxyError> {
    let mut attrs = Reader::new(content);
    let mut found = false;
    let mut authority = None;
    let mut values = Vec::new();
    while !attrs.is_empty() {
        let attr = attrs.expect(tag::SEQUENCE, "Attribute").map_err(bad)?;
        let mut a = Reader::new(attr.content);
        let oid = a.expect(tag::OID, "Attribute type").map_err(bad)?;
        let oid = der::oid_string(oid.content).map_err(bad)?;
        let set = a.expect(tag::SET, "Attribute values").map_err(bad)?;
        a.finish("Attribute").map_err(bad)?;
        if oid != OID_FQAN_ATTRIBUTE {
            continue;
        }
        if found {
            return Err(bad("the FQAN attribute appears twice".into()));
        }
        found = true;
        let mut set = Reader::new(set.content);
        while !set.is_empty() {
            let syntax = set.expect(tag::SEQUENCE, "IetfAttrSyntax").map_err(bad)?;
            let mut s = Reader::new(syntax.content);
            if let Some(pa) = s.optional(tag::CTX0, "policyAuthority").map_err(bad)? {
                let mut names = Reader::new(pa.content);
                while !names.is_empty() {
                    let gn = names
                        .read()
                        .map_err(|e| bad(format!("policyAuthority: {e}")))?;
                    if gn.tag == tag::CTX6_PRIM && authority.is_none() {
                        authority = Some(String::from_utf8_lossy(gn.content).into_owned());
                    }
                }
            }
            let list = s
                .expect(tag::SEQUENCE, "IetfAttrSyntax values")
                .map_err(bad)?;
            s.finish("IetfAttrSyntax").map_err(bad)?;
            let mut list = Reader::new(list.content);
            while !list.is_empty() {
                let value = list.read().map_err(|e| bad(format!("FQAN value: {e}")))?;
                if value.tag != tag::OCTET_STRING && value.tag != tag::UTF8_STRING {
                    return Err(bad(format!(
                        "FQAN value with unexpected tag {:#04x} (expected an OCTET STRING)",
                        value.tag
                    )));
                }
                *fqan_count += 1;
                if *fqan_count > MAX_FQANS {
                    return Err(ProxyError::TooManyFqans { max: MAX_FQANS });
                }
                values.push(value.content);
            }
        }
    }
    if !found {
        return Err(bad(format!("no FQAN attribute ({OID_FQAN_ATTRIBUTE})")));
    }
    if values.is_empty() {
        return Err(bad("the FQAN attribute holds no FQAN".into()));
    }
    Ok((authority, values))
}

/// Checks the AC extensions; returns the certificate chain extension's value, if present.
fn extensions(content: &[u8]) -> Result<Option<&[u8]>, String> {
    let mut r = Reader::new(content);
    let mut certs = None;
    while !r.is_empty() {
        let ext = r.expect(tag::SEQUENCE, "Extension")?;
        let mut e = Reader::new(ext.content);
        let oid = der::oid_string(e.expect(tag::OID, "extnID")?.content)?;
        let critical = match e.optional(tag::BOOLEAN, "critical")? {
            Some(b) => b.content != [0],
            None => false,
        };
        let value = e.expect(tag::OCTET_STRING, "extnValue")?;
        e.finish("Extension")?;
        match oid.as_str() {
            OID_AC_CERTS => certs = Some(value.content),
            OID_AC_TAGS | OID_NO_REV_AVAIL | OID_AUTHORITY_KEY_ID => {}
            OID_TARGETS if critical => {
                return Err(
                    "the AC is restricted to targets (critical targetInformation), which is not \
                     supported"
                        .into(),
                )
            }
            other if critical => {
                return Err(format!("unsupported critical extension {other}"));
            }
            _ => {}
        }
    }
    Ok(certs)
}

fn verify_ac(
    ac: &Ac<'_>,
    eec: &X509Certificate<'_>,
    trust: &TrustStore,
    now: i64,
) -> Result<Vec<String>, ProxyError> {
    // The holder must be the user certificate: its serial number, and its issuer's name (or,
    // as written by the VOMS Java libraries and accepted by the VOMS C library, its subject).
    let eec_issuer = name::key(eec.issuer());
    let eec_subject = name::key(eec.subject());
    let serial_ok = ac
        .holder_serial
        .is_some_and(|s| der::strip_leading_zeros(s) == der::strip_leading_zeros(eec.raw_serial()));
    let issuer_ok = ac.holder_issuers.iter().any(|raw| {
        X509Name::from_der(raw).is_ok_and(|(rest, n)| {
            let key = name::key(&n);
            rest.is_empty() && (key == eec_issuer || key == eec_subject)
        })
    });
    if !(serial_ok && issuer_ok) {
        return Err(bad(format!(
            "its holder is not the user certificate (serial {}, issued by {})",
            eec.raw_serial_as_string(),
            name::display(eec.issuer())
        )));
    }

    let vo = ac_vo(ac)?;
    verify_trust(ac, &vo, trust, now)?;

    let mut fqans = Vec::with_capacity(ac.values.len());
    for raw in &ac.values {
        let text = std::str::from_utf8(raw).map_err(|_| ProxyError::BadFqan {
            fqan: format!("\"{}\"", name::escape(&String::from_utf8_lossy(raw))),
            reason: "not UTF-8".into(),
        })?;
        let fqan = normalize_fqan(text).map_err(|reason| ProxyError::BadFqan {
            fqan: format!("\"{}\"", name::escape(text)),
            reason,
        })?;
        let group_vo = fqan.split('/').nth(1).unwrap_or_default();
        if group_vo != vo {
            return Err(ProxyError::BadFqan {
                fqan: format!("\"{}\"", name::escape(text)),
                reason: format!("does not belong to VO \"{vo}\" of its attribute certificate"),
            });
        }
        fqans.push(fqan);
    }

    if now < ac.not_before {
        return Err(ProxyError::AcNotYetValid {
            vo,
            not_before: system_time(ac.not_before),
        });
    }
    if now > ac.not_after {
        return Err(ProxyError::AcExpired {
            vo,
            not_after: system_time(ac.not_after),
        });
    }
    Ok(fqans)
}

/// The AC's VO: from the policy authority (`<vo>://<host>:<port>`), else from the first FQAN.
fn ac_vo(ac: &Ac<'_>) -> Result<String, ProxyError> {
    let vo = match &ac.policy_authority {
        Some(pa) => pa
            .split_once("://")
            .map(|(vo, _)| vo.to_owned())
            .ok_or_else(|| {
                bad(format!(
                    "policy authority \"{}\" is not <vo>://<host>:<port>",
                    name::escape(pa)
                ))
            })?,
        None => {
            let first = ac.values.first().copied().unwrap_or_default();
            let first = String::from_utf8_lossy(first);
            first.split('/').nth(1).unwrap_or_default().to_owned()
        }
    };
    if !valid_name(&vo) {
        return Err(bad(format!(
            "VO name \"{}\" is not valid (1 to {MAX_NAME_LEN} letters, digits, '.', '_', '-', not \
             starting with '.' or '-')",
            name::escape(&vo)
        )));
    }
    Ok(vo)
}

/// Verifies the AC signature against the vomsdir entries of `vo`.
fn verify_trust(ac: &Ac<'_>, vo: &str, trust: &TrustStore, now: i64) -> Result<(), ProxyError> {
    let issuer = ac
        .issuer_names
        .iter()
        .find_map(|raw| match X509Name::from_der(raw) {
            Ok(([], n)) => Some(n),
            _ => None,
        })
        .ok_or_else(|| bad("the issuer has no directory name".into()))?;
    let issuer_key = name::key(&issuer);
    let untrusted = |reason: String| ProxyError::Untrusted {
        subject: format!("VOMS attribute certificate of VO \"{vo}\""),
        issuer: name::display(&issuer),
        reason,
    };
    if ac.inner_alg != ac.outer_alg {
        return Err(bad(
            "the signature algorithm differs inside and outside the signed part".into(),
        ));
    }
    let alg = match AlgorithmIdentifier::from_der(ac.outer_alg) {
        Ok(([], alg)) => alg,
        _ => return Err(bad("malformed signature algorithm".into())),
    };
    let (&unused, bits) = ac
        .signature
        .split_first()
        .ok_or_else(|| bad("empty signature".into()))?;
    let signature = BitString::new(unused, bits);

    let Some(vo_trust) = trust.voms.get(vo) else {
        return Err(untrusted(format!(
            "the vomsdir has no VOMS server certificate or .lsc file for VO \"{vo}\""
        )));
    };
    let mut reasons = Vec::new();
    for stored in vo_trust
        .certs
        .iter()
        .filter(|c| c.subject_key == issuer_key)
    {
        let Some(server) = stored.parse() else {
            continue;
        };
        if let Err(e) = chain::check_signature(server.public_key(), &alg, &signature, ac.info) {
            reasons.push(format!(
                "{e} (checked with the VOMS server certificate of that name in the vomsdir)"
            ));
            continue;
        }
        match chain::check_validity(&server, now) {
            Ok(()) => return Ok(()),
            Err(e) => reasons.push(format!("VOMS server certificate: {e}")),
        }
    }
    if !vo_trust.lsc.is_empty() {
        match verify_lsc(ac, &issuer_key, &alg, &signature, &vo_trust.lsc, trust, now) {
            Ok(()) => return Ok(()),
            Err(e) => reasons.push(e),
        }
    }
    if reasons.is_empty() {
        reasons.push(format!(
            "no VOMS server certificate with that subject in the vomsdir for VO \"{vo}\""
        ));
    }
    Err(untrusted(reasons.join("; ")))
}

/// Trust through `.lsc` files: the AC carries the VOMS server's certificate chain; its DNs must
/// be those of an `.lsc` chain of the VO, it must verify up to a CA of the trust store, and the
/// server certificate must verify the AC.
fn verify_lsc(
    ac: &Ac<'_>,
    issuer_key: &str,
    alg: &AlgorithmIdentifier<'_>,
    signature: &BitString<'_>,
    chains: &[Vec<String>],
    trust: &TrustStore,
    now: i64,
) -> Result<(), String> {
    let Some(value) = ac.certs else {
        return Err("the AC carries no certificate chain to check against the .lsc files".into());
    };
    let mut outer = der::single(value, tag::SEQUENCE, "AC certificate chain")?;
    let list = outer.expect(tag::SEQUENCE, "AC certificate chain")?;
    outer.finish("AC certificate chain")?;
    let mut r = Reader::new(list.content);
    let mut certs = Vec::new();
    while !r.is_empty() {
        if certs.len() == MAX_AC_CERTS {
            return Err(format!(
                "the AC certificate chain has more than {MAX_AC_CERTS} certificates"
            ));
        }
        let raw = r.expect(tag::SEQUENCE, "AC certificate")?.raw;
        match X509Certificate::from_der(raw) {
            Ok(([], cert)) => certs.push(cert),
            Ok(_) => return Err("AC certificate: trailing data".into()),
            Err(e) => return Err(format!("AC certificate {}: {e}", certs.len() + 1)),
        }
    }
    let Some(server) = certs.first() else {
        return Err("the AC certificate chain is empty".into());
    };
    if name::key(server.subject()) != issuer_key {
        return Err(format!(
            "the first certificate of the AC's chain, {}, is not the AC issuer",
            name::display(server.subject())
        ));
    }
    if !chains.iter().any(|lsc| lsc_matches(lsc, &certs)) {
        return Err(format!(
            "the AC's certificate chain ({} issued by {}) matches no .lsc file of the VO",
            name::display(server.subject()),
            name::display(server.issuer())
        ));
    }
    for (i, cert) in certs.iter().enumerate() {
        match certs.get(i + 1) {
            Some(next) => {
                if name::key(cert.issuer()) != name::key(next.subject()) {
                    return Err(format!(
                        "in the AC's certificate chain, {} is not issued by the next certificate",
                        name::display(cert.subject())
                    ));
                }
                chain::verify_signature(cert, next.public_key()).map_err(|e| {
                    format!("AC certificate {}: {e}", name::display(cert.subject()))
                })?;
            }
            None => chain::verify_by_anchor(cert, trust, now).map_err(|e| e.to_string())?,
        }
        chain::check_validity(cert, now).map_err(|e| e.to_string())?;
    }
    chain::check_signature(server.public_key(), alg, signature, ac.info)
        .map_err(|e| format!("{e} (checked with the VOMS server certificate in the AC)"))
}

/// Whether the DNs of an `.lsc` chain describe `certs`: line `i` is the subject of certificate
/// `i` and line `i + 1` its issuer; the chain may stop at the CA or include it.
fn lsc_matches(lsc: &[String], certs: &[X509Certificate<'_>]) -> bool {
    if lsc.len() != certs.len() + 1 && lsc.len() != certs.len() {
        return false;
    }
    certs.iter().enumerate().all(|(i, cert)| {
        lsc.get(i) == Some(&name::slash_form(cert.subject()))
            && lsc
                .get(i + 1)
                .is_none_or(|line| *line == name::slash_form(cert.issuer()))
    })
}

/// A valid VO, group, role or capability name: 1 to 64 bytes of ASCII letters, digits, `.`,
/// `_` and `-`, not starting with `.` or `-` (the rules of dms-policies).
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !s.starts_with(['.', '-'])
}

/// The canonical form of an FQAN as VOMS tools show it: `/Role=NULL` and `/Capability=NULL`
/// are dropped. `/atlas/Role=production/Capability=NULL` becomes `/atlas/Role=production`.
pub(crate) fn normalize_fqan(raw: &str) -> Result<String, String> {
    if raw.len() > MAX_FQAN_LEN {
        return Err(format!(
            "too long ({} bytes, at most {MAX_FQAN_LEN})",
            raw.len()
        ));
    }
    if let Some(c) = raw.chars().find(|c| c.is_control() || *c == '"') {
        return Err(format!("character {c:?} is not allowed"));
    }
    let Some(rest) = raw.strip_prefix('/') else {
        return Err("must start with '/'".into());
    };
    let mut groups: Vec<&str> = Vec::new();
    let mut role: Option<Option<&str>> = None;
    let mut capability: Option<Option<&str>> = None;
    for part in rest.split('/') {
        if capability.is_some() {
            return Err("Capability must be the last component".into());
        }
        let value = |v: &str| -> Result<(), String> {
            if v == "NULL" || valid_name(v) {
                Ok(())
            } else {
                Err(format!(
                    "invalid value \"{}\" in \"{}\"",
                    name::escape(v),
                    name::escape(part)
                ))
            }
        };
        if let Some(v) = part.strip_prefix("Role=") {
            if groups.is_empty() || role.is_some() {
                return Err("Role must follow the groups, once".into());
            }
            value(v)?;
            role = Some((v != "NULL").then_some(v));
        } else if let Some(v) = part.strip_prefix("Capability=") {
            if groups.is_empty() {
                return Err("Capability must follow the groups".into());
            }
            value(v)?;
            capability = Some((v != "NULL").then_some(v));
        } else if role.is_some() {
            return Err("groups must come before Role".into());
        } else if valid_name(part) {
            groups.push(part);
        } else {
            return Err(format!(
                "invalid group name \"{}\" (1 to {MAX_NAME_LEN} letters, digits, '.', '_', '-', \
                 not starting with '.' or '-')",
                name::escape(part)
            ));
        }
    }
    let mut out = String::new();
    for g in &groups {
        out.push('/');
        out.push_str(g);
    }
    if let Some(Some(r)) = role {
        out.push_str("/Role=");
        out.push_str(r);
    }
    if let Some(Some(c)) = capability {
        out.push_str("/Capability=");
        out.push_str(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fqans_are_normalised() {
        for (raw, want) in [
            (
                "/atlas/Role=production/Capability=NULL",
                "/atlas/Role=production",
            ),
            ("/atlas/higgs/Role=NULL/Capability=NULL", "/atlas/higgs"),
            ("/atlas/Role=NULL", "/atlas"),
            ("/atlas", "/atlas"),
            (
                "/vo.example.org/g_1/Role=VO-Admin",
                "/vo.example.org/g_1/Role=VO-Admin",
            ),
            ("/cms/Capability=x", "/cms/Capability=x"),
        ] {
            assert_eq!(normalize_fqan(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn bad_fqans() {
        for raw in [
            "",
            "atlas",
            "/",
            "//atlas",
            "/atlas/",
            "/atlas/../x",
            "/.hidden",
            "/-x",
            "/atlas/Role=a/Role=b",
            "/atlas/Role=a/higgs",
            "/Role=a",
            "/atlas/Capability=NULL/Role=x",
            "/atlas/Role=",
            "/atl\"as",
            "/atlas\n",
            "/atlas\0",
            "/atl as",
            "/atlas/Role=a b",
        ] {
            assert!(normalize_fqan(raw).is_err(), "{raw:?} accepted");
        }
        assert!(normalize_fqan(&format!("/{}", "a".repeat(300)))
            .unwrap_err()
            .contains("too long"));
    }

    #[test]
    fn names() {
        assert!(valid_name("atlas"));
        assert!(valid_name("vo.example.org"));
        assert!(!valid_name(".."));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(65)));
    }
}
