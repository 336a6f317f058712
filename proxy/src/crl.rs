//! Certificate revocation lists (`<hash>.r<n>` in the CA directory, as fetch-crl and
//! `openssl rehash` name them): parsing, finding the CA that signed one, and what it revokes.

use std::collections::HashMap;
use std::path::PathBuf;

use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::chain;
use crate::der;
use crate::name;
use crate::trust::Anchor;

/// Largest CRL file read (CRLs of big CAs reach a few MB).
pub(crate) const MAX_CRL_FILE_LEN: u64 = 32 * 1024 * 1024;
/// Most revoked certificates kept from one CRL; a CRL with more is not used (and its CA
/// refused).
pub(crate) const MAX_REVOKED: usize = 1 << 20;
/// Most CRLs in one PEM file.
pub(crate) const MAX_CRLS_PER_FILE: usize = 16;

const OID_CRL_NUMBER: &str = "2.5.29.20";
const OID_DELTA_CRL_INDICATOR: &str = "2.5.29.27";
const OID_ISSUING_DISTRIBUTION_POINT: &str = "2.5.29.28";
const OID_AUTHORITY_KEY_ID: &str = "2.5.29.35";
const OID_FRESHEST_CRL: &str = "2.5.29.46";
const OID_REASON_CODE: &str = "2.5.29.21";
const OID_INVALIDITY_DATE: &str = "2.5.29.24";
const OID_CERTIFICATE_ISSUER: &str = "2.5.29.29";

/// A CRL in use.
#[derive(Debug, Clone)]
pub(crate) struct Crl {
    /// The file it was read from.
    pub path: PathBuf,
    /// `thisUpdate`, Unix seconds.
    pub this_update: i64,
    /// `nextUpdate`, Unix seconds (`None`: the CRL does not say; it never expires).
    pub next_update: Option<i64>,
    /// The revoked serial numbers (INTEGER contents without leading zero bytes) and when they
    /// were revoked.
    pub revoked: HashMap<Vec<u8>, i64>,
}

impl Crl {
    /// When the certificate with serial number `serial` (INTEGER content) was revoked, if it is.
    pub fn revoked_at(&self, serial: &[u8]) -> Option<i64> {
        self.revoked.get(der::strip_leading_zeros(serial)).copied()
    }
}

/// What a CRL means for the trust store.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A CRL of the CAs `cas` (indices into the anchors), whose keys verify it.
    Usable { crl: Crl, cas: Vec<usize> },
    /// The CRL cannot be used: the CAs `cas` must be refused (fail closed). `None`: the CRL
    /// does not even say its issuer; the caller refuses the CAs of the file's hash.
    Unusable {
        cas: Option<Vec<usize>>,
        reason: String,
    },
    /// The CRL's issuer is no CA of the store (e.g. a CRL left behind by a removed CA).
    UnknownIssuer { issuer: String },
}

/// Parses the DER CRL `der` read from `path` and finds the CAs among `anchors` it belongs to:
/// those whose subject is its issuer and whose key verifies its signature.
pub(crate) fn load(der: &[u8], path: PathBuf, anchors: &[Anchor]) -> Outcome {
    let unparsable = |reason: String| Outcome::Unusable { cas: None, reason };
    let crl = match CertificateRevocationList::from_der(der) {
        Ok(([], crl)) => crl,
        Ok((rest, _)) => {
            return unparsable(format!(
                "{} bytes of trailing data after the CRL",
                rest.len()
            ))
        }
        Err(e) => return unparsable(format!("not a valid CRL: {e}")),
    };
    let issuer_key = name::key(crl.issuer());
    let same_name: Vec<usize> = anchors
        .iter()
        .enumerate()
        .filter(|(_, a)| a.cert.subject_key == issuer_key)
        .map(|(i, _)| i)
        .collect();
    if same_name.is_empty() {
        return Outcome::UnknownIssuer {
            issuer: name::display(crl.issuer()),
        };
    }
    let verified = match verify(&crl, &same_name, anchors) {
        Ok(verified) => verified,
        Err(reason) => {
            return Outcome::Unusable {
                cas: Some(same_name),
                reason,
            }
        }
    };
    match contents(&crl, path) {
        Ok(crl) => Outcome::Usable { crl, cas: verified },
        Err(reason) => Outcome::Unusable {
            cas: Some(verified),
            reason,
        },
    }
}

