//! Reading a grid user's X.509 proxy certificate file: who the user is and what VOMS says.
//!
//! A proxy file (as written by `voms-proxy-init` or `grid-proxy-init`, e.g. `/tmp/x509up_u1000`)
//! holds, in PEM, the proxy certificate, its private key, and the chain: possibly more proxies,
//! then the user's end-entity certificate (EEC). [`read_proxy`] verifies the chain against a
//! [`TrustStore`] and returns a [`ProxyIdentity`]:
//!
//! - `dn`: the EEC's subject in the OpenSSL "slash" form of grid-mapfiles,
//!   `/DC=ch/DC=cern/OU=Organic Units/OU=Users/CN=jdoe/CN=123456/CN=John Doe`;
//! - `fqans`: the VOMS FQANs of the attribute certificate(s) in the proxy, as VOMS tools show
//!   them (`/atlas/Role=production`, without `/Role=NULL` and `/Capability=NULL`), the primary
//!   one first, and `vo`, the primary FQAN's VO;
//! - `not_after`: when the identity stops being valid (the earliest end of validity of the
//!   proxies, the EEC and the attribute certificates).
//!
//! # What is verified
//!
//! - Every certificate up to the EEC is valid at `now`.
//! - Each proxy (RFC 3820 proxyCertInfo, the GT3 draft extension, or a legacy `CN=proxy` /
//!   `CN=limited proxy` certificate) is issued and signed by the next certificate, its subject is
//!   that certificate's subject plus one CN, it is not a CA, its issuer's keyUsage (if any)
//!   allows digitalSignature, RFC 3820 path length constraints hold, and it is not an
//!   independent proxy.
//! - The EEC is signed by a CA certificate of the trust store that is valid at `now` (every
//!   certificate of the CA directory is a trust anchor), and the CA directory accepts it
//!   (see [`TrustStore::load`]):
//!   - when the CA has a CRL (`<hash>.r<n>`, signed by the CA), the EEC's serial number is not
//!     in it ([`ProxyError::Revoked`]) and the CRL's `nextUpdate` has not passed
//!     ([`ProxyError::CrlExpired`]); a CA without CRL file is accepted without revocation check;
//!   - when a signing policy (`<hash>.signing_policy`) applies to the CA, it allows the EEC's
//!     subject ([`ProxyError::SigningPolicy`]); a CA without signing policy may sign any
//!     subject;
//!   - a CA with an unusable CRL or signing policy file is refused ([`ProxyError::BadCrl`],
//!     [`ProxyError::BadSigningPolicy`]), and the file is listed by [`TrustStore::skipped`].
//!
//!   `.namespaces` files are not read. Certificates after the EEC in the file are ignored.
//!   Proxies are not checked against CRLs (their issuer is the user, who publishes none).
//! - The VOMS attribute certificates (extension 1.3.6.1.4.1.8005.100.100.5 of the newest proxy
//!   that has one) belong to the EEC (holder issuer and serial), are valid at `now`, and are
//!   signed by a VOMS server the vomsdir trusts for their VO: a server certificate in
//!   `<vomsdir>/<vo>/*.pem` (trusted as it is, without CRL or signing policy check), or the
//!   chain carried in the AC matching an `<vomsdir>/<vo>/*.lsc` file and verifying up to a CA
//!   of the trust store, which accepts the chain's last certificate as it accepts an EEC (CRL
//!   and signing policy). Every FQAN must belong to its AC's VO.
//!
//! The private key in the file is never decoded, kept or shown. No input makes this crate
//! panic; malformed input gives an error naming what is wrong.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod chain;
mod crl;
mod der;
mod error;
mod name;
mod pem;
mod policy;
mod time;
mod trust;
mod voms;

use std::time::SystemTime;

use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

pub use error::ProxyError;
pub use trust::{SkippedFile, TrustStore};

/// Most certificates accepted in a proxy file (proxies, EEC and any appended CA certificates).
pub const MAX_CERTIFICATES: usize = 10;

/// Most VOMS FQANs accepted in a proxy.
pub const MAX_FQANS: usize = voms::MAX_FQANS;

/// The verified identity of a proxy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyIdentity {
    /// The user's (end-entity certificate's) subject DN, e.g. `/DC=ch/DC=cern/CN=jdoe`. It never
    /// contains `"`, newlines, NUL or other control characters.
    pub dn: String,
    /// The VOMS FQANs, primary first, normalised (`/atlas/Role=production`); empty without
    /// VOMS extension.
    pub fqans: Vec<String>,
    /// The end of validity: the earliest `notAfter` of the proxies, the user certificate and
    /// the VOMS attribute certificates.
    pub not_after: SystemTime,
    /// The VO of the primary FQAN (its first path component); `None` without VOMS extension.
    pub vo: Option<String>,
}

/// Reads and verifies a proxy file (PEM: proxy certificate, its private key, then the chain).
///
/// `now` is the time at which the certificates must be valid (normally `SystemTime::now()`).
pub fn read_proxy(
    pem: &[u8],
    trust: &TrustStore,
    now: SystemTime,
) -> Result<ProxyIdentity, ProxyError> {
    let ders = pem::certificates(pem, MAX_CERTIFICATES)?;
    let mut certs = Vec::with_capacity(ders.len());
    for (i, der) in ders.iter().enumerate() {
        match X509Certificate::from_der(der) {
            Ok(([], cert)) => certs.push(cert),
            Ok((rest, _)) => {
                return Err(ProxyError::BadCertificate {
                    index: i + 1,
                    reason: format!(
                        "{} bytes of trailing data after the certificate",
                        rest.len()
                    ),
                })
            }
            Err(e) => {
                return Err(ProxyError::BadCertificate {
                    index: i + 1,
                    reason: e.to_string(),
                })
            }
        }
    }
    let now_secs = time::unix_seconds(now);
    let eec_index = chain::verify(&certs, trust, now_secs)?;
    let (proxies, rest) = certs.split_at(eec_index);
    let Some(eec) = rest.first() else {
        return Err(ProxyError::NoCertificate);
    };
    let dn = name::identity(eec.subject()).map_err(|reason| ProxyError::BadDn {
        dn: name::display(eec.subject()),
        reason,
    })?;

    let mut not_after = proxies
        .iter()
        .chain(std::iter::once(eec))
        .map(|c| c.validity().not_after.timestamp())
        .min()
        .unwrap_or(i64::MIN);

    // The newest proxy carrying ACs counts, as in the VOMS libraries.
    let mut attributes = voms::Attributes::default();
    for proxy in proxies {
        if let Some(ext) = chain::extension(proxy, voms::OID_VOMS_EXTENSION)? {
            attributes = voms::verify(ext.value, eec, trust, now_secs)?;
            break;
        }
    }
    if let Some(ac_end) = attributes.not_after {
        not_after = not_after.min(ac_end);
    }
    let vo = attributes
        .fqans
        .first()
        .and_then(|f| f.split('/').nth(1))
        .map(str::to_owned);
    Ok(ProxyIdentity {
        dn,
        fqans: attributes.fqans,
        not_after: time::system_time(not_after),
        vo,
    })
}
