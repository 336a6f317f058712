//! A minimal, panic-free DER reader for the structures x509-parser does not cover (the VOMS
//! attribute certificate, RFC 5755, and the proxyCertInfo extension, RFC 3820).

/// Universal and context tags used here (single identifier byte).
pub(crate) mod tag {
    pub const BOOLEAN: u8 = 0x01;
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const UTF8_STRING: u8 = 0x0c;
    pub const GENERALIZED_TIME: u8 = 0x18;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;
    /// `[0]` constructed.
    pub const CTX0: u8 = 0xa0;
    /// `[4]` constructed (GeneralName directoryName, explicit because Name is a CHOICE).
    pub const CTX4: u8 = 0xa4;
    /// `[6]` primitive (GeneralName uniformResourceIdentifier).
    pub const CTX6_PRIM: u8 = 0x86;
}

/// One element: its tag, its content and its full encoding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    pub raw: &'a [u8],
}

/// Reads consecutive elements from a byte slice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The tag of the next element, if any.
    pub fn peek_tag(&self) -> Option<u8> {
        self.data.first().copied()
    }

    /// Reads the next element.
    pub fn read(&mut self) -> Result<Tlv<'a>, String> {
        let data = self.data;
        let (&tag, rest) = data.split_first().ok_or("unexpected end of data")?;
        if tag & 0x1f == 0x1f {
            return Err(format!("unsupported multi-byte tag {tag:#04x}"));
        }
        let (&first, mut rest) = rest.split_first().ok_or("truncated length")?;
        let len = if first < 0x80 {
            usize::from(first)
        } else if first == 0x80 {
            return Err("indefinite length is not DER".into());
        } else {
            let n = usize::from(first & 0x7f);
            if n > 4 {
                return Err(format!("length of {n} bytes is too large"));
            }
            let (len_bytes, after) = rest.split_at_checked(n).ok_or("truncated length")?;
            rest = after;
            len_bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        let header = data.len() - rest.len();
        let content = rest.get(..len).ok_or_else(|| {
            format!(
                "element with tag {tag:#04x} claims {len} bytes, only {} left",
                rest.len()
            )
        })?;
        let total = header + len;
        let raw = data.get(..total).ok_or("truncated element")?;
        self.data = data.get(total..).unwrap_or_default();
        Ok(Tlv { tag, content, raw })
    }

    /// Reads the next element and checks its tag.
    pub fn expect(&mut self, tag: u8, what: &str) -> Result<Tlv<'a>, String> {
        let tlv = self.read().map_err(|e| format!("{what}: {e}"))?;
        if tlv.tag != tag {
            return Err(format!(
                "{what}: expected tag {tag:#04x}, found {:#04x}",
                tlv.tag
            ));
        }
        Ok(tlv)
    }

    /// Reads the next element if it has tag `tag`.
    pub fn optional(&mut self, tag: u8, what: &str) -> Result<Option<Tlv<'a>>, String> {
        if self.peek_tag() == Some(tag) {
            self.expect(tag, what).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Fails when data is left over.
    pub fn finish(&self, what: &str) -> Result<(), String> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{what}: {} unexpected trailing bytes",
                self.data.len()
            ))
        }
    }
}

/// Parses `data` as exactly one element with tag `tag` and returns a reader over its content.
pub(crate) fn single<'a>(data: &'a [u8], tag: u8, what: &str) -> Result<Reader<'a>, String> {
    let mut r = Reader::new(data);
    let tlv = r.expect(tag, what)?;
    r.finish(what)?;
    Ok(Reader::new(tlv.content))
}

