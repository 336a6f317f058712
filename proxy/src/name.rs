//! Distinguished names: the OpenSSL "slash" form used by grid-mapfiles, and exact comparison.

use x509_parser::asn1_rs::{Any, Class};
use x509_parser::x509::{AttributeTypeAndValue, RelativeDistinguishedName, X509Name};

/// Longest DN accepted as an identity, in bytes (IGTF DNs are well below 300).
const MAX_DN_LEN: usize = 1024;

/// OpenSSL's short names for the attribute types found in grid DNs; other types print as their
/// dotted OID, as OpenSSL does for types it does not know.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.17" => "postalCode",
        "2.5.4.41" => "name",
        "2.5.4.42" => "GN",
        "2.5.4.43" => "initials",
        "2.5.4.44" => "generationQualifier",
        "2.5.4.46" => "dnQualifier",
        "2.5.4.65" => "pseudonym",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

/// The text of a directory string, or `None` for types that are not character strings.
fn decode_string(value: &Any<'_>) -> Option<String> {
    if value.class() != Class::Universal || value.header.is_constructed() {
        return None;
    }
    let data = value.data;
    match value.tag().0 {
        // UTF8String, NumericString, PrintableString, IA5String, VisibleString
        12 | 18 | 19 | 22 | 26 => std::str::from_utf8(data).ok().map(str::to_owned),
        // TeletexString: in practice Latin-1, as OpenSSL treats it.
        20 => Some(data.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UCS-2 / UTF-16 big endian.
        30 => {
            if data.len() % 2 != 0 {
                return None;
            }
            let units = data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        // UniversalString: UTF-32 big endian.
        28 => {
            if data.len() % 4 != 0 {
                return None;
            }
            data.chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
        _ => None,
    }
}

fn key_name(attr: &AttributeTypeAndValue<'_>) -> String {
    let oid = attr.attr_type().to_id_string();
    short_name(&oid).map_or(oid, str::to_owned)
}

/// Characters that cannot be part of an identity DN (it ends up in double-quoted grid-mapfile
/// entries, logs and account databases).
fn forbidden(c: char) -> bool {
    c == '"' || c.is_control()
}

/// Escapes `s` for a message: quotes, backslashes and control characters become `\xHH` /
/// `\u{..}`, and very long values are cut.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i >= 300 {
            out.push_str("...");
            break;
        }
        match c {
            '"' | '\\' => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c if c.is_control() => {
                if u32::from(c) < 0x100 {
                    out.push_str(&format!("\\x{:02x}", u32::from(c)));
                } else {
                    out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// A DN for messages: the slash form, escaped, in double quotes. Never fails: values that are
/// not strings print as `#` and their hex encoding.
pub(crate) fn display(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    for attr in name.iter_attributes() {
        out.push('/');
        out.push_str(&key_name(attr));
        out.push('=');
        match decode_string(attr.attr_value()) {
            Some(v) => out.push_str(&v),
            None => push_hex(&mut out, attr.attr_value()),
        }
    }
    format!("\"{}\"", escape(&out))
}

fn push_hex(out: &mut String, value: &Any<'_>) {
    out.push('#');
    for b in value.data.iter().take(64) {
        out.push_str(&format!("{b:02x}"));
    }
}

/// The slash form of a DN that becomes an identity: `/DC=ch/DC=cern/OU=Users/CN=jdoe`.
///
/// Refused: an empty DN, values that are not character strings, quotes and control characters
/// (newline, NUL, ...) anywhere, and DNs longer than 1024 bytes.
pub(crate) fn identity(name: &X509Name<'_>) -> Result<String, String> {
    let mut out = String::new();
    for attr in name.iter_attributes() {
        let key = key_name(attr);
        let Some(value) = decode_string(attr.attr_value()) else {
            return Err(format!(
                "the value of {key} is not a character string (ASN.1 tag {})",
                attr.attr_value().tag().0
            ));
        };
        if let Some(c) = value.chars().find(|&c| forbidden(c)) {
            return Err(format!(
                "the value of {key} contains the character {c:?}, which is not allowed in an identity"
            ));
        }
        out.push('/');
        out.push_str(&key);
        out.push('=');
        out.push_str(&value);
    }
    if out.is_empty() {
        return Err("the DN is empty".into());
    }
    if out.len() > MAX_DN_LEN {
        return Err(format!(
            "the DN is {} bytes long, at most {MAX_DN_LEN} are allowed",
            out.len()
        ));
    }
    Ok(out)
}

/// The slash form for comparison with the DNs listed in `.lsc` files (no checks).
pub(crate) fn slash_form(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    for attr in name.iter_attributes() {
        out.push('/');
        out.push_str(&key_name(attr));
        out.push('=');
        match decode_string(attr.attr_value()) {
            Some(v) => out.push_str(&v),
            None => push_hex(&mut out, attr.attr_value()),
        }
    }
    out
}

/// Maps the attribute names other tools write in slash-form DNs (`.lsc` files, signing
/// policies) to OpenSSL's: `/Email=` and `/E=` become `/emailAddress=`, `/USERID=` becomes
/// `/UID=`.
pub(crate) fn normalize_slash_dn(dn: &str) -> String {
    dn.replace("/Email=", "/emailAddress=")
        .replace("/E=", "/emailAddress=")
        .replace("/USERID=", "/UID=")
}

/// Comparison key of one RDN: attribute types and decoded values, escaped so that the key is
/// unambiguous. Two names are equal when their RDN keys are (string types are compared by
/// content, so a PrintableString and a UTF8String with the same text match).
fn rdn_key(rdn: &RelativeDistinguishedName<'_>) -> String {
    let mut out = String::new();
    for (i, attr) in rdn.iter().enumerate() {
        if i > 0 {
            out.push('+');
        }
        out.push_str(&attr.attr_type().to_id_string());
        out.push('=');
        match decode_string(attr.attr_value()) {
            Some(v) => {
                for c in v.chars() {
                    if matches!(c, '\\' | '/' | '+' | '=' | '#') {
                        out.push('\\');
                    }
                    out.push(c);
                }
            }
            None => {
                out.push('#');
                out.push_str(&attr.attr_value().tag().0.to_string());
                out.push(':');
                for b in attr.attr_value().data {
                    out.push_str(&format!("{b:02x}"));
                }
            }
        }
    }
    out
}

/// The comparison keys of a name's RDNs, in order.
pub(crate) fn rdn_keys(name: &X509Name<'_>) -> Vec<String> {
    name.iter_rdn().map(rdn_key).collect()
}

/// Comparison key of a whole name.
pub(crate) fn key(name: &X509Name<'_>) -> String {
    rdn_keys(name).join("/")
}

/// Whether `subject` is `issuer` plus one RDN holding a single CN (the proxy naming rule of
/// RFC 3820 §3.4 and of legacy Globus proxies). Returns the value of that CN.
pub(crate) fn proxy_cn(subject: &X509Name<'_>, issuer_subject: &X509Name<'_>) -> Option<String> {
    let sub = rdn_keys(subject);
    let iss = rdn_keys(issuer_subject);
    if sub.len() != iss.len() + 1 || sub.get(..iss.len()) != Some(&iss[..]) {
        return None;
    }
    let last = subject.iter_rdn().last()?;
    let mut attrs = last.iter();
    let cn = attrs.next()?;
    if attrs.next().is_some() || cn.attr_type().to_id_string() != "2.5.4.3" {
        return None;
    }
    decode_string(cn.attr_value())
}
