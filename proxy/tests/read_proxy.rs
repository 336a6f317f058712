//! `read_proxy` against proxies, user certificates and VOMS attribute certificates generated at
//! run time (see `common/mod.rs`).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use dms_proxy::{read_proxy, ProxyError, ProxyIdentity, TrustStore};

const ROLE_PROD: &str = "/atlas/Role=production/Capability=NULL";
const HIGGS: &str = "/atlas/higgs/Role=NULL/Capability=NULL";

fn read(file: &str, trust: &TrustStore) -> Result<ProxyIdentity, ProxyError> {
    read_proxy(file.as_bytes(), trust, now())
}

#[test]
fn valid_proxy_with_two_fqans() {
    let pki = Pki::new();
    let file = pki.proxy_file(vec![voms_extension(&[pki.ac(&[ROLE_PROD, HIGGS])])]);
    let id = read(&file, &pki.trust()).unwrap();
    assert_eq!(
        id,
        ProxyIdentity {
            dn: USER_DN.into(),
            fqans: vec!["/atlas/Role=production".into(), "/atlas/higgs".into()],
            // The proxy ends before the AC.
            not_after: at(NOW + 11 * HOUR),
            vo: Some("atlas".into()),
        }
    );
}

#[test]
fn not_after_is_the_earliest_end() {
    let pki = Pki::new();
    let mut spec = pki.ac_spec(&[ROLE_PROD]);
    spec.not_after = NOW + 2 * HOUR;
    let file = pki.proxy_file(vec![voms_extension(&[ac(&spec, &pki.voms_key)])]);
    let id = read(&file, &pki.trust()).unwrap();
    assert_eq!(id.not_after, at(NOW + 2 * HOUR));

    // A user certificate ending before its proxy.
    let pki = Pki::with_user(USER_DN, NOW - DAY, NOW + HOUR);
    let id = read(&pki.proxy_file(vec![]), &pki.trust()).unwrap();
    assert_eq!(id.not_after, at(NOW + HOUR));
}

#[test]
fn proxy_without_voms() {
    let pki = Pki::new();
    let id = read(&pki.proxy_file(vec![]), &pki.trust_ca_only()).unwrap();
    assert_eq!(id.dn, USER_DN);
    assert!(id.fqans.is_empty());
    assert_eq!(id.vo, None);
    assert_eq!(id.not_after, at(NOW + 11 * HOUR));
}

