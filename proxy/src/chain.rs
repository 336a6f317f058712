//! Verifying the certificate chain of a proxy file: proxies (RFC 3820 or legacy Globus) down to
//! the user's end-entity certificate (EEC), which must be signed by a CA of the trust store.

use x509_parser::asn1_rs::BitString;
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};

use crate::der::{self, tag, Reader};
use crate::error::ProxyError;
use crate::name;
use crate::time::system_time;
use crate::trust::TrustStore;

/// proxyCertInfo of RFC 3820.
const OID_PROXY_CERT_INFO: &str = "1.3.6.1.5.5.7.1.14";
/// proxyCertInfo of the pre-RFC drafts (Globus Toolkit 3 proxies).
const OID_PROXY_CERT_INFO_DRAFT: &str = "1.3.6.1.4.1.3536.1.222";
const OID_PPL_INHERIT_ALL: &str = "1.3.6.1.5.5.7.21.1";
const OID_PPL_INDEPENDENT: &str = "1.3.6.1.5.5.7.21.2";
const OID_PPL_LIMITED: &str = "1.3.6.1.4.1.3536.1.1.1.9";

/// How a certificate is recognised as a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyKind {
    /// RFC 3820 proxyCertInfo, with its path length constraint.
    Rfc { path_len: Option<u64> },
    /// Draft (GT3) proxyCertInfo.
    Draft,
    /// Legacy (GT2) proxy: no extension, subject ends with `CN=proxy` or `CN=limited proxy`.
    Legacy,
}

