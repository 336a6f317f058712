//! The error type of this crate.

use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::time::rfc3339;

/// Why a proxy file was refused or a trust store could not be loaded.
///
/// Every message names what was wrong and where: the certificate (by its subject DN, escaped so
/// that hostile names cannot inject lines into logs), the VO, the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// Reading a trust store file or directory failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was done, e.g. "read directory".
        op: &'static str,
        /// The underlying error.
        source: io::Error,
    },

    /// The trust store directory holds no usable CA certificate.
    #[error("no CA certificate found in {}", path.display())]
    NoTrustAnchors {
        /// The CA directory.
        path: PathBuf,
    },

    /// The input is larger than any proxy file could be.
    #[error("proxy file is {len} bytes, more than the limit of {max} bytes")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// The input is not PEM, or a PEM block is malformed.
    #[error("not a valid PEM proxy file: {reason}")]
    NotPem {
        /// What is wrong.
        reason: String,
    },

    /// The PEM file holds no `CERTIFICATE` block.
    #[error("no certificate in the proxy file")]
    NoCertificate,

    /// The PEM file holds more certificates than a proxy chain may have.
    #[error("too many certificates in the proxy file: {count}, at most {max}")]
    TooManyCertificates {
        /// How many `CERTIFICATE` blocks the file has.
        count: usize,
        /// The limit.
        max: usize,
    },

    /// A certificate is not valid DER / X.509.
    #[error("certificate {index} of the proxy file is malformed: {reason}")]
    BadCertificate {
        /// Position in the file, 1-based.
        index: usize,
        /// What is wrong.
        reason: String,
    },

    /// The user's DN cannot be used as an identity (e.g. it contains a quote, a newline or NUL).
    #[error("subject DN {dn}: {reason}")]
    BadDn {
        /// The DN, with non-printable characters and quotes escaped as `\xHH`.
        dn: String,
        /// What is wrong.
        reason: String,
    },

    /// The chain is not a valid proxy chain (RFC 3820 or legacy Globus).
    #[error("{subject}: not a valid proxy certificate: {reason}")]
    BadProxy {
        /// Subject DN of the offending certificate (escaped).
        subject: String,
        /// What is wrong.
        reason: String,
    },

    /// A certificate is past its `notAfter`.
    #[error("certificate {subject} expired at {}", rfc3339(*.not_after))]
    Expired {
        /// Subject DN of the expired certificate (escaped).
        subject: String,
        /// When it expired.
        not_after: SystemTime,
    },

    /// A certificate is before its `notBefore`.
    #[error("certificate {subject} is not valid before {}", rfc3339(*.not_before))]
    NotYetValid {
        /// Subject DN of the certificate (escaped).
        subject: String,
        /// When it becomes valid.
        not_before: SystemTime,
    },

    /// A signature does not verify, or the issuer is not trusted: forged certificate, unknown
    /// CA, VOMS attribute certificate from an unknown server or of a VO without trust anchors.
    #[error("{subject} (issued by {issuer}) is not trusted: {reason}")]
    Untrusted {
        /// What is not trusted: a certificate subject DN (escaped, in quotes), or
        /// `VOMS attribute certificate of VO "atlas"`.
        subject: String,
        /// Its issuer's DN (escaped).
        issuer: String,
        /// Why.
        reason: String,
    },

    /// A certificate is listed in the CRL of the CA that issued it.
    #[error(
        "certificate {subject} (serial number {serial}) is revoked: the CRL of its CA {issuer} \
         lists it as revoked at {}",
        rfc3339(*.revoked_at)
    )]
    Revoked {
        /// Subject DN of the revoked certificate (escaped, in quotes).
        subject: String,
        /// Its serial number in upper-case hex, as `openssl x509 -serial` prints it.
        serial: String,
        /// The CA's subject DN (escaped, in quotes).
        issuer: String,
        /// The revocation date the CRL gives.
        revoked_at: SystemTime,
    },

    /// Every CRL of the CA that issued a certificate is past its `nextUpdate`: revocation
    /// cannot be checked, so the CA's certificates are refused until the CRL is updated.
    #[error(
        "the CRL {} of CA {ca} expired at {}; certificates of this CA are refused until it is \
         updated (run fetch-crl)",
        file.display(),
        rfc3339(*.next_update)
    )]
    CrlExpired {
        /// The CA's subject DN (escaped, in quotes).
        ca: String,
        /// The CRL file.
        file: PathBuf,
        /// Its `nextUpdate`.
        next_update: SystemTime,
    },

    /// A CRL file about the CA that issued a certificate cannot be used (malformed, not signed
    /// by the CA, not valid yet, ...): the CA is refused until it is fixed (fail closed).
    #[error(
        "CA {ca} is refused: its CRL file {} cannot be used: {reason}",
        file.display()
    )]
    BadCrl {
        /// The CA's subject DN (escaped, in quotes).
        ca: String,
        /// The CRL file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The signing policy of the CA that issued a certificate does not allow the certificate's
    /// subject.
    #[error(
        "certificate {subject}: the signing policy of CA {ca} ({}) does not allow it to sign \
         that subject",
        file.display()
    )]
    SigningPolicy {
        /// Subject DN of the certificate (escaped, in quotes).
        subject: String,
        /// The CA's subject DN (escaped, in quotes).
        ca: String,
        /// The signing policy file.
        file: PathBuf,
    },

    /// A signing policy file about the CA that issued a certificate cannot be used: the CA is
    /// refused until it is fixed (fail closed).
    #[error(
        "CA {ca} is refused: its signing policy file {} cannot be used: {reason}",
        file.display()
    )]
    BadSigningPolicy {
        /// The CA's subject DN (escaped, in quotes).
        ca: String,
        /// The signing policy file.
        file: PathBuf,
        /// What is wrong with it (with the line number when it is a syntax error).
        reason: String,
    },

    /// The VOMS extension or an attribute certificate in it is malformed or unusable.
    #[error("VOMS attribute certificate: {reason}")]
    BadAc {
        /// What is wrong.
        reason: String,
    },

    /// A VOMS attribute certificate is past its validity.
    #[error("VOMS attribute certificate of VO \"{vo}\" expired at {}", rfc3339(*.not_after))]
    AcExpired {
        /// The VO of the attribute certificate.
        vo: String,
        /// When it expired.
        not_after: SystemTime,
    },

    /// A VOMS attribute certificate is not valid yet.
    #[error("VOMS attribute certificate of VO \"{vo}\" is not valid before {}", rfc3339(*.not_before))]
    AcNotYetValid {
        /// The VO of the attribute certificate.
        vo: String,
        /// When it becomes valid.
        not_before: SystemTime,
    },

    /// The VOMS attribute certificates carry more FQANs than allowed.
    #[error("too many VOMS FQANs: more than {max}")]
    TooManyFqans {
        /// The limit.
        max: usize,
    },

    /// An FQAN is malformed, or does not belong to the VO of its attribute certificate.
    #[error("VOMS FQAN {fqan}: {reason}")]
    BadFqan {
        /// The FQAN (escaped, shortened when very long).
        fqan: String,
        /// What is wrong.
        reason: String,
    },
}
