//! No input makes `read_proxy` or `TrustStore::load` panic: random bytes, random PEM, and valid
//! proxy files with mutated DER or text; CRL and signing policy files, random and mutated.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::OnceLock;

use common::*;
use dms_proxy::{read_proxy, ProxyError, TrustStore};
use proptest::prelude::*;

struct Fixture {
    pki: Pki,
    trust: TrustStore,
    /// The DER certificates of a valid proxy file with VOMS: proxy 2, proxy 1 (with the AC),
    /// user certificate.
    certs: Vec<Vec<u8>>,
    text: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let pki = Pki::new();
        let trust = pki.trust();
        let k1 = Key::ec();
        let s1 = pki.proxy_spec(vec![voms_extension(&[pki.ac(&[
            "/atlas/Role=production/Capability=NULL",
            "/atlas/higgs/Role=NULL/Capability=NULL",
        ])])]);
        let p1 = cert(&s1, &k1, &pki.user_key);
        let k2 = Key::ec();
        let s2 = CertSpec {
            serial: 2,
            issuer: s1.subject.clone(),
            subject: s1.subject.with_cn("2"),
            not_before: NOW - HOUR,
            not_after: NOW + HOUR,
            extensions: vec![proxy_cert_info(Some(3))],
        };
        let p2 = cert(&s2, &k2, &k1);
        let certs = vec![p2, p1, pki.user_cert.clone()];
        let text = file(&certs, &k2.pem());
        // The unmutated file is valid.
        let id = read_proxy(text.as_bytes(), &trust, now()).unwrap();
        assert_eq!(id.fqans.len(), 2);
        Fixture {
            pki,
            trust,
            certs,
            text,
        }
    })
}