/// Checks the chain and returns the index of the end-entity certificate: `certs[..index]` are
/// proxies, each signed by the next certificate; certificates after the EEC (CA certificates
/// some tools append) are ignored, trust comes from the trust store only.
pub(crate) fn verify(
    certs: &[X509Certificate<'_>],
    trust: &TrustStore,
    now: i64,
) -> Result<usize, ProxyError> {
    let mut index = 0;
    loop {
        let Some(cert) = certs.get(index) else {
            // Unreachable: the loop returns or breaks before running past the end.
            return Err(ProxyError::NoCertificate);
        };
        let Some(issuer) = certs.get(index + 1) else {
            if index > 0 && !has_proxy_extension(cert)? {
                // The last certificate is the EEC.
                break;
            }
            let reason = if index == 0 {
                "the file holds a single certificate; a proxy file holds the proxy followed by \
                 the user certificate"
            } else {
                "the chain ends with a proxy certificate; the user certificate is missing"
            };
            return Err(ProxyError::BadProxy {
                subject: name::display(cert.subject()),
                reason: reason.into(),
            });
        };
        match proxy_kind(cert, issuer)? {
            Some(kind) => {
                verify_proxy(cert, issuer, kind, index, now)?;
                index += 1;
            }
            None if index == 0 => {
                return Err(ProxyError::BadProxy {
                    subject: name::display(cert.subject()),
                    reason: "the first certificate is not a proxy certificate (no proxyCertInfo \
                             extension and not a legacy \"CN=proxy\" certificate of the next one)"
                        .into(),
                });
            }
            None => break,
        }
    }
    let Some(eec) = certs.get(index) else {
        return Err(ProxyError::NoCertificate);
    };
    verify_by_anchor(eec, trust, now)?;
    check_validity(eec, now)?;
    Ok(index)
}

/// Finds an extension that may appear at most once.
pub(crate) fn extension<'c, 'a>(
    cert: &'c X509Certificate<'a>,
    oid: &str,
) -> Result<Option<&'c x509_parser::extensions::X509Extension<'a>>, ProxyError> {
    let mut found = None;
    for ext in cert.extensions() {
        if ext.oid.to_id_string() == oid {
            if found.is_some() {
                return Err(ProxyError::BadProxy {
                    subject: name::display(cert.subject()),
                    reason: format!("extension {oid} appears twice"),
                });
            }
            found = Some(ext);
        }
    }
    Ok(found)
}

fn has_proxy_extension(cert: &X509Certificate<'_>) -> Result<bool, ProxyError> {
    Ok(extension(cert, OID_PROXY_CERT_INFO)?.is_some()
        || extension(cert, OID_PROXY_CERT_INFO_DRAFT)?.is_some())
}

fn proxy_kind(
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
) -> Result<Option<ProxyKind>, ProxyError> {
    let bad = |reason: String| ProxyError::BadProxy {
        subject: name::display(cert.subject()),
        reason,
    };
    if let Some(ext) = extension(cert, OID_PROXY_CERT_INFO)? {
        return parse_proxy_cert_info(ext.value)
            .map(|path_len| Some(ProxyKind::Rfc { path_len }))
            .map_err(|e| bad(format!("proxyCertInfo: {e}")));
    }
    if extension(cert, OID_PROXY_CERT_INFO_DRAFT)?.is_some() {
        return Ok(Some(ProxyKind::Draft));
    }
    let legacy = matches!(
        name::proxy_cn(cert.subject(), issuer.subject()).as_deref(),
        Some("proxy" | "limited proxy")
    ) && name::key(cert.issuer()) == name::key(issuer.subject());
    Ok(legacy.then_some(ProxyKind::Legacy))
}

/// Parses RFC 3820 ProxyCertInfo and returns its path length constraint.
///
/// ```text
/// ProxyCertInfo ::= SEQUENCE { pCPathLenConstraint INTEGER (0..MAX) OPTIONAL,
///                              proxyPolicy ProxyPolicy }
/// ProxyPolicy ::= SEQUENCE { policyLanguage OBJECT IDENTIFIER, policy OCTET STRING OPTIONAL }
/// ```
fn parse_proxy_cert_info(value: &[u8]) -> Result<Option<u64>, String> {
    let mut r = der::single(value, tag::SEQUENCE, "ProxyCertInfo")?;
    let path_len = match r.optional(tag::INTEGER, "pCPathLenConstraint")? {
        Some(int) => Some(der::uint(int.content).map_err(|e| format!("pCPathLenConstraint: {e}"))?),
        None => None,
    };
    let policy = r.expect(tag::SEQUENCE, "proxyPolicy")?;
    r.finish("ProxyCertInfo")?;
    let mut p = Reader::new(policy.content);
    let lang = der::oid_string(p.expect(tag::OID, "policyLanguage")?.content)?;
    p.optional(tag::OCTET_STRING, "policy")?;
    p.finish("proxyPolicy")?;
    match lang.as_str() {
        OID_PPL_INHERIT_ALL | OID_PPL_LIMITED => Ok(path_len),
        OID_PPL_INDEPENDENT => Err(
            "independent proxies (policy language id-ppl-independent) carry no identity of \
             their issuer"
                .into(),
        ),
        other => Err(format!("unsupported proxy policy language {other}")),
    }
}

fn verify_proxy(
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
    kind: ProxyKind,
    index: usize,
    now: i64,
) -> Result<(), ProxyError> {
    let bad = |reason: String| ProxyError::BadProxy {
        subject: name::display(cert.subject()),
        reason,
    };
    if name::key(cert.issuer()) != name::key(issuer.subject()) {
        return Err(bad(format!(
            "its issuer {} is not the subject of the next certificate in the file, {}",
            name::display(cert.issuer()),
            name::display(issuer.subject())
        )));
    }
    if name::proxy_cn(cert.subject(), issuer.subject()).is_none() {
        return Err(bad(format!(
            "its subject must be its issuer's subject {} plus one CN",
            name::display(issuer.subject())
        )));
    }
    if issuer.is_ca() {
        return Err(bad(format!(
            "its issuer {} is a CA certificate; proxies are issued by end-entity or proxy \
             certificates (RFC 3820)",
            name::display(issuer.subject())
        )));
    }
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {
            return Err(bad("a proxy certificate must not be a CA".into()));
        }
        Ok(_) => {}
        Err(e) => return Err(bad(format!("basicConstraints: {e}"))),
    }
    match issuer.key_usage() {
        Ok(Some(ku)) if !ku.value.digital_signature() => {
            return Err(bad(format!(
                "its issuer {} may not sign proxies: its keyUsage lacks digitalSignature",
                name::display(issuer.subject())
            )));
        }
        Ok(_) => {}
        Err(e) => {
            return Err(ProxyError::BadProxy {
                subject: name::display(issuer.subject()),
                reason: format!("keyUsage: {e}"),
            })
        }
    }
    if let ProxyKind::Rfc {
        path_len: Some(max),
    } = kind
    {
        if u64::try_from(index).map_or(true, |n| n > max) {
            return Err(bad(format!(
                "its path length constraint allows {max} proxies below it, the file has {index}"
            )));
        }
    }
    verify_signature(cert, issuer.public_key()).map_err(|reason| ProxyError::Untrusted {
        subject: name::display(cert.subject()),
        issuer: name::display(cert.issuer()),
        reason,
    })?;
    check_validity(cert, now)
}