/// The dotted form of an OBJECT IDENTIFIER's content, e.g. `1.3.6.1.4.1.8005.100.100.5`.
pub(crate) fn oid_string(content: &[u8]) -> Result<String, String> {
    if content.is_empty() || content.len() > 64 {
        return Err("malformed OBJECT IDENTIFIER".into());
    }
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    let mut in_arc = false;
    for &b in content {
        if !in_arc && b == 0x80 {
            return Err("non-minimal OBJECT IDENTIFIER".into());
        }
        if acc > (u64::MAX >> 7) {
            return Err("OBJECT IDENTIFIER arc too large".into());
        }
        acc = (acc << 7) | u64::from(b & 0x7f);
        in_arc = b & 0x80 != 0;
        if !in_arc {
            arcs.push(acc);
            acc = 0;
        }
    }
    if in_arc {
        return Err("truncated OBJECT IDENTIFIER".into());
    }
    let mut out = String::new();
    for (i, arc) in arcs.iter().enumerate() {
        if i == 0 {
            let (a, b) = match *arc {
                x if x < 40 => (0, x),
                x if x < 80 => (1, x - 40),
                x => (2, x - 80),
            };
            out.push_str(&format!("{a}.{b}"));
        } else {
            out.push_str(&format!(".{arc}"));
        }
    }
    Ok(out)
}

/// A non-negative INTEGER's content as `u64`.
pub(crate) fn uint(content: &[u8]) -> Result<u64, String> {
    match content.first() {
        None => return Err("empty INTEGER".into()),
        Some(b) if b & 0x80 != 0 => return Err("negative INTEGER".into()),
        Some(_) => {}
    }
    let digits = strip_leading_zeros(content);
    if digits.len() > 8 {
        return Err("INTEGER too large".into());
    }
    Ok(digits
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

/// An INTEGER's content without redundant leading zero bytes (for comparing serial numbers).
pub(crate) fn strip_leading_zeros(content: &[u8]) -> &[u8] {
    let n = content.iter().take_while(|&&b| b == 0).count();
    content.get(n..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_elements() {
        let data = [0x30, 0x03, 0x02, 0x01, 0x05, 0x04, 0x00];
        let mut r = Reader::new(&data);
        let seq = r.expect(tag::SEQUENCE, "seq").unwrap();
        assert_eq!(seq.raw.len(), 5);
        let mut inner = Reader::new(seq.content);
        let int = inner.expect(tag::INTEGER, "int").unwrap();
        assert_eq!(uint(int.content).unwrap(), 5);
        inner.finish("seq").unwrap();
        assert!(r.optional(tag::INTEGER, "x").unwrap().is_none());
        let os = r.expect(tag::OCTET_STRING, "os").unwrap();
        assert!(os.content.is_empty());
        assert!(r.is_empty());
        assert!(r.read().is_err());
    }

    #[test]
    fn long_lengths_and_errors() {
        let mut long = vec![0x04, 0x82, 0x01, 0x00];
        long.extend(std::iter::repeat_n(7u8, 256));
        let t = Reader::new(&long).read().unwrap();
        assert_eq!(t.content.len(), 256);
        for bad in [
            &[0x04, 0x80][..],
            &[0x04, 0x85, 1, 1, 1, 1, 1],
            &[0x04, 0x82, 0x01],
            &[0x04, 0x05, 1],
            &[0x1f, 0x01, 0x00],
            &[0x04],
        ] {
            assert!(Reader::new(bad).read().is_err(), "{bad:?}");
        }
        assert!(single(&[0x04, 0x00, 0x00], tag::OCTET_STRING, "x").is_err());
    }

    #[test]
    fn oids() {
        let voms = [0x2b, 0x06, 0x01, 0x04, 0x01, 0xbe, 0x45, 0x64, 0x64, 0x05];
        assert_eq!(oid_string(&voms).unwrap(), "1.3.6.1.4.1.8005.100.100.5");
        assert_eq!(oid_string(&[0x55, 0x04, 0x03]).unwrap(), "2.5.4.3");
        assert!(oid_string(&[0x2b, 0x86]).is_err());
        assert!(oid_string(&[0x2b, 0x80, 0x01]).is_err());
        assert!(oid_string(&[]).is_err());
        assert!(oid_string(&[0xff; 20]).is_err());
    }

    #[test]
    fn integers() {
        assert_eq!(uint(&[0x00, 0xff]).unwrap(), 255);
        assert!(uint(&[0xff]).is_err());
        assert!(uint(&[]).is_err());
        assert!(uint(&[0x01; 9]).is_err());
        assert_eq!(strip_leading_zeros(&[0, 0, 1, 0]), &[1, 0]);
    }
}