fn file(certs: &[Vec<u8>], key: &str) -> String {
    let mut out = String::new();
    for (i, c) in certs.iter().enumerate() {
        out.push_str(&pem_block("CERTIFICATE", c));
        if i == 0 {
            out.push_str(key);
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { pos: usize, bits: u8 },
    Set { pos: usize, byte: u8 },
    Insert { pos: usize, bytes: Vec<u8> },
    Delete { pos: usize, len: usize },
    Truncate { pos: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(pos, bits)| Mutation::Flip { pos, bits }),
        (any::<usize>(), any::<u8>()).prop_map(|(pos, byte)| Mutation::Set { pos, byte }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(pos, bytes)| Mutation::Insert { pos, bytes }),
        (any::<usize>(), 1usize..64).prop_map(|(pos, len)| Mutation::Delete { pos, len }),
        any::<usize>().prop_map(|pos| Mutation::Truncate { pos }),
    ]
}

fn apply(data: &mut Vec<u8>, m: &Mutation) {
    if data.is_empty() {
        return;
    }
    match m {
        Mutation::Flip { pos, bits } => {
            let p = pos % data.len();
            data[p] ^= bits;
        }
        Mutation::Set { pos, byte } => {
            let p = pos % data.len();
            data[p] = *byte;
        }
        Mutation::Insert { pos, bytes } => {
            let p = pos % (data.len() + 1);
            data.splice(p..p, bytes.iter().copied());
        }
        Mutation::Delete { pos, len } => {
            let p = pos % data.len();
            let end = (p + len).min(data.len());
            data.drain(p..end);
        }
        Mutation::Truncate { pos } => data.truncate(pos % data.len()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        let f = fixture();
        let _ = read_proxy(&data, &f.trust, now());
    }

    #[test]
    fn random_der_in_pem(ders in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..512), 1..4)) {
        let f = fixture();
        let text = file(&ders, "");
        let _ = read_proxy(text.as_bytes(), &f.trust, now());
    }

    #[test]
    fn mutated_der(which in 0usize..3, mutations in prop::collection::vec(mutation(), 1..4)) {
        let f = fixture();
        let mut certs = f.certs.clone();
        for m in &mutations {
            apply(&mut certs[which], m);
        }
        let text = file(&certs, "");
        let result = read_proxy(text.as_bytes(), &f.trust, now());
        if let Ok(id) = result {
            // A mutation that still verifies cannot change who the user is.
            prop_assert_eq!(id.dn, USER_DN);
        }
    }

    #[test]
    fn mutated_text(mutations in prop::collection::vec(mutation(), 1..6)) {
        let f = fixture();
        let mut data = f.text.clone().into_bytes();
        for m in &mutations {
            apply(&mut data, m);
        }
        let _ = read_proxy(&data, &f.trust, now());
    }

    /// Mutated AC contents, properly signed by the VOMS server and carried by a properly
    /// signed proxy, so that the parser sees them after every signature check.
    #[test]
    fn mutated_signed_ac(mutations in prop::collection::vec(mutation(), 1..4), outer in any::<bool>()) {
        let f = fixture();
        let spec = f.pki.ac_spec(&["/atlas/Role=production/Capability=NULL", "/atlas/higgs"]);
        let ext = if outer {
            // Mutate the extension value itself (AC sequence structure, signature).
            let mut value = der::seq(&[der::seq(&[f.pki.ac(&["/atlas"])])]);
            for m in &mutations {
                apply(&mut value, m);
            }
            ext("1.3.6.1.4.1.8005.100.100.5", false, &value)
        } else {
            let mut info = ac_info(&spec, &f.pki.voms_key);
            for m in &mutations {
                apply(&mut info, m);
            }
            voms_extension(&[sign_ac(&info, &f.pki.voms_key)])
        };
        let text = f.pki.proxy_file(vec![ext]);
        if let Ok(id) = read_proxy(text.as_bytes(), &f.trust, now()) {
            prop_assert_eq!(id.dn, USER_DN);
            prop_assert!(id.fqans.iter().all(|q| q.starts_with("/atlas")));
        }
    }

    /// Mutated proxyCertInfo and DN contents in a properly signed proxy.
    #[test]
    fn mutated_signed_proxy(mutations in prop::collection::vec(mutation(), 1..4), field in 0usize..3) {
        let f = fixture();
        let mut spec = f.pki.proxy_spec(vec![]);
        let mut target = match field {
            0 => spec.extensions.pop().unwrap(),
            1 => spec.extensions.remove(0),
            _ => spec.subject.der(),
        };
        for m in &mutations {
            apply(&mut target, m);
        }
        let key = Key::ec();
        let proxy = if field == 2 {
            // Build the TBS by hand with the mutated subject.
            let tbs = der::seq(&[
                der::ctx(0, &[der::uint(2)]),
                der::uint(5),
                f.pki.user_key.alg(),
                f.pki.user_dn.der(),
                der::seq(&[der::cert_time(NOW - HOUR), der::cert_time(NOW + HOUR)]),
                target,
                key.spki(),
                der::ctx(3, &[der::seq(&spec.extensions)]),
            ]);
            let sig = f.pki.user_key.sign(&tbs);
            der::seq(&[tbs, f.pki.user_key.alg(), der::bits(&sig)])
        } else {
            spec.extensions.push(target);
            cert(&spec, &key, &f.pki.user_key)
        };
        let text = file(&[proxy, f.pki.user_cert.clone()], "");
        if let Ok(id) = read_proxy(text.as_bytes(), &f.trust, now()) {
            prop_assert_eq!(id.dn, USER_DN);
        }
    }

    #[test]
    fn any_time(secs in any::<i64>()) {
        let f = fixture();
        let t = if secs >= 0 {
            std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs.unsigned_abs()))
        } else {
            std::time::UNIX_EPOCH.checked_sub(std::time::Duration::from_secs(secs.unsigned_abs()))
        };
        if let Some(t) = t {
            if let Err(e) = read_proxy(f.text.as_bytes(), &f.trust, t) {
                let _ = e.to_string();
            }
        }
    }
}

/// A CA directory with the fixture's CA (also as `1d879c6c.0`) and `files`, loaded at the
/// tests' now (loading cannot fail: the CA is there).
fn load_with(files: &[(&str, &[u8])]) -> TrustStore {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cern-ca.pem"),
        pem_block("CERTIFICATE", &f.pki.ca_cert),
    )
    .unwrap();
    std::os::unix::fs::symlink("cern-ca.pem", dir.path().join("1d879c6c.0")).unwrap();
    for (name, data) in files {
        std::fs::write(dir.path().join(name), data).unwrap();
    }
    let trust = TrustStore::load_at(dir.path(), None, now()).unwrap();
    for s in trust.skipped() {
        let _ = format!("{s:?}");
    }
    trust
}

/// Reads the fixture's proxy file (with VOMS, which is refused without vomsdir) and a plain
/// proxy: no panic, messages on one line, and a success is the fixture's user.
fn check_reads(trust: &TrustStore) -> Result<(), TestCaseError> {
    let f = fixture();
    let plain = f.pki.proxy_file(vec![]);
    for text in [&f.text, &plain] {
        match read_proxy(text.as_bytes(), trust, now()) {
            Ok(id) => prop_assert_eq!(id.dn, USER_DN),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(!msg.contains('\n') && !msg.contains('\0'), "{:?}", msg);
            }
        }
    }
    Ok(())
}

