//! Splitting a PEM file into its certificates (or, for the trust store, its CRLs).
//!
//! Only blocks with the wanted label (`CERTIFICATE`, `X509 CRL`) are decoded. Every other block
//! (the proxy's private key in particular) is skipped without decoding its content, so that key
//! material is never copied, kept or shown in a message.

use crate::error::ProxyError;

/// Largest accepted PEM input: a proxy file is a few kB (a VOMS AC with its server certificate
/// adds ~3 kB per VO).
pub(crate) const MAX_PEM_LEN: usize = 256 * 1024;

/// Why [`blocks`] failed.
enum PemError {
    /// Not PEM, or a malformed block.
    Malformed(String),
    /// More blocks with the label than allowed; `count` is how many there are.
    TooMany { count: usize },
}

/// The DER contents of the `CERTIFICATE` blocks of `input`, in order.
///
/// At most `max_certs` certificates are decoded; more is an error.
pub(crate) fn certificates(input: &[u8], max_certs: usize) -> Result<Vec<Vec<u8>>, ProxyError> {
    if input.len() > MAX_PEM_LEN {
        return Err(ProxyError::TooLarge {
            len: input.len(),
            max: MAX_PEM_LEN,
        });
    }
    let certs = blocks(input, b"CERTIFICATE", "certificate", max_certs).map_err(|e| match e {
        PemError::Malformed(reason) => ProxyError::NotPem { reason },
        PemError::TooMany { count } => ProxyError::TooManyCertificates {
            count,
            max: max_certs,
        },
    })?;
    if certs.is_empty() {
        return Err(ProxyError::NoCertificate);
    }
    Ok(certs)
}

/// The DER contents of the `X509 CRL` blocks of `input` (at most `max`), in order; the error
/// says what is wrong. The caller limits the input's size.
pub(crate) fn crls(input: &[u8], max: usize) -> Result<Vec<Vec<u8>>, String> {
    let crls = blocks(input, b"X509 CRL", "CRL", max).map_err(|e| match e {
        PemError::Malformed(reason) => format!("not a valid PEM file: {reason}"),
        PemError::TooMany { count } => format!("{count} CRLs in one file, at most {max}"),
    })?;
    if crls.is_empty() {
        return Err("no \"X509 CRL\" block in the PEM file".into());
    }
    Ok(crls)
}

/// The DER contents of the blocks labelled `label` (called `what` in messages), in order; at
/// most `max` are decoded, more is an error.
fn blocks(input: &[u8], label: &[u8], what: &str, max: usize) -> Result<Vec<Vec<u8>>, PemError> {
    let mut out = Vec::new();
    let mut wanted_blocks = 0usize;
    let mut blocks = 0usize;
    let mut lines = input
        .split(|&b| b == b'\n')
        .map(<[u8]>::trim_ascii)
        .enumerate();
    while let Some((no, line)) = lines.next() {
        let Some(begin) = line
            .strip_prefix(b"-----BEGIN ")
            .and_then(|l| l.strip_suffix(b"-----"))
        else {
            if line.starts_with(b"-----END ") {
                return Err(not_pem(format!("line {}: END without BEGIN", no + 1)));
            }
            // Text outside blocks (comments, "Bag Attributes" from openssl) is allowed.
            continue;
        };
        blocks += 1;
        let label_text = String::from_utf8_lossy(begin).into_owned();
        let is_wanted = begin == label;
        if is_wanted {
            wanted_blocks += 1;
        }
        let decode = is_wanted && wanted_blocks <= max;
        let mut body = Vec::new();
        let mut ended = false;
        for (no, line) in lines.by_ref() {
            if let Some(end) = line
                .strip_prefix(b"-----END ")
                .and_then(|l| l.strip_suffix(b"-----"))
            {
                if end != begin {
                    return Err(not_pem(format!(
                        "line {}: END {:?} does not match BEGIN {label_text:?}",
                        no + 1,
                        String::from_utf8_lossy(end),
                    )));
                }
                ended = true;
                break;
            }
            if line.starts_with(b"-----") {
                return Err(not_pem(format!(
                    "line {}: unexpected line inside the {label_text:?} block",
                    no + 1
                )));
            }
            if decode {
                body.extend(line.iter().filter(|b| !b.is_ascii_whitespace()));
            }
        }
        if !ended {
            return Err(not_pem(format!("block {label_text:?} has no END line")));
        }
        if !decode {
            continue;
        }
        let der = data_encoding::BASE64.decode(&body).map_err(|e| {
            not_pem(format!(
                "{what} {wanted_blocks}: invalid base64 at byte {}",
                e.position
            ))
        })?;
        if der.is_empty() {
            return Err(not_pem(format!("{what} {wanted_blocks} is empty")));
        }
        out.push(der);
    }
    if wanted_blocks > max {
        return Err(PemError::TooMany {
            count: wanted_blocks,
        });
    }
    if blocks == 0 {
        return Err(not_pem("no \"-----BEGIN\" line".into()));
    }
    Ok(out)
}

