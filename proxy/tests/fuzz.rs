//! No input makes `read_proxy` panic: random bytes, random PEM, and valid proxy files with
//! mutated DER or text.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::OnceLock;

use common::*;
use dms_proxy::{read_proxy, TrustStore};
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