/// Reference wildcard matcher (`*`: any run, `?`: one character), by dynamic programming.
fn wildcard_oracle(pattern: &[char], text: &[char]) -> bool {
    let mut row = vec![false; text.len() + 1];
    row[0] = true;
    for &p in pattern {
        let mut next = vec![false; text.len() + 1];
        if p == '*' {
            let mut any = false;
            for (j, cell) in next.iter_mut().enumerate() {
                any |= row[j];
                *cell = any;
            }
        } else {
            for j in 0..text.len() {
                next[j + 1] = row[j] && (p == '?' || p == text[j]);
            }
        }
        row = next;
    }
    row[text.len()]
}

#[derive(Debug, Clone)]
enum PatternEdit {
    Star(usize),
    Question(usize),
    InsertStar(usize),
    Delete(usize, usize),
    Char(usize, char),
}

fn pattern_edit() -> impl Strategy<Value = PatternEdit> {
    prop_oneof![
        any::<usize>().prop_map(PatternEdit::Star),
        any::<usize>().prop_map(PatternEdit::Question),
        any::<usize>().prop_map(PatternEdit::InsertStar),
        (any::<usize>(), 1usize..20).prop_map(|(p, n)| PatternEdit::Delete(p, n)),
        (
            any::<usize>(),
            prop::sample::select(vec!['/', '=', 'C', 'c', 'x', ' ', '*'])
        )
            .prop_map(|(p, c)| PatternEdit::Char(p, c)),
    ]
}

fn edit_pattern(base: &str, edits: &[PatternEdit]) -> String {
    let mut p: Vec<char> = base.chars().collect();
    for e in edits {
        let n = p.len().max(1);
        match *e {
            PatternEdit::Star(i) if !p.is_empty() => p[i % n] = '*',
            PatternEdit::Question(i) if !p.is_empty() => p[i % n] = '?',
            PatternEdit::InsertStar(i) => p.insert(i % (p.len() + 1), '*'),
            PatternEdit::Delete(i, len) if !p.is_empty() => {
                let start = i % n;
                let end = (start + len).min(p.len());
                p.drain(start..end);
            }
            PatternEdit::Char(i, c) if !p.is_empty() => p[i % n] = c,
            _ => {}
        }
    }
    p.into_iter().collect()
}

