//! Splitting a PEM file into its certificates.
//!
//! Only `CERTIFICATE` blocks are decoded. Every other block (the proxy's private key in
//! particular) is skipped without decoding its content, so that key material is never copied,
//! kept or shown in a message.

use crate::error::ProxyError;

/// Largest accepted PEM input: a proxy file is a few kB (a VOMS AC with its server certificate
/// adds ~3 kB per VO).
pub(crate) const MAX_PEM_LEN: usize = 256 * 1024;

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
    let mut certs = Vec::new();
    let mut cert_blocks = 0usize;
    let mut blocks = 0usize;
    let mut lines = input
        .split(|&b| b == b'\n')
        .map(<[u8]>::trim_ascii)
        .enumerate();
    while let Some((no, line)) = lines.next() {
        let Some(label) = line
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
        let label_text = String::from_utf8_lossy(label).into_owned();
        let is_cert = label == b"CERTIFICATE";
        if is_cert {
            cert_blocks += 1;
        }
        let mut body = Vec::new();
        let mut ended = false;
        for (no, line) in lines.by_ref() {
            if let Some(end) = line
                .strip_prefix(b"-----END ")
                .and_then(|l| l.strip_suffix(b"-----"))
            {
                if end != label {
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
            if is_cert && cert_blocks <= max_certs {
                body.extend(line.iter().filter(|b| !b.is_ascii_whitespace()));
            }
        }
        if !ended {
            return Err(not_pem(format!("block {label_text:?} has no END line")));
        }
        if !is_cert || cert_blocks > max_certs {
            continue;
        }
        let der = data_encoding::BASE64.decode(&body).map_err(|e| {
            not_pem(format!(
                "certificate {cert_blocks}: invalid base64 at byte {}",
                e.position
            ))
        })?;
        if der.is_empty() {
            return Err(not_pem(format!("certificate {cert_blocks} is empty")));
        }
        certs.push(der);
    }
    if cert_blocks > max_certs {
        return Err(ProxyError::TooManyCertificates {
            count: cert_blocks,
            max: max_certs,
        });
    }
    if blocks == 0 {
        return Err(not_pem("no \"-----BEGIN\" line".into()));
    }
    if certs.is_empty() {
        return Err(ProxyError::NoCertificate);
    }
    Ok(certs)
}

fn not_pem(reason: String) -> ProxyError {
    ProxyError::NotPem { reason }
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
