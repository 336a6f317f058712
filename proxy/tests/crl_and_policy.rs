//! CRLs and signing policies of the CA directory (see `TrustStore::load`), with CAs, CRLs and
//! policies generated at run time (see `common/mod.rs`).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use dms_proxy::{read_proxy, ProxyError, ProxyIdentity, TrustStore};

const ROLE_PROD: &str = "/atlas/Role=production/Capability=NULL";

fn read(file: &str, trust: &TrustStore) -> Result<ProxyIdentity, ProxyError> {
    read_proxy(file.as_bytes(), trust, now())
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// The skipped files' names and reasons.
fn skipped(trust: &TrustStore) -> Vec<(String, String)> {
    trust
        .skipped()
        .iter()
        .map(|s| (file_name(&s.path), s.reason.clone()))
        .collect()
}

fn put_crl_pem(pki: &Pki, name: &str, der: &[u8]) -> PathBuf {
    pki.put(
        &format!("certificates/{name}"),
        pem_block("X509 CRL", der).as_bytes(),
    )
}

/// The PKI with another CA in its CA directory (`example-ca.pem`).
fn with_other_ca(pki: &Pki) -> OtherCa {
    let other = OtherCa::new();
    pki.put(
        "certificates/example-ca.pem",
        pem_block("CERTIFICATE", &other.cert).as_bytes(),
    );
    other
}

#[test]
fn no_crl_and_no_signing_policy_is_accepted() {
    let pki = Pki::new();
    let trust = pki.trust();
    assert_eq!(trust.crl_count(), 0);
    assert_eq!(trust.signing_policy_count(), 0);
    assert_eq!(trust.crl_next_update(), None);
    assert!(trust.skipped().is_empty(), "{:?}", trust.skipped());
    let file = pki.proxy_file(vec![voms_extension(&[pki.ac(&[ROLE_PROD])])]);
    assert_eq!(read(&file, &trust).unwrap().dn, USER_DN);
}

#[test]
fn revoked_user_certificate() {
    let pki = Pki::new();
    pki.ca_dir_hashed();
    let path = put_crl_pem(&pki, "1d879c6c.r0", &pki.crl(&[5, USER_SERIAL, 6]));
    let trust = pki.reload();
    assert!(trust.skipped().is_empty(), "{:?}", trust.skipped());
    assert_eq!(trust.crl_count(), 1);
    assert_eq!(trust.crl_next_update(), Some(at(NOW + 6 * DAY)));
    let err = read(&pki.proxy_file(vec![]), &trust).unwrap_err();
    match &err {
        ProxyError::Revoked {
            subject,
            serial,
            issuer,
            revoked_at,
        } => {
            assert_eq!(*subject, format!("\"{USER_DN}\""));
            assert_eq!(serial, "123456789ABC");
            assert_eq!(*issuer, format!("\"{CA_DN}\""));
            assert_eq!(*revoked_at, at(NOW - 2 * DAY));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "certificate \"{USER_DN}\" (serial number 123456789ABC) is revoked: the CRL of its \
             CA \"{CA_DN}\" lists it as revoked at 2030-03-15T17:46:40Z"
        )
    );

    // The same CRL in DER.
    std::fs::remove_file(&path).unwrap();
    pki.put("certificates/1d879c6c.r0", &pki.crl(&[USER_SERIAL]));
    let err = read(&pki.proxy_file(vec![]), &pki.reload()).unwrap_err();
    assert!(matches!(err, ProxyError::Revoked { .. }), "{err:?}");

    // A CRL that does not list the user.
    pki.put("certificates/1d879c6c.r0", &pki.crl(&[USER_SERIAL + 1, 1]));
    let trust = pki.trust();
    let file = pki.proxy_file(vec![voms_extension(&[pki.ac(&[ROLE_PROD])])]);
    assert_eq!(read(&file, &trust).unwrap().dn, USER_DN);
}

#[test]
fn revoked_user_with_a_hostile_dn_is_escaped() {
    let pki = Pki::with_user("/DC=ch/DC=cern/CN=John\nDoe \"x\"", NOW - DAY, NOW + DAY);
    pki.ca_dir();
    put_crl_pem(&pki, "1d879c6c.r0", &pki.crl(&[USER_SERIAL]));
    let err = read(&pki.proxy_file(vec![]), &pki.reload()).unwrap_err();
    assert!(matches!(err, ProxyError::Revoked { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "{msg:?}");
    assert!(msg.contains("John\\x0aDoe \\x22x\\x22"), "{msg:?}");
}

#[test]
fn expired_crl() {
    let pki = Pki::new();
    pki.ca_dir();
    let mut spec = pki.crl_spec(&[5]);
    spec.this_update = NOW - 8 * DAY;
    spec.next_update = Some(NOW - HOUR);
    put_crl_pem(&pki, "1d879c6c.r0", &crl(&spec, &pki.ca_key));
    let trust = pki.reload();
    // Expiry is a matter of the time of use, not a reason to skip the file.
    assert!(trust.skipped().is_empty(), "{:?}", trust.skipped());
    assert_eq!(trust.crl_next_update(), Some(at(NOW - HOUR)));
    let err = read(&pki.proxy_file(vec![]), &trust).unwrap_err();
    match &err {
        ProxyError::CrlExpired {
            ca,
            file,
            next_update,
        } => {
            assert_eq!(*ca, format!("\"{CA_DN}\""));
            assert_eq!(file_name(file), "1d879c6c.r0");
            assert_eq!(*next_update, at(NOW - HOUR));
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.starts_with("the CRL /") && msg.contains("/certificates/1d879c6c.r0 of CA"),
        "{msg}"
    );
    assert!(msg.contains("expired at 2030-03-17T16:46:40Z"), "{msg}");
    assert!(msg.contains("run fetch-crl"), "{msg}");
    // A proxy read until the CRL expired was fine.
    assert!(read_proxy(pki.proxy_file(vec![]).as_bytes(), &trust, at(NOW - HOUR)).is_ok());

    // One current CRL of the CA is enough (an old file left behind does not lock users out).
    put_crl_pem(&pki, "1d879c6c.r1", &pki.crl(&[5]));
    assert!(read(&pki.proxy_file(vec![]), &pki.reload()).is_ok());

    // A CRL without nextUpdate does not expire.
    let mut spec = pki.crl_spec(&[5]);
    spec.next_update = None;
    std::fs::remove_file(pki.dir.path().join("certificates/1d879c6c.r1")).unwrap();
    put_crl_pem(&pki, "1d879c6c.r0", &crl(&spec, &pki.ca_key));
    let trust = pki.reload();
    assert_eq!(trust.crl_next_update(), None);
    assert!(read(&pki.proxy_file(vec![]), &trust).is_ok());
}

#[test]
fn crl_not_valid_yet() {
    let pki = Pki::new();
    pki.ca_dir();
    let mut spec = pki.crl_spec(&[5]);
    spec.this_update = NOW + HOUR;
    put_crl_pem(&pki, "1d879c6c.r0", &crl(&spec, &pki.ca_key));
    let trust = pki.reload();
    let skipped = skipped(&trust);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].0, "1d879c6c.r0");
    assert!(
        skipped[0]
            .1
            .contains("not valid before 2030-03-17T18:46:40Z"),
        "{skipped:?}"
    );
    assert!(skipped[0].1.contains(CA_DN), "{skipped:?}");
    let err = read(&pki.proxy_file(vec![]), &trust).unwrap_err();
    match &err {
        ProxyError::BadCrl { ca, file, reason } => {
            assert_eq!(*ca, format!("\"{CA_DN}\""));
            assert_eq!(file_name(file), "1d879c6c.r0");
            assert!(reason.contains("thisUpdate is in the future"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    // Once the CRL is valid, it is used.
    assert!(read_proxy(
        pki.proxy_file(vec![]).as_bytes(),
        &trust,
        at(NOW + 2 * HOUR)
    )
    .is_ok());
}

#[test]
fn forged_crl_fails_closed_for_its_ca_only() {
    let pki = Pki::new();
    let other = with_other_ca(&pki);
    pki.ca_dir();
    // Signed by a key that is not the CA's: whoever wrote it, the CA's real CRL is not there.
    let forged = crl(&pki.crl_spec(&[5]), &Key::ec());
    put_crl_pem(&pki, "1d879c6c.r0", &forged);
    let trust = pki.reload();
    let skipped = skipped(&trust);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].0, "1d879c6c.r0");
    assert!(skipped[0].1.contains("does not verify"), "{skipped:?}");
    assert!(
        skipped[0]
            .1
            .contains(&format!("certificates issued by \"{CA_DN}\" are refused")),
        "{skipped:?}"
    );
    assert_eq!(trust.crl_count(), 0);

    let err = read(&pki.proxy_file(vec![]), &trust).unwrap_err();
    match &err {
        ProxyError::BadCrl { ca, file, reason } => {
            assert_eq!(*ca, format!("\"{CA_DN}\""));
            assert_eq!(file_name(file), "1d879c6c.r0");
            assert!(reason.contains("does not verify"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with(&format!("CA \"{CA_DN}\" is refused: its CRL file /")),
        "{err}"
    );
    // The other CA is not affected.
    assert_eq!(read(&other.proxy_file(), &trust).unwrap().dn, OTHER_USER_DN);

    // A CRL with a signature algorithm that differs inside and outside the signed part.
    let mut bad = pki.crl(&[5]);
    let ec_alg = Key::ec().alg();
    let rsa_alg = pki.ca_key.alg();
    let pos = bad
        .windows(rsa_alg.len())
        .rposition(|w| w == rsa_alg.as_slice())
        .unwrap();
    bad.splice(pos..pos + rsa_alg.len(), ec_alg);
    let len = bad.len() - 4;
    bad[2..4].copy_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
    put_crl_pem(&pki, "1d879c6c.r0", &bad);
    let err = read(&pki.proxy_file(vec![]), &pki.reload()).unwrap_err();
    assert!(
        err.to_string().contains("differs inside and outside"),
        "{err}"
    );
}

#[test]
fn unparsable_crl_fails_closed_for_the_ca_of_its_hash() {
    let pki = Pki::new();
    let other = with_other_ca(&pki);
    pki.ca_dir_hashed();
    for (content, want) in [
        (&b"a CRL"[..], "no \"-----BEGIN\" line"),
        (b"", "no \"-----BEGIN\" line"),
        (b"\x30\x03\x02\x01\x01", "not a valid CRL"),
        (
            b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
            "not a valid CRL",
        ),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "no \"X509 CRL\" block",
        ),
    ] {
        pki.put("certificates/1d879c6c.r0", content);
        let trust = pki.reload();
        let skipped = skipped(&trust);
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(skipped[0].1.contains(want), "{skipped:?}");
        assert!(skipped[0].1.contains("are refused"), "{skipped:?}");
        let err = read(&pki.proxy_file(vec![]), &trust).unwrap_err();
        match &err {
            ProxyError::BadCrl { file, reason, .. } => {
                assert_eq!(file_name(file), "1d879c6c.r0");
                assert!(reason.contains(want), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(read(&other.proxy_file(), &trust).is_ok());
    }
    // Trailing data after a DER CRL.
    let mut der = pki.crl(&[5]);
    der.push(0);
    pki.put("certificates/1d879c6c.r0", &der);
    let err = read(&pki.proxy_file(vec![]), &pki.reload()).unwrap_err();
    assert!(err.to_string().contains("trailing data"), "{err}");

    // A broken CRL of a hash no CA has is listed, and affects nobody.
    std::fs::remove_file(pki.dir.path().join("certificates/1d879c6c.r0")).unwrap();
    pki.put("certificates/abcdef01.r0", b"junk");
    let trust = pki.reload();
    let skipped = skipped(&trust);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0]
            .1
            .contains("no CA certificate of the directory is affected"),
        "{skipped:?}"
    );
    assert!(read(&pki.proxy_file(vec![]), &trust).is_ok());
    assert!(read(&other.proxy_file(), &trust).is_ok());
}

#[test]
fn crl_of_another_ca_does_not_affect_this_one() {
    let pki = Pki::new();
    let other = with_other_ca(&pki);
    pki.ca_dir();
    // The other CA revokes its user, whose serial number is the same as this PKI's user's.
    put_crl_pem(&pki, "0a0b0c0d.r0", &other.crl(&[USER_SERIAL]));
    let trust = pki.reload();
    assert!(trust.skipped().is_empty(), "{:?}", trust.skipped());
    assert_eq!(read(&pki.proxy_file(vec![]), &trust).unwrap().dn, USER_DN);
    let err = read(&other.proxy_file(), &trust).unwrap_err();
    match &err {
        ProxyError::Revoked {
            subject, issuer, ..
        } => {
            assert_eq!(*subject, format!("\"{OTHER_USER_DN}\""));
            assert_eq!(*issuer, format!("\"{OTHER_CA_DN}\""));
        }
        other => panic!("unexpected {other:?}"),
    }

    // An expired CRL of the other CA does not affect this one either.
    let expired = crl(
        &CrlSpec {
            issuer: other.dn.clone(),
            this_update: NOW - 10 * DAY,
            next_update: Some(NOW - DAY),
            revoked: vec![],
            extensions: vec![],
        },
        &other.key,
    );
    put_crl_pem(&pki, "0a0b0c0d.r0", &expired);
    let trust = pki.reload();
    assert!(read(&pki.proxy_file(vec![]), &trust).is_ok());
    let err = read(&other.proxy_file(), &trust).unwrap_err();
    assert!(matches!(err, ProxyError::CrlExpired { .. }), "{err:?}");

    // A CRL of a CA that is not in the directory is listed and ignored.
    std::fs::remove_file(pki.dir.path().join("certificates/example-ca.pem")).unwrap();
    let trust = pki.reload();
    let skipped = skipped(&trust);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0]
            .1
            .contains("which is not a CA certificate of the directory"),
        "{skipped:?}"
    );
    assert!(read(&pki.proxy_file(vec![]), &trust).is_ok());
}

#[test]
fn unusable_crl_contents() {
    let pki = Pki::new();
    pki.ca_dir();
    for (extensions, want) in [
        (vec![ext("2.5.29.27", true, &der::uint(41))], "delta CRL"),
        (
            // issuingDistributionPoint with onlyContainsCACerts.
            vec![ext(
                "2.5.29.28",
                true,
                &der::seq(&[der::tlv(0x82, &[0xff])]),
            )],
            "partial or indirect CRL",
        ),
        (
            vec![ext("1.2.3.4", true, &der::null())],
            "unsupported critical extension 1.2.3.4",
        ),
    ] {
        let mut spec = pki.crl_spec(&[5]);
        spec.extensions = extensions;
        put_crl_pem(&pki, "1d879c6c.r0", &crl(&spec, &pki.ca_key));
        let trust = pki.reload();
        assert_eq!(trust.skipped().len(), 1, "{:?}", trust.skipped());
        let err = read(&pki.proxy_file(vec![]), &trust).unwrap_err();
        assert!(matches!(err, ProxyError::BadCrl { .. }), "{err:?}");
        assert!(err.to_string().contains(want), "{err}");
    }
    // issuingDistributionPoint with onlyContainsUserCerts covers the user: fine.
    let mut spec = pki.crl_spec(&[USER_SERIAL]);
    spec.extensions = vec![ext(
        "2.5.29.28",
        true,
        &der::seq(&[der::tlv(0x81, &[0xff])]),
    )];
    put_crl_pem(&pki, "1d879c6c.r0", &crl(&spec, &pki.ca_key));
    let err = read(&pki.proxy_file(vec![]), &pki.reload()).unwrap_err();
    assert!(matches!(err, ProxyError::Revoked { .. }), "{err:?}");
}

#[test]
fn crl_signing_needs_crl_sign_in_the_ca_key_usage() {
    let pki = Pki::new();
    // The same CA key and name, but keyUsage keyCertSign only.
    let ca = cert(
        &CertSpec {
            serial: 1,
            issuer: pki.ca_dn.clone(),
            subject: pki.ca_dn.clone(),
            not_before: NOW - DAY,
            not_after: NOW + DAY,
            extensions: vec![
                basic_constraints_ca(),
                ext("2.5.29.15", true, &der::tlv(0x03, &[0x02, 0x04])),
            ],
        },
        &pki.ca_key,
        &pki.ca_key,
    );
    pki.put(
        "certificates/ca.pem",
        pem_block("CERTIFICATE", &ca).as_bytes(),
    );
    put_crl_pem(&pki, "1d879c6c.r0", &pki.crl(&[5]));
    let trust = pki.reload();
    let err = read(&pki.proxy_file(vec![]), &trust).unwrap_err();
    assert!(matches!(err, ProxyError::BadCrl { .. }), "{err:?}");
    assert!(err.to_string().contains("lacks cRLSign"), "{err}");
}

/// The PKI's vomsdir trusting VO atlas through an `.lsc` file only, and a proxy whose AC
/// carries the VOMS server certificate.
fn lsc_setup(pki: &Pki) -> String {
    pki.ca_dir_hashed();
    pki.put(
        "vomsdir/atlas/voms-atlas.cern.ch.lsc",
        format!("{VOMS_DN}\n{CA_DN}\n").as_bytes(),
    );
    let mut spec = pki.ac_spec(&[ROLE_PROD]);
    spec.chain = vec![pki.voms_cert.clone()];
    pki.proxy_file(vec![voms_extension(&[ac(&spec, &pki.voms_key)])])
}

#[test]
fn revoked_voms_server_certificate_on_the_lsc_path() {
    let pki = Pki::new();
    let file = lsc_setup(&pki);
    assert_eq!(
        read(&file, &pki.reload()).unwrap().fqans,
        ["/atlas/Role=production"]
    );

    put_crl_pem(&pki, "1d879c6c.r0", &pki.crl(&[VOMS_SERIAL]));
    let trust = pki.reload();
    // The user is fine, the VOMS server is not.
    assert!(read(&pki.proxy_file(vec![]), &trust).is_ok());
    let err = read(&file, &trust).unwrap_err();
    match &err {
        ProxyError::Untrusted {
            subject, reason, ..
        } => {
            assert_eq!(*subject, "VOMS attribute certificate of VO \"atlas\"");
            assert!(
                reason.contains(&format!(
                    "certificate \"{VOMS_DN}\" (serial number 4D) is revoked"
                )),
                "{reason}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }

    // An expired CRL refuses the VOMS server too.
    let mut spec = pki.crl_spec(&[]);
    spec.next_update = Some(NOW - DAY);
    put_crl_pem(&pki, "1d879c6c.r0", &crl(&spec, &pki.ca_key));
    let err = read(&file, &pki.reload()).unwrap_err();
    assert!(err.to_string().contains("expired at"), "{err}");
}

#[test]
fn signing_policy_allows() {
    let pki = Pki::new();
    pki.ca_dir_hashed();
    for policy in [
        signing_policy(CA_DN, &["/DC=ch/DC=cern/OU=Organic Units/OU=Users/*"]),
        signing_policy(CA_DN, &["/DC=ch/DC=cern/OU=Hosts/*", "/DC=ch/DC=cern/*"]),
        signing_policy(
            CA_DN,
            &["/DC=ch/DC=cern/OU=Organic Units/OU=Users/CN=jdoe/CN=12345?/CN=John Doe"],
        ),
        signing_policy(CA_DN, &["*"]),
        // Two entries: another CA's first, then this CA's.
        format!(
            "{}\n{}",
            signing_policy(OTHER_CA_DN, &["/DC=org/DC=example/*"]),
            signing_policy(CA_DN, &["/DC=ch/DC=cern/*"])
        ),
    ] {
        pki.put("certificates/1d879c6c.signing_policy", policy.as_bytes());
        let trust = pki.reload();
        assert!(trust.skipped().is_empty(), "{:?}", trust.skipped());
        assert_eq!(trust.signing_policy_count(), 1);
        assert_eq!(
            read(&pki.proxy_file(vec![]), &trust).unwrap().dn,
            USER_DN,
            "{policy}"
        );
    }
}

#[test]
fn signing_policy_denies() {
    let pki = Pki::new();
    let other = with_other_ca(&pki);
    pki.ca_dir_hashed();
    for patterns in [
        &["/DC=ch/DC=cern/OU=Hosts/*"][..],
        // Case-sensitive, as in Globus.
        &["/dc=ch/dc=cern/*"],
        &["/DC=ch/DC=cern/OU=Organic Units/OU=Users/CN=jdoe/CN=12345?"],
        &["/DC=ch/DC=cern/OU=Organic Units/OU=Users/CN=jdoe/CN=?/CN=John Doe"],
    ] {
        let path = pki.put(
            "certificates/1d879c6c.signing_policy",
            signing_policy(CA_DN, patterns).as_bytes(),
        );
        let trust = pki.reload();
        assert!(trust.skipped().is_empty(), "{:?}", trust.skipped());
        let err = read(&pki.proxy_file(vec![]), &trust).unwrap_err();
        match &err {
            ProxyError::SigningPolicy { subject, ca, file } => {
                assert_eq!(*subject, format!("\"{USER_DN}\""));
                assert_eq!(*ca, format!("\"{CA_DN}\""));
                assert_eq!(*file, path);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            format!(
                "certificate \"{USER_DN}\": the signing policy of CA \"{CA_DN}\" ({}) does not \
                 allow it to sign that subject",
                path.display()
            )
        );
        // The other CA has no signing policy.
        assert!(read(&other.proxy_file(), &trust).is_ok());
    }

    // A policy naming the CA applies whatever its file is called.
    std::fs::remove_file(pki.dir.path().join("certificates/1d879c6c.signing_policy")).unwrap();
    pki.put(
        "certificates/0a0b0c0d.signing_policy",
        format!(
            "{}{}",
            signing_policy(OTHER_CA_DN, &["/DC=org/DC=example/OU=People/*"]),
            signing_policy(CA_DN, &["/DC=ch/DC=cern/OU=Hosts/*"])
        )
        .as_bytes(),
    );
    let trust = pki.reload();
    let err = read(&pki.proxy_file(vec![]), &trust).unwrap_err();
    assert!(matches!(err, ProxyError::SigningPolicy { .. }), "{err:?}");
    assert!(read(&other.proxy_file(), &trust).is_ok());
}

#[test]
fn signing_policy_for_the_voms_server_on_the_lsc_path() {
    let pki = Pki::new();
    let file = lsc_setup(&pki);
    pki.put(
        "certificates/1d879c6c.signing_policy",
        signing_policy(CA_DN, &["/DC=ch/DC=cern/OU=Organic Units/*"]).as_bytes(),
    );
    let trust = pki.reload();
    assert!(read(&pki.proxy_file(vec![]), &trust).is_ok());
    let err = read(&file, &trust).unwrap_err();
    match &err {
        ProxyError::Untrusted { reason, .. } => {
            assert!(
                reason.contains(&format!(
                    "certificate \"{VOMS_DN}\": the signing policy of CA \"{CA_DN}\""
                )),
                "{reason}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }

    pki.put(
        "certificates/1d879c6c.signing_policy",
        signing_policy(
            CA_DN,
            &[
                "/DC=ch/DC=cern/OU=Organic Units/*",
                "/DC=ch/DC=cern/OU=computers/*",
            ],
        )
        .as_bytes(),
    );
    assert!(read(&file, &pki.reload()).is_ok());
}

#[test]
fn unparsable_signing_policy_fails_closed() {
    let pki = Pki::new();
    let other = with_other_ca(&pki);
    pki.ca_dir_hashed();
    let broken = format!(
        "# comment\naccess_id_CA X509 '{CA_DN}'\nneg_rights globus CA:sign\n\
         cond_subjects globus '\"/*\"'\n"
    );
    pki.put("certificates/1d879c6c.signing_policy", broken.as_bytes());
    let trust = pki.reload();
    let skipped = skipped(&trust);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].0, "1d879c6c.signing_policy");
    assert!(
        skipped[0].1.contains("line 3: neg_rights is not supported"),
        "{skipped:?}"
    );
    assert!(skipped[0].1.contains(CA_DN), "{skipped:?}");
    assert_eq!(trust.signing_policy_count(), 0);
    let err = read(&pki.proxy_file(vec![]), &trust).unwrap_err();
    match &err {
        ProxyError::BadSigningPolicy { ca, file, reason } => {
            assert_eq!(*ca, format!("\"{CA_DN}\""));
            assert_eq!(file_name(file), "1d879c6c.signing_policy");
            assert_eq!(
                reason,
                "signing policy: line 3: neg_rights is not supported"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        err.to_string().starts_with(&format!(
            "CA \"{CA_DN}\" is refused: its signing policy file /"
        )),
        "{err}"
    );
    assert!(read(&other.proxy_file(), &trust).is_ok());

    // Broken before any CA is named: the CA of the file's hash is refused.
    pki.put(
        "certificates/1d879c6c.signing_policy",
        b"pos_rights globus CA:sign\n",
    );
    let err = read(&pki.proxy_file(vec![]), &pki.reload()).unwrap_err();
    assert!(
        matches!(err, ProxyError::BadSigningPolicy { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("line 1:"), "{err}");
    pki.put("certificates/1d879c6c.signing_policy", b"\xff\xfe\n");
    let err = read(&pki.proxy_file(vec![]), &pki.reload()).unwrap_err();
    assert!(err.to_string().contains("line 1: not UTF-8"), "{err}");

    // Broken, in a file of another hash, naming this CA: refused too.
    std::fs::remove_file(pki.dir.path().join("certificates/1d879c6c.signing_policy")).unwrap();
    pki.put("certificates/0a0b0c0d.signing_policy", broken.as_bytes());
    let err = read(&pki.proxy_file(vec![]), &pki.reload()).unwrap_err();
    assert!(
        matches!(err, ProxyError::BadSigningPolicy { .. }),
        "{err:?}"
    );

    // Broken, naming another CA only: this one is not affected.
    pki.put(
        "certificates/0a0b0c0d.signing_policy",
        broken.replace(CA_DN, OTHER_CA_DN).as_bytes(),
    );
    let trust = pki.reload();
    assert_eq!(trust.skipped().len(), 1);
    assert!(read(&pki.proxy_file(vec![]), &trust).is_ok());
    let err = read(&other.proxy_file(), &trust).unwrap_err();
    assert!(
        matches!(err, ProxyError::BadSigningPolicy { .. }),
        "{err:?}"
    );
}

#[test]
fn signing_policy_of_the_hash_must_name_the_ca() {
    let pki = Pki::new();
    pki.ca_dir_hashed();
    pki.put(
        "certificates/1d879c6c.signing_policy",
        signing_policy(OTHER_CA_DN, &["/DC=ch/DC=cern/*"]).as_bytes(),
    );
    let trust = pki.reload();
    let skipped = skipped(&trust);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0]
            .1
            .contains("has no access_id_CA entry for that CA"),
        "{skipped:?}"
    );
    let err = read(&pki.proxy_file(vec![]), &trust).unwrap_err();
    match &err {
        ProxyError::BadSigningPolicy { reason, .. } => {
            assert!(reason.contains(OTHER_CA_DN), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn signing_policy_dn_spellings() {
    // /Email= in a policy means /emailAddress=.
    let pki = Pki::new();
    let ca_dn = Dn::parse("/DC=org/DC=example/CN=Mail CA/emailAddress=ca@example.org");
    let ca_key = Key::ec();
    let ca = cert(
        &CertSpec {
            serial: 1,
            issuer: ca_dn.clone(),
            subject: ca_dn.clone(),
            not_before: NOW - DAY,
            not_after: NOW + DAY,
            extensions: vec![basic_constraints_ca()],
        },
        &ca_key,
        &ca_key,
    );
    let user_key = Key::ec();
    let user_dn = Dn::parse("/DC=org/DC=example/CN=Bob/emailAddress=bob@example.org");
    let user = cert(
        &CertSpec {
            serial: 9,
            issuer: ca_dn.clone(),
            subject: user_dn.clone(),
            not_before: NOW - DAY,
            not_after: NOW + DAY,
            extensions: vec![],
        },
        &user_key,
        &ca_key,
    );
    pki.ca_dir();
    pki.put(
        "certificates/mail-ca.pem",
        pem_block("CERTIFICATE", &ca).as_bytes(),
    );
    let file = proxy_file_of(&user_dn, &user_key, &user);
    for (pattern, ok) in [
        ("/DC=org/DC=example/CN=Bob/Email=bob@example.org", true),
        ("/DC=org/DC=example/CN=Bob/E=*", true),
        ("/DC=org/DC=example/CN=Bob/E=alice*", false),
    ] {
        pki.put(
            "certificates/12345678.signing_policy",
            signing_policy(
                "/DC=org/DC=example/CN=Mail CA/Email=ca@example.org",
                &[pattern],
            )
            .as_bytes(),
        );
        let trust = pki.reload();
        assert!(trust.skipped().is_empty(), "{:?}", trust.skipped());
        assert_eq!(read(&file, &trust).is_ok(), ok, "{pattern}");
    }
}