fn not_pem(reason: String) -> PemError {
    PemError::Malformed(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(label: &str, body: &str) -> String {
        format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
    }

    #[test]
    fn splits_and_skips_keys() {
        let input = format!(
            "{}{}junk between\r\n{}",
            block("CERTIFICATE", "AQID"),
            block("RSA PRIVATE KEY", "not base64 at all !!!"),
            block("CERTIFICATE", "BAUG\r\nBw==")
        );
        let certs = certificates(input.as_bytes(), 10).unwrap();
        assert_eq!(certs, vec![vec![1, 2, 3], vec![4, 5, 6, 7]]);
    }

    #[test]
    fn crl_blocks() {
        let input = format!(
            "{}{}",
            block("CERTIFICATE", "AQID"),
            block("X509 CRL", "BAUG")
        );
        assert_eq!(crls(input.as_bytes(), 4).unwrap(), vec![vec![4, 5, 6]]);
        let e = crls(block("CERTIFICATE", "AQID").as_bytes(), 4).unwrap_err();
        assert!(e.contains("no \"X509 CRL\" block"), "{e}");
        let e = crls(block("X509 CRL", "BAUG").repeat(5).as_bytes(), 4).unwrap_err();
        assert_eq!(e, "5 CRLs in one file, at most 4");
        let e = crls(b"junk", 4).unwrap_err();
        assert!(
            e.starts_with("not a valid PEM file: no \"-----BEGIN\" line"),
            "{e}"
        );
        let e = crls(block("X509 CRL", "").as_bytes(), 4).unwrap_err();
        assert!(e.contains("CRL 1 is empty"), "{e}");
    }

    #[test]
    fn errors() {
        let e = certificates(b"hello", 10).unwrap_err();
        assert!(e.to_string().contains("no \"-----BEGIN\" line"), "{e}");
        let e = certificates(block("PRIVATE KEY", "AA==").as_bytes(), 10).unwrap_err();
        assert!(matches!(e, ProxyError::NoCertificate), "{e}");
        let e = certificates(b"-----BEGIN CERTIFICATE-----\nAQID\n", 10).unwrap_err();
        assert!(e.to_string().contains("has no END line"), "{e}");
        let e =
            certificates(b"-----BEGIN CERTIFICATE-----\nAQID\n-----END X-----\n", 10).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        let e = certificates(block("CERTIFICATE", "A*ID").as_bytes(), 10).unwrap_err();
        assert!(e.to_string().contains("invalid base64"), "{e}");
        let e = certificates(block("CERTIFICATE", "").as_bytes(), 10).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        let many = block("CERTIFICATE", "AQID").repeat(11);
        let e = certificates(many.as_bytes(), 10).unwrap_err();
        assert!(
            matches!(e, ProxyError::TooManyCertificates { count: 11, max: 10 }),
            "{e}"
        );
        let big = vec![b'A'; MAX_PEM_LEN + 1];
        assert!(matches!(
            certificates(&big, 10).unwrap_err(),
            ProxyError::TooLarge { .. }
        ));
    }
}