/// Verifies `cert`'s signature with `key`; the error says why it failed.
pub(crate) fn verify_signature(
    cert: &X509Certificate<'_>,
    key: &SubjectPublicKeyInfo<'_>,
) -> Result<(), String> {
    if cert.signature_algorithm != cert.tbs_certificate.signature {
        return Err("the signature algorithm differs inside and outside the signed part".into());
    }
    check_signature(
        key,
        &cert.signature_algorithm,
        &cert.signature_value,
        cert.tbs_certificate.as_ref(),
    )
}

/// Verifies a signature over `data` with `key`; the error says why it failed.
pub(crate) fn check_signature(
    key: &SubjectPublicKeyInfo<'_>,
    alg: &AlgorithmIdentifier<'_>,
    signature: &BitString<'_>,
    data: &[u8],
) -> Result<(), String> {
    const FORGED: &str =
        "the signature does not verify with the issuer's public key (forged or corrupted)";
    match x509_parser::verify::verify_signature(key, alg, signature, data) {
        Ok(()) => Ok(()),
        Err(X509Error::SignatureVerificationError) => Err(FORGED.into()),
        Err(X509Error::SignatureUnsupportedAlgorithm) => {
            let key_alg = key.algorithm.algorithm.to_id_string();
            let sig_alg = alg.algorithm.to_id_string();
            let family = |oid: &str| {
                if oid.starts_with("1.2.840.10045.") {
                    "ec"
                } else if oid.starts_with("1.2.840.113549.1.1.") {
                    "rsa"
                } else {
                    oid_family_other(oid)
                }
            };
            if family(&key_alg) != family(&sig_alg) {
                // E.g. an ECDSA signature checked with an RSA key: signed by another key.
                Err(FORGED.into())
            } else {
                Err(format!(
                    "unsupported signature algorithm {sig_alg} or key (RSA keys need at least \
                     2048 bits, except with SHA-1)"
                ))
            }
        }
        Err(other) => Err(format!("signature check failed: {other}")),
    }
}

fn oid_family_other(oid: &str) -> &'static str {
    match oid {
        // Ed25519 (key and signature algorithm share the OID).
        "1.3.101.112" => "ed25519",
        _ => "other",
    }
}

/// Checks that `now` is within the certificate's validity.
pub(crate) fn check_validity(cert: &X509Certificate<'_>, now: i64) -> Result<(), ProxyError> {
    let validity = cert.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if now < not_before {
        return Err(ProxyError::NotYetValid {
            subject: name::display(cert.subject()),
            not_before: system_time(not_before),
        });
    }
    if now > not_after {
        return Err(ProxyError::Expired {
            subject: name::display(cert.subject()),
            not_after: system_time(not_after),
        });
    }
    Ok(())
}

/// Verifies that `cert` is signed by a CA of the trust store that is valid at `now`, and that
/// the CA's CRLs and signing policy accept it ([`TrustStore::check_issued`]).
pub(crate) fn verify_by_anchor(
    cert: &X509Certificate<'_>,
    trust: &TrustStore,
    now: i64,
) -> Result<(), ProxyError> {
    let issuer_key = name::key(cert.issuer());
    let untrusted = |reason: String| ProxyError::Untrusted {
        subject: name::display(cert.subject()),
        issuer: name::display(cert.issuer()),
        reason,
    };
    let mut reason = None;
    let mut expired = None;
    for anchor in trust
        .cas
        .iter()
        .filter(|a| a.cert.subject_key == issuer_key)
    {
        let Some(ca) = anchor.cert.parse() else {
            continue;
        };
        match verify_signature(cert, ca.public_key()) {
            // The first valid CA whose key signed the certificate decides: its CRLs and
            // signing policy.
            Ok(()) => match check_validity(&ca, now) {
                Ok(()) => return trust.check_issued(anchor, &ca, cert, now),
                Err(e) => expired = Some(e),
            },
            Err(e) => reason = Some(e),
        }
    }
    if let Some(e) = expired {
        return Err(e);
    }
    Err(untrusted(reason.map_or_else(
        || "no CA certificate with that subject in the trust store".into(),
        |r| format!("{r}; checked against the trust store's CA of that name"),
    )))
}