/// The CAs among `candidates` whose key verifies the CRL; the error says why none does.
fn verify(
    crl: &CertificateRevocationList<'_>,
    candidates: &[usize],
    anchors: &[Anchor],
) -> Result<Vec<usize>, String> {
    if crl.signature_algorithm != crl.tbs_cert_list.signature {
        return Err("the signature algorithm differs inside and outside the signed part".into());
    }
    let mut verified = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    for &i in candidates {
        let Some(ca) = anchors.get(i).and_then(|a| a.cert.parse()) else {
            continue;
        };
        let result = match ca.key_usage() {
            Ok(Some(ku)) if !ku.value.crl_sign() => {
                Err("the CA certificate's keyUsage lacks cRLSign".to_owned())
            }
            Err(e) => Err(format!("the CA certificate's keyUsage: {e}")),
            Ok(_) => chain::check_signature(
                ca.public_key(),
                &crl.signature_algorithm,
                &crl.signature_value,
                crl.tbs_cert_list.as_ref(),
            ),
        };
        match result {
            Ok(()) => verified.push(i),
            Err(e) if !reasons.contains(&e) => reasons.push(e),
            Err(_) => {}
        }
    }
    if verified.is_empty() {
        return Err(format!(
            "its signature does not verify with the CA certificate of that name ({})",
            reasons.join("; ")
        ));
    }
    Ok(verified)
}

/// The dates and revoked serials of a verified CRL; the error says why it cannot be used.
fn contents(crl: &CertificateRevocationList<'_>, path: PathBuf) -> Result<Crl, String> {
    for ext in crl.extensions() {
        let oid = ext.oid.to_id_string();
        match oid.as_str() {
            OID_DELTA_CRL_INDICATOR => {
                return Err("it is a delta CRL (deltaCRLIndicator), which is not supported".into())
            }
            OID_ISSUING_DISTRIBUTION_POINT => match ext.parsed_extension() {
                ParsedExtension::IssuingDistributionPoint(idp)
                    if idp.only_contains_ca_certs
                        || idp.only_contains_attribute_certs
                        || idp.only_some_reasons.is_some()
                        || idp.indirect_crl =>
                {
                    return Err(
                        "its issuingDistributionPoint makes it a partial or indirect \
                                CRL, which is not supported"
                            .into(),
                    );
                }
                ParsedExtension::IssuingDistributionPoint(_) => {}
                _ if ext.critical => {
                    return Err("malformed issuingDistributionPoint extension".into())
                }
                _ => {}
            },
            OID_CRL_NUMBER | OID_AUTHORITY_KEY_ID | OID_FRESHEST_CRL => {}
            other if ext.critical => {
                return Err(format!("unsupported critical extension {other}"));
            }
            _ => {}
        }
    }
    let entries = &crl.tbs_cert_list.revoked_certificates;
    if entries.len() > MAX_REVOKED {
        return Err(format!(
            "it lists {} revoked certificates, more than the limit of {MAX_REVOKED}",
            entries.len()
        ));
    }
    let mut revoked = HashMap::with_capacity(entries.len());
    for entry in entries {
        for ext in entry.extensions() {
            let oid = ext.oid.to_id_string();
            match oid.as_str() {
                OID_CERTIFICATE_ISSUER => {
                    return Err(
                        "it is an indirect CRL (certificateIssuer entries), which is not supported"
                            .into(),
                    )
                }
                OID_REASON_CODE | OID_INVALIDITY_DATE => {}
                other if ext.critical => {
                    return Err(format!(
                        "unsupported critical extension {other} in the entry of serial {}",
                        entry.raw_serial_as_string()
                    ));
                }
                _ => {}
            }
        }
        revoked
            .entry(der::strip_leading_zeros(entry.raw_serial()).to_vec())
            .or_insert_with(|| entry.revocation_date.timestamp());
    }
    Ok(Crl {
        path,
        this_update: crl.last_update().timestamp(),
        next_update: crl.next_update().map(|t| t.timestamp()),
        revoked,
    })
}