#[test]
fn expired_proxy() {
    let pki = Pki::new();
    let mut spec = pki.proxy_spec(vec![]);
    spec.not_before = NOW - 13 * HOUR;
    spec.not_after = NOW - HOUR;
    let err = read(&pki.proxy_file_from(&spec), &pki.trust()).unwrap_err();
    match &err {
        ProxyError::Expired { subject, not_after } => {
            assert_eq!(*subject, format!("\"{USER_DN}/CN=987654321\""));
            assert_eq!(*not_after, at(NOW - HOUR));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("certificate \"{USER_DN}/CN=987654321\" expired at 2030-03-17T16:46:40Z")
    );

    let mut spec = pki.proxy_spec(vec![]);
    spec.not_before = NOW + HOUR;
    let err = read(&pki.proxy_file_from(&spec), &pki.trust()).unwrap_err();
    assert!(matches!(err, ProxyError::NotYetValid { .. }), "{err:?}");
}

#[test]
fn expired_user_certificate() {
    let pki = Pki::with_user(USER_DN, NOW - 400 * DAY, NOW - DAY);
    let err = read(&pki.proxy_file(vec![]), &pki.trust()).unwrap_err();
    match &err {
        ProxyError::Expired { subject, not_after } => {
            assert_eq!(*subject, format!("\"{USER_DN}\""));
            assert_eq!(*not_after, at(NOW - DAY));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn forged_proxy() {
    let pki = Pki::new();
    let spec = pki.proxy_spec(vec![]);
    let key = Key::ec();
    let forger = Key::ec();
    let proxy = cert(&spec, &key, &forger);
    let file = format!(
        "{}{}{}",
        pem_block("CERTIFICATE", &proxy),
        key.pem(),
        pem_block("CERTIFICATE", &pki.user_cert)
    );
    let err = read(&file, &pki.trust()).unwrap_err();
    match &err {
        ProxyError::Untrusted {
            subject,
            issuer,
            reason,
        } => {
            assert_eq!(*subject, format!("\"{USER_DN}/CN=987654321\""));
            assert_eq!(*issuer, format!("\"{USER_DN}\""));
            assert!(reason.contains("does not verify"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn user_certificate_from_unknown_ca() {
    let pki = Pki::new();
    let file = pki.proxy_file(vec![]);

    // A CA with the same name but another key: the user certificate looks forged.
    let other = Pki::new();
    let other_ca = Key::ec();
    let impostor = cert(
        &CertSpec {
            serial: 1,
            issuer: other.ca_dn.clone(),
            subject: other.ca_dn.clone(),
            not_before: NOW - DAY,
            not_after: NOW + DAY,
            extensions: vec![basic_constraints_ca()],
        },
        &other_ca,
        &other_ca,
    );
    other.put(
        "certificates/impostor.pem",
        pem_block("CERTIFICATE", &impostor).as_bytes(),
    );
    let trust = TrustStore::load(&other.dir.path().join("certificates"), None).unwrap();
    let err = read(&file, &trust).unwrap_err();
    match &err {
        ProxyError::Untrusted {
            subject,
            issuer,
            reason,
        } => {
            assert_eq!(*subject, format!("\"{USER_DN}\""));
            assert_eq!(*issuer, format!("\"{CA_DN}\""));
            assert!(reason.contains("does not verify"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }

    // A CA of another name.
    let trust = TrustStore::load(&other.dir.path().join("certificates"), None).unwrap();
    let stranger = Pki::new();
    let ca_key = Key::ec();
    let ca_dn = Dn::parse("/C=XX/O=Nowhere/CN=Unknown CA");
    let user = cert(
        &CertSpec {
            serial: USER_SERIAL,
            issuer: ca_dn,
            subject: stranger.user_dn.clone(),
            not_before: NOW - DAY,
            not_after: NOW + DAY,
            extensions: vec![],
        },
        &stranger.user_key,
        &ca_key,
    );
    let key = Key::ec();
    let proxy = cert(&stranger.proxy_spec(vec![]), &key, &stranger.user_key);
    let file = format!(
        "{}{}{}",
        pem_block("CERTIFICATE", &proxy),
        key.pem(),
        pem_block("CERTIFICATE", &user)
    );
    let err = read(&file, &trust).unwrap_err();
    match &err {
        ProxyError::Untrusted { issuer, reason, .. } => {
            assert_eq!(*issuer, "\"/C=XX/O=Nowhere/CN=Unknown CA\"");
            assert!(reason.contains("no CA certificate"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("is not trusted"), "{err}");
}

#[test]
fn ac_signed_by_unknown_voms_server() {
    let pki = Pki::new();
    let rogue = Key::ec();
    let file = pki.proxy_file(vec![voms_extension(&[ac(
        &pki.ac_spec(&[ROLE_PROD]),
        &rogue,
    )])]);
    let err = read(&file, &pki.trust()).unwrap_err();
    match &err {
        ProxyError::Untrusted {
            subject,
            issuer,
            reason,
        } => {
            assert_eq!(*subject, "VOMS attribute certificate of VO \"atlas\"");
            assert_eq!(*issuer, format!("\"{VOMS_DN}\""));
            assert!(reason.contains("does not verify"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }

    // An issuer name the vomsdir does not know.
    let mut spec = pki.ac_spec(&[ROLE_PROD]);
    spec.issuer = Dn::parse("/DC=org/CN=voms.example.org");
    let file = pki.proxy_file(vec![voms_extension(&[ac(&spec, &pki.voms_key)])]);
    let err = read(&file, &pki.trust()).unwrap_err();
    assert!(
        err.to_string()
            .contains("no VOMS server certificate with that subject"),
        "{err}"
    );
}

#[test]
fn ac_of_vo_without_trust() {
    let pki = Pki::new();
    let mut spec = pki.ac_spec(&["/cms/Role=NULL/Capability=NULL"]);
    spec.authority = Some("cms://voms-cms.cern.ch:15002".into());
    let file = pki.proxy_file(vec![voms_extension(&[ac(&spec, &pki.voms_key)])]);
    for trust in [pki.trust(), pki.trust_ca_only()] {
        let err = read(&file, &trust).unwrap_err();
        match &err {
            ProxyError::Untrusted {
                subject, reason, ..
            } => {
                assert_eq!(*subject, "VOMS attribute certificate of VO \"cms\"");
                assert!(reason.contains("for VO \"cms\""), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn ac_expired() {
    let pki = Pki::new();
    let mut spec = pki.ac_spec(&[ROLE_PROD]);
    spec.not_before = NOW - 30 * HOUR;
    spec.not_after = NOW - 6 * HOUR;
    let file = pki.proxy_file(vec![voms_extension(&[ac(&spec, &pki.voms_key)])]);
    let err = read(&file, &pki.trust()).unwrap_err();
    match &err {
        ProxyError::AcExpired { vo, not_after } => {
            assert_eq!(vo, "atlas");
            assert_eq!(*not_after, at(NOW - 6 * HOUR));
        }
        other => panic!("unexpected {other:?}"),
    }

    let mut spec = pki.ac_spec(&[ROLE_PROD]);
    spec.not_before = NOW + HOUR;
    let file = pki.proxy_file(vec![voms_extension(&[ac(&spec, &pki.voms_key)])]);
    let err = read(&file, &pki.trust()).unwrap_err();
    assert!(matches!(err, ProxyError::AcNotYetValid { .. }), "{err:?}");
}

#[test]
fn ac_of_another_user() {
    let pki = Pki::new();
    let mut spec = pki.ac_spec(&[ROLE_PROD]);
    spec.holder_serial = USER_SERIAL + 1;
    let file = pki.proxy_file(vec![voms_extension(&[ac(&spec, &pki.voms_key)])]);
    let err = read(&file, &pki.trust()).unwrap_err();
    assert!(matches!(err, ProxyError::BadAc { .. }), "{err:?}");
    assert!(err.to_string().contains("holder"), "{err}");

    let mut spec = pki.ac_spec(&[ROLE_PROD]);
    spec.holder_issuer = Dn::parse("/DC=org/CN=Another CA");
    let file = pki.proxy_file(vec![voms_extension(&[ac(&spec, &pki.voms_key)])]);
    let err = read(&file, &pki.trust()).unwrap_err();
    assert!(err.to_string().contains("holder"), "{err}");

    // The VOMS Java libraries name the holder certificate's subject instead of its issuer;
    // the VOMS C library accepts both.
    let mut spec = pki.ac_spec(&[ROLE_PROD]);
    spec.holder_issuer = pki.user_dn.clone();
    let file = pki.proxy_file(vec![voms_extension(&[ac(&spec, &pki.voms_key)])]);
    assert!(read(&file, &pki.trust()).is_ok());
}

#[test]
fn fqan_of_another_vo() {
    let pki = Pki::new();
    let file = pki.proxy_file(vec![voms_extension(&[pki.ac(&[ROLE_PROD, "/cms/Role=x"])])]);
    let err = read(&file, &pki.trust()).unwrap_err();
    match &err {
        ProxyError::BadFqan { fqan, reason } => {
            assert_eq!(fqan, "\"/cms/Role=x\"");
            assert!(reason.contains("VO \"atlas\""), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }

    // Without a policy authority the VO is the first FQAN's.
    let mut spec = pki.ac_spec(&[HIGGS]);
    spec.authority = None;
    let file = pki.proxy_file(vec![voms_extension(&[ac(&spec, &pki.voms_key)])]);
    let id = read(&file, &pki.trust()).unwrap();
    assert_eq!(id.fqans, ["/atlas/higgs"]);
}

#[test]
fn malformed_fqans() {
    let pki = Pki::new();
    for bad in [
        "/atlas/hi\"ggs",
        "/atlas/a\nb",
        "/atlas/a\0b",
        "atlas",
        "/atlas/../x",
    ] {
        let file = pki.proxy_file(vec![voms_extension(&[pki.ac(&[bad])])]);
        let err = read(&file, &pki.trust()).unwrap_err();
        assert!(
            matches!(err, ProxyError::BadFqan { .. }),
            "{bad:?}: {err:?}"
        );
        let msg = err.to_string();
        assert!(!msg.contains('\n') && !msg.contains('\0'), "{msg:?}");
    }
}

#[test]
fn too_many_fqans() {
    let pki = Pki::new();
    let fqans: Vec<String> = (0..65).map(|i| format!("/atlas/g{i}")).collect();
    let refs: Vec<&str> = fqans.iter().map(String::as_str).collect();
    let file = pki.proxy_file(vec![voms_extension(&[pki.ac(&refs)])]);
    let err = read(&file, &pki.trust()).unwrap_err();
    assert!(
        matches!(err, ProxyError::TooManyFqans { max: 64 }),
        "{err:?}"
    );

    let id = read(
        &pki.proxy_file(vec![voms_extension(&[pki.ac(&refs[..64])])]),
        &pki.trust(),
    )
    .unwrap();
    assert_eq!(id.fqans.len(), 64);
    assert_eq!(id.fqans[0], "/atlas/g0");
}

#[test]
fn unsupported_critical_ac_extension() {
    let pki = Pki::new();
    let mut spec = pki.ac_spec(&[ROLE_PROD]);
    spec.extra_extensions = vec![ext("2.5.29.55", true, &der::seq(&[]))];
    let file = pki.proxy_file(vec![voms_extension(&[ac(&spec, &pki.voms_key)])]);
    let err = read(&file, &pki.trust()).unwrap_err();
    assert!(err.to_string().contains("targets"), "{err}");

    let mut spec = pki.ac_spec(&[ROLE_PROD]);
    spec.extra_extensions = vec![ext("1.2.3.4", true, &der::null())];
    let file = pki.proxy_file(vec![voms_extension(&[ac(&spec, &pki.voms_key)])]);
    let err = read(&file, &pki.trust()).unwrap_err();
    assert!(
        err.to_string().contains("critical extension 1.2.3.4"),
        "{err}"
    );
}

#[test]
fn dn_with_forbidden_characters() {
    for (dn, what) in [
        ("/DC=ch/DC=cern/CN=John \"JD\" Doe", "'\"'"),
        ("/DC=ch/DC=cern/CN=John\nDoe", "'\\n'"),
        ("/DC=ch/DC=cern/CN=John\0Doe", "'\\0'"),
    ] {
        let pki = Pki::with_user(dn, NOW - DAY, NOW + DAY);
        let err = read(&pki.proxy_file(vec![]), &pki.trust()).unwrap_err();
        match &err {
            ProxyError::BadDn { dn, reason } => {
                assert!(dn.starts_with("\"/DC=ch/DC=cern/CN=John"), "{dn}");
                assert!(dn.contains("\\x"), "{dn}");
                assert!(reason.contains(what), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(!msg.contains('\n') && !msg.contains('\0'), "{msg:?}");
        assert!(
            msg.starts_with("subject DN \"/DC=ch/DC=cern/CN=John"),
            "{msg:?}"
        );
    }
}

#[test]
fn dn_attribute_names() {
    let dn = Dn::new(&[
        ("C", "DE"),
        ("ST", "Berlin"),
        ("L", "Berlin"),
        ("O", "GridKa"),
        ("OU", "Users"),
        ("UID", "jdoe"),
        ("emailAddress", "jdoe@example.org"),
        ("CN", "host/grid.example.org"),
        ("CN", "Jörg Doe"),
    ]);
    let want = "/C=DE/ST=Berlin/L=Berlin/O=GridKa/OU=Users/UID=jdoe\
                /emailAddress=jdoe@example.org/CN=host/grid.example.org/CN=Jörg Doe";
    assert_eq!(dn.slash(), want);
    let mut pki = Pki::new();
    let user_cert = cert(
        &CertSpec {
            serial: USER_SERIAL,
            issuer: pki.ca_dn.clone(),
            subject: dn.clone(),
            not_before: NOW - DAY,
            not_after: NOW + DAY,
            extensions: vec![],
        },
        &pki.user_key,
        &pki.ca_key,
    );
    pki.user_dn = dn;
    pki.user_cert = user_cert;
    let id = read(&pki.proxy_file(vec![]), &pki.trust()).unwrap();
    assert_eq!(id.dn, want);
}

#[test]
fn garbage_input() {
    let pki = Pki::new();
    let trust = pki.trust();
    let cases: &[(&[u8], &str)] = &[
        (b"", "not a valid PEM proxy file"),
        (b"hello world\n", "not a valid PEM proxy file"),
        (&[0xff, 0x00, 0x13, 0x37], "not a valid PEM proxy file"),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "certificate 1 of the proxy file is malformed",
        ),
        (
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            "invalid base64",
        ),
        (
            b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            "no certificate",
        ),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n", "has no END line"),
    ];
    for (input, want) in cases {
        let err = read_proxy(input, &trust, now()).unwrap_err();
        assert!(err.to_string().contains(want), "{input:?}: {err}");
    }
}

#[test]
fn too_many_certificates() {
    let pki = Pki::new();
    let block = pem_block("CERTIFICATE", &pki.user_cert);
    let err = read(&block.repeat(11), &pki.trust()).unwrap_err();
    assert!(
        matches!(err, ProxyError::TooManyCertificates { count: 11, max: 10 }),
        "{err:?}"
    );
}

#[test]
fn the_key_is_never_shown() {
    let pki = Pki::new();
    // A key block with content that would be an error if it were decoded.
    let file = pki.proxy_file(vec![]).replace(
        "-----BEGIN PRIVATE KEY-----\n",
        "-----BEGIN PRIVATE KEY-----\nSECRET%%\n",
    );
    assert!(read(&file, &pki.trust()).is_ok());
    // An error elsewhere does not quote it either.
    let broken = format!("{file}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    let err = read(&broken, &pki.trust());
    if let Err(e) = err {
        assert!(!format!("{e} {e:?}").contains("SECRET"), "{e}");
    }
}

#[test]
fn user_certificate_alone_is_not_a_proxy() {
    let pki = Pki::new();
    let file = pem_block("CERTIFICATE", &pki.user_cert);
    let err = read(&file, &pki.trust()).unwrap_err();
    assert!(matches!(err, ProxyError::BadProxy { .. }), "{err:?}");

    // User certificate followed by its CA: the first certificate is not a proxy.
    let file = format!("{file}{}", pem_block("CERTIFICATE", &pki.ca_cert));
    let err = read(&file, &pki.trust()).unwrap_err();
    assert!(
        err.to_string().contains("is not a proxy certificate"),
        "{err}"
    );
}

#[test]
fn ca_cannot_issue_proxies() {
    // A user certificate named like a legacy proxy of its CA, followed by the CA certificate:
    // the CA must not become the identity.
    let pki = Pki::new();
    let user_cert = cert(
        &CertSpec {
            serial: USER_SERIAL,
            issuer: pki.ca_dn.clone(),
            subject: pki.ca_dn.with_cn("proxy"),
            not_before: NOW - DAY,
            not_after: NOW + DAY,
            extensions: vec![],
        },
        &pki.user_key,
        &pki.ca_key,
    );
    let file = format!(
        "{}{}",
        pem_block("CERTIFICATE", &user_cert),
        pem_block("CERTIFICATE", &pki.ca_cert)
    );
    let err = read(&file, &pki.trust()).unwrap_err();
    assert!(err.to_string().contains("is a CA certificate"), "{err}");
}

#[test]
fn ca_certificate_appended_is_ignored() {
    let pki = Pki::new();
    let file = format!(
        "{}{}",
        pki.proxy_file(vec![]),
        pem_block("CERTIFICATE", &pki.ca_cert)
    );
    assert_eq!(read(&file, &pki.trust()).unwrap().dn, USER_DN);
}

#[test]
fn proxy_subject_must_extend_the_issuer() {
    let pki = Pki::new();
    let mut spec = pki.proxy_spec(vec![]);
    spec.subject = Dn::parse("/DC=ch/DC=cern/CN=somebody else/CN=1");
    let err = read(&pki.proxy_file_from(&spec), &pki.trust()).unwrap_err();
    assert!(err.to_string().contains("plus one CN"), "{err}");

    let mut spec = pki.proxy_spec(vec![]);
    spec.subject = pki.user_dn.clone();
    spec.subject.0.push(("OU".into(), "x".into()));
    let err = read(&pki.proxy_file_from(&spec), &pki.trust()).unwrap_err();
    assert!(matches!(err, ProxyError::BadProxy { .. }), "{err:?}");
}

/// The EEC → proxy 1 (with the ACs) → proxy 2 → proxy 3, as after two delegations.
fn delegated(pki: &Pki, first_exts: Vec<Vec<u8>>, path_len: Option<u64>) -> String {
    let k1 = Key::ec();
    let mut s1 = pki.proxy_spec(first_exts);
    if path_len.is_some() {
        s1.extensions
            .retain(|e| !e.windows(8).any(|w| w == [0x2b, 6, 1, 5, 5, 7, 1, 14]));
        s1.extensions.push(proxy_cert_info(path_len));
    }
    let p1 = cert(&s1, &k1, &pki.user_key);
    let k2 = Key::ec();
    let s2 = CertSpec {
        serial: 2,
        issuer: s1.subject.clone(),
        subject: s1.subject.with_cn("222"),
        not_before: NOW - HOUR,
        not_after: NOW + 5 * HOUR,
        extensions: vec![proxy_cert_info(None)],
    };
    let p2 = cert(&s2, &k2, &k1);
    let k3 = Key::ec();
    let s3 = CertSpec {
        serial: 3,
        issuer: s2.subject.clone(),
        subject: s2.subject.with_cn("333"),
        not_before: NOW - HOUR,
        not_after: NOW + 8 * HOUR,
        extensions: vec![proxy_cert_info(None)],
    };
    let p3 = cert(&s3, &k3, &k2);
    format!(
        "{}{}{}{}{}",
        pem_block("CERTIFICATE", &p3),
        k3.pem(),
        pem_block("CERTIFICATE", &p2),
        pem_block("CERTIFICATE", &p1),
        pem_block("CERTIFICATE", &pki.user_cert),
    )
}

#[test]
fn delegated_proxies() {
    let pki = Pki::new();
    let file = delegated(
        &pki,
        vec![voms_extension(&[pki.ac(&[HIGGS, ROLE_PROD])])],
        None,
    );
    let id = read(&file, &pki.trust()).unwrap();
    assert_eq!(id.dn, USER_DN);
    assert_eq!(id.fqans, ["/atlas/higgs", "/atlas/Role=production"]);
    assert_eq!(id.vo.as_deref(), Some("atlas"));
    assert_eq!(id.not_after, at(NOW + 5 * HOUR));

    // Path length constraints: 2 proxies below the first one.
    assert!(read(&delegated(&pki, vec![], Some(2)), &pki.trust()).is_ok());
    let err = read(&delegated(&pki, vec![], Some(1)), &pki.trust()).unwrap_err();
    assert!(err.to_string().contains("path length"), "{err}");
}

#[test]
fn legacy_proxy() {
    let pki = Pki::new();
    let mut spec = pki.proxy_spec(vec![]);
    spec.extensions = vec![];
    spec.subject = pki.user_dn.with_cn("proxy");
    let id = read(&pki.proxy_file_from(&spec), &pki.trust()).unwrap();
    assert_eq!(id.dn, USER_DN);

    // Without the extension, any other CN is not a proxy.
    spec.subject = pki.user_dn.with_cn("12345");
    let err = read(&pki.proxy_file_from(&spec), &pki.trust()).unwrap_err();
    assert!(err.to_string().contains("not a proxy certificate"), "{err}");
}

#[test]
fn independent_and_unknown_proxy_policies() {
    let pki = Pki::new();
    for (lang, want) in [
        ("1.3.6.1.5.5.7.21.2", "independent"),
        ("1.2.3.4.5", "unsupported proxy policy language 1.2.3.4.5"),
    ] {
        let mut spec = pki.proxy_spec(vec![]);
        spec.extensions = vec![proxy_cert_info_lang(None, lang)];
        let err = read(&pki.proxy_file_from(&spec), &pki.trust()).unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
    // Limited proxies are fine.
    let mut spec = pki.proxy_spec(vec![]);
    spec.extensions = vec![proxy_cert_info_lang(None, "1.3.6.1.4.1.3536.1.1.1.9")];
    assert!(read(&pki.proxy_file_from(&spec), &pki.trust()).is_ok());
}

#[test]
fn proxy_must_not_be_a_ca_and_issuer_must_sign() {
    let pki = Pki::new();
    let err = read(&pki.proxy_file(vec![basic_constraints_ca()]), &pki.trust()).unwrap_err();
    assert!(err.to_string().contains("must not be a CA"), "{err}");

    // A user certificate whose keyUsage excludes digitalSignature cannot sign proxies.
    let user_key = Key::ec();
    let user_cert = cert(
        &CertSpec {
            serial: USER_SERIAL,
            issuer: pki.ca_dn.clone(),
            subject: pki.user_dn.clone(),
            not_before: NOW - DAY,
            not_after: NOW + DAY,
            extensions: vec![key_usage_no_signature()],
        },
        &user_key,
        &pki.ca_key,
    );
    let key = Key::ec();
    let proxy = cert(&pki.proxy_spec(vec![]), &key, &user_key);
    let file = format!(
        "{}{}",
        pem_block("CERTIFICATE", &proxy),
        pem_block("CERTIFICATE", &user_cert)
    );
    let err = read(&file, &pki.trust()).unwrap_err();
    assert!(err.to_string().contains("digitalSignature"), "{err}");
}

#[test]
fn lsc_trust() {
    let pki = Pki::new();
    let ca_dir = pki.ca_dir();
    let lsc = format!("# VOMS server of atlas\n{VOMS_DN}\n{CA_DN}\n");
    pki.put("vomsdir/atlas/voms-atlas.cern.ch.lsc", lsc.as_bytes());
    let trust = TrustStore::load(&ca_dir, Some(&pki.vomsdir())).unwrap();
    assert_eq!(trust.vos().collect::<Vec<_>>(), ["atlas"]);

    let mut spec = pki.ac_spec(&[ROLE_PROD]);
    spec.chain = vec![pki.voms_cert.clone()];
    let file = pki.proxy_file(vec![voms_extension(&[ac(&spec, &pki.voms_key)])]);
    let id = read(&file, &trust).unwrap();
    assert_eq!(id.fqans, ["/atlas/Role=production"]);

    // Without the chain in the AC, the .lsc file cannot be used.
    let file = pki.proxy_file(vec![voms_extension(&[pki.ac(&[ROLE_PROD])])]);
    let err = read(&file, &trust).unwrap_err();
    assert!(err.to_string().contains("no certificate chain"), "{err}");

    // A chain whose DNs differ from the .lsc file.
    let other = Pki::new();
    pki.put(
        "vomsdir/atlas/voms-atlas.cern.ch.lsc",
        format!("{VOMS_DN}\n/DC=ch/DC=cern/CN=Another CA\n").as_bytes(),
    );
    let trust = TrustStore::load(&ca_dir, Some(&pki.vomsdir())).unwrap();
    let file = pki.proxy_file(vec![voms_extension(&[ac(&spec, &pki.voms_key)])]);
    let err = read(&file, &trust).unwrap_err();
    assert!(err.to_string().contains("matches no .lsc file"), "{err}");

    // The right DNs, but a VOMS certificate from a CA key the trust store does not have.
    pki.put("vomsdir/atlas/voms-atlas.cern.ch.lsc", lsc.as_bytes());
    let trust = TrustStore::load(&ca_dir, Some(&pki.vomsdir())).unwrap();
    let forged_voms = cert(
        &CertSpec {
            serial: 78,
            issuer: pki.ca_dn.clone(),
            subject: pki.voms_dn.clone(),
            not_before: NOW - DAY,
            not_after: NOW + DAY,
            extensions: vec![],
        },
        &other.voms_key,
        &other.user_key,
    );
    spec.chain = vec![forged_voms];
    let file = pki.proxy_file(vec![voms_extension(&[ac(&spec, &other.voms_key)])]);
    let err = read(&file, &trust).unwrap_err();
    assert!(matches!(err, ProxyError::Untrusted { .. }), "{err:?}");
    assert!(err.to_string().contains("does not verify"), "{err}");
}

#[test]
fn rsa_user_certificate() {
    // The CA is RSA in every test; here the user and the proxy are RSA as well.
    let pki = Pki::new();
    let user_cert = cert(
        &CertSpec {
            serial: USER_SERIAL,
            issuer: pki.ca_dn.clone(),
            subject: pki.user_dn.clone(),
            not_before: NOW - DAY,
            not_after: NOW + DAY,
            extensions: vec![key_usage_user()],
        },
        &pki.ca_key,
        &pki.ca_key,
    );
    let proxy = cert(&pki.proxy_spec(vec![]), &pki.ca_key, &pki.ca_key);
    let file = format!(
        "{}{}",
        pem_block("CERTIFICATE", &proxy),
        pem_block("CERTIFICATE", &user_cert)
    );
    assert_eq!(read(&file, &pki.trust()).unwrap().dn, USER_DN);
}

#[test]
fn trust_store_loading() {
    let pki = Pki::new();
    let ca_dir = pki.ca_dir();
    // The usual layout: hashed symlinks to the .pem, CRLs, signing policies, files that are
    // not read (namespaces, CRL URLs), a broken file.
    std::os::unix::fs::symlink("cern-ca.pem", ca_dir.join("1d879c6c.0")).unwrap();
    pki.put(
        "certificates/1d879c6c.r0",
        pem_block("X509 CRL", &pki.crl(&[5])).as_bytes(),
    );
    pki.put(
        "certificates/1d879c6c.signing_policy",
        signing_policy(CA_DN, &["/DC=ch/DC=cern/*"]).as_bytes(),
    );
    pki.put("certificates/1d879c6c.namespaces", b"not read");
    pki.put("certificates/cern-ca.crl_url", b"not read");
    pki.put(
        "certificates/broken.pem",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    pki.put(
        "vomsdir/atlas/voms.pem",
        pem_block("CERTIFICATE", &pki.voms_cert).as_bytes(),
    );
    pki.put(
        "vomsdir/bad name/voms.pem",
        pem_block("CERTIFICATE", &pki.voms_cert).as_bytes(),
    );
    pki.put("vomsdir/stray.pem", b"");
    pki.put("vomsdir/cms/broken.lsc", b"not a DN\n");
    let trust = TrustStore::load_at(&ca_dir, Some(&pki.vomsdir()), now()).unwrap();
    assert_eq!(trust.ca_count(), 1);
    assert_eq!(trust.crl_count(), 1);
    assert_eq!(trust.signing_policy_count(), 1);
    assert_eq!(trust.vos().collect::<Vec<_>>(), ["atlas"]);
    assert!(read(&pki.proxy_file(vec![]), &trust).is_ok());
    let skipped: Vec<String> = trust
        .skipped()
        .iter()
        .map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        skipped,
        ["broken.pem", "bad name", "broken.lsc", "stray.pem"]
    );
    assert!(format!("{trust:?}").contains("cas: 1, crls: 1, signing_policies: 1"));

    let empty = tempfile::tempdir().unwrap();
    let err = TrustStore::load(empty.path(), None).unwrap_err();
    assert!(matches!(err, ProxyError::NoTrustAnchors { .. }), "{err:?}");
    let err = TrustStore::load(&empty.path().join("missing"), None).unwrap_err();
    assert!(matches!(err, ProxyError::Io { .. }), "{err:?}");
    assert!(err.to_string().starts_with("read directory "), "{err}");
    let err = TrustStore::load(&ca_dir, Some(&empty.path().join("missing"))).unwrap_err();
    assert!(matches!(err, ProxyError::Io { .. }), "{err:?}");
}

#[test]
fn expired_ca() {
    let pki = Pki::new();
    let ca = cert(
        &CertSpec {
            serial: 1,
            issuer: pki.ca_dn.clone(),
            subject: pki.ca_dn.clone(),
            not_before: NOW - 3650 * DAY,
            not_after: NOW - DAY,
            extensions: vec![basic_constraints_ca()],
        },
        &pki.ca_key,
        &pki.ca_key,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), pem_block("CERTIFICATE", &ca)).unwrap();
    let trust = TrustStore::load(dir.path(), None).unwrap();
    let err = read(&pki.proxy_file(vec![]), &trust).unwrap_err();
    match &err {
        ProxyError::Expired { subject, .. } => assert_eq!(*subject, format!("\"{CA_DN}\"")),
        other => panic!("unexpected {other:?}"),
    }
}