/// Tokens of the signing policy language and a few that are not, for policy soup.
const POLICY_TOKENS: &[&str] = &[
    "access_id_CA",
    "access_id_HOST",
    "X509",
    "pos_rights",
    "neg_rights",
    "globus",
    "CA:sign",
    "cond_subjects",
    "cond_banned",
    "'",
    "\"",
    "'\"",
    "\"'",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "#",
    "*",
    "?",
    "/DC=ch/DC=cern/*",
    CA_DN,
    "/",
    "=",
    "\0",
    "\u{1b}",
    "é",
    "\\",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random bytes as a CRL file, as DER or inside a PEM block.
    #[test]
    fn random_crl(data in prop::collection::vec(any::<u8>(), 0..1024), pem in any::<bool>()) {
        let file = if pem { pem_block("X509 CRL", &data).into_bytes() } else { data };
        let trust = load_with(&[("1d879c6c.r0", &file)]);
        check_reads(&trust)?;
    }

    /// A CRL of the CA revoking the user, with mutated DER. Whatever the mutation, the user is
    /// never accepted through this CA, unless the CRL now names a CA the directory does not
    /// have (which is then like having no CRL).
    #[test]
    fn mutated_crl(mutations in prop::collection::vec(mutation(), 1..4), pem in any::<bool>()) {
        let f = fixture();
        let mut der = f.pki.crl(&[5, USER_SERIAL]);
        for m in &mutations {
            apply(&mut der, m);
        }
        let file = if pem { pem_block("X509 CRL", &der).into_bytes() } else { der };
        let trust = load_with(&[("1d879c6c.r0", &file)]);
        check_reads(&trust)?;
        let unknown_issuer = trust
            .skipped()
            .iter()
            .any(|s| s.reason.contains("which is not a CA certificate of the directory"));
        if !unknown_issuer {
            let result = read_proxy(f.pki.proxy_file(vec![]).as_bytes(), &trust, now());
            prop_assert!(result.is_err(), "a CRL revoking the user let it in: {:?}", result);
        }
    }

    /// Mutated CRL contents, signed by the CA, so that every check after the signature sees
    /// them.
    #[test]
    fn mutated_signed_crl(mutations in prop::collection::vec(mutation(), 1..4)) {
        let f = fixture();
        let spec = f.pki.crl_spec(&[5, USER_SERIAL]);
        let mut tbs = crl_tbs(&spec, &f.pki.ca_key);
        for m in &mutations {
            apply(&mut tbs, m);
        }
        let der = sign_crl(tbs, &f.pki.ca_key);
        let trust = load_with(&[("1d879c6c.r0", &der)]);
        check_reads(&trust)?;
    }

    /// Random text and token soup as a signing policy.
    #[test]
    fn random_signing_policy(
        tokens in prop::collection::vec(prop::sample::select(POLICY_TOKENS), 0..60),
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        soup in any::<bool>(),
    ) {
        let text = if soup { tokens.concat().into_bytes() } else { bytes };
        let trust = load_with(&[("1d879c6c.signing_policy", &text)]);
        check_reads(&trust)?;
    }

    /// A valid signing policy with mutated text.
    #[test]
    fn mutated_signing_policy(mutations in prop::collection::vec(mutation(), 1..6)) {
        let mut text = format!(
            "{}{}",
            signing_policy("/DC=org/CN=Other CA", &["/DC=org/*"]),
            signing_policy(CA_DN, &["/DC=ch/DC=cern/OU=Organic Units/*", "/DC=ch/DC=cern/OU=Hosts/*"])
        )
        .into_bytes();
        for m in &mutations {
            apply(&mut text, m);
        }
        let trust = load_with(&[("1d879c6c.signing_policy", &text)]);
        check_reads(&trust)?;
    }

    /// Wildcard matching against a reference: the user is accepted exactly when the pattern
    /// matches its DN.
    #[test]
    fn signing_policy_patterns(edits in prop::collection::vec(pattern_edit(), 0..8)) {
        let pattern = edit_pattern(USER_DN, &edits);
        prop_assume!(!pattern.is_empty());
        let policy = signing_policy(CA_DN, &[&pattern]);
        let trust = load_with(&[("1d879c6c.signing_policy", policy.as_bytes())]);
        prop_assert!(trust.skipped().is_empty(), "{:?}", trust.skipped());
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = USER_DN.chars().collect();
        let want = wildcard_oracle(&p, &t);
        let f = fixture();
        match read_proxy(f.pki.proxy_file(vec![]).as_bytes(), &trust, now()) {
            Ok(_) => prop_assert!(want, "{:?} matched", pattern),
            Err(ProxyError::SigningPolicy { .. }) => prop_assert!(!want, "{:?} did not match", pattern),
            Err(e) => prop_assert!(false, "{:?}: {}", pattern, e),
        }
    }
}

#[test]
fn wildcard_oracle_agrees_with_examples() {
    let m = |p: &str, t: &str| {
        wildcard_oracle(
            &p.chars().collect::<Vec<_>>(),
            &t.chars().collect::<Vec<_>>(),
        )
    };
    assert!(m("/a*", "/abc"));
    assert!(m("*", ""));
    assert!(!m("?", ""));
    assert!(m("a?c", "abc"));
    assert!(!m("a*d", "abc"));
}

#[test]
fn large_crl_within_limits() {
    // Many revoked serials, the user's among them.
    let f = fixture();
    let mut spec = f.pki.crl_spec(&[]);
    spec.revoked = (1..20_000u64).map(|s| (s * 7919, NOW - DAY)).collect();
    spec.revoked.push((USER_SERIAL, NOW - DAY));
    let der = crl(&spec, &f.pki.ca_key);
    let trust = load_with(&[("1d879c6c.r0", &der)]);
    assert!(trust.skipped().is_empty(), "{:?}", trust.skipped());
    let err = read_proxy(f.pki.proxy_file(vec![]).as_bytes(), &trust, now()).unwrap_err();
    assert!(matches!(err, ProxyError::Revoked { .. }), "{err:?}");
}

#[test]
fn mutated_ac_fields() {
    // Every single-byte change inside the VOMS extension either fails cleanly or (when it hits
    // unsigned bytes of the outer structure) still yields the signed FQANs.
    let f = fixture();
    let p1 = &f.certs[1];
    let user = &f.pki.user_cert;
    for pos in (0..p1.len()).step_by(7) {
        let mut bad = p1.clone();
        bad[pos] ^= 0x41;
        let text = file(&[f.certs[0].clone(), bad, user.clone()], "");
        if let Ok(id) = read_proxy(text.as_bytes(), &f.trust, now()) {
            assert_eq!(id.dn, USER_DN);
        }
    }
}
