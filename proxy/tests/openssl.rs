//! Interoperability with the `openssl` command line tools: a CA made with `openssl req` and
//! `openssl ca`, a user revoked with `openssl ca -revoke` and `-gencrl`, the directory hashed
//! with `openssl rehash`, RFC 3820 proxies issued with `openssl x509 -req`, and a signing
//! policy filed under the hash OpenSSL computes.
//!
//! Skipped (with a message) when `openssl` is not installed.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use dms_proxy::{read_proxy, ProxyError, TrustStore};

const CA_SUBJECT: &str = "/DC=org/DC=example/CN=DMS Test OpenSSL CA";
const ALICE: &str = "/DC=org/DC=example/OU=Users/CN=Alice Revoked";
const BOB: &str = "/DC=org/DC=example/OU=Users/CN=Bob Fine";

fn have_openssl() -> bool {
    let found = Command::new("which")
        .arg("openssl")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: the openssl command is not installed (which openssl found nothing)");
    }
    found
}

/// Runs `openssl args...` in `dir` and returns its standard output; panics with its output on
/// failure.
fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn write(path: PathBuf, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn read_text(path: PathBuf) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// Issues a user certificate `<name>.pem` (key `<name>.key`) for `subject` with `openssl ca`.
fn issue_user(dir: &Path, name: &str, subject: &str) {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ],
    );
    openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-preserveDN",
            "-notext",
            "-in",
            &format!("{name}.csr"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// An RFC 3820 proxy of the user `<name>` (as `voms-proxy-init -rfc` makes without VOMS): the
/// proxy, its key, the user certificate.
fn proxy_file(dir: &Path, name: &str, subject: &str, serial: u32) -> String {
    let proxy = format!("{name}-proxy");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{proxy}.key"),
            "-out",
            &format!("{proxy}.csr"),
            "-subj",
            &format!("{subject}/CN={serial}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{proxy}.csr"),
            "-CA",
            &format!("{name}.pem"),
            "-CAkey",
            &format!("{name}.key"),
            "-set_serial",
            &serial.to_string(),
            "-days",
            "10",
            "-extfile",
            "proxy.cnf",
            "-extensions",
            "proxy",
            "-out",
            &format!("{proxy}.pem"),
        ],
    );
    format!(
        "{}{}{}",
        read_text(dir.join(format!("{proxy}.pem"))),
        read_text(dir.join(format!("{proxy}.key"))),
        read_text(dir.join(format!("{name}.pem")))
    )
}

#[test]
fn openssl_ca_crl_rehash_and_proxies() {
    if !have_openssl() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let certs = dir.join("certificates");
    std::fs::create_dir(&certs).unwrap();
    std::fs::create_dir(dir.join("newcerts")).unwrap();
    write(dir.join("index.txt"), "");
    write(dir.join("serial"), "1000\n");
    write(dir.join("crlnumber"), "01\n");
    write(
        dir.join("ca.cnf"),
        &format!(
            "[ ca ]\n\
             default_ca = test_ca\n\
             [ test_ca ]\n\
             dir = {}\n\
             database = $dir/index.txt\n\
             new_certs_dir = $dir/newcerts\n\
             certificate = $dir/ca.pem\n\
             private_key = $dir/ca.key\n\
             serial = $dir/serial\n\
             crlnumber = $dir/crlnumber\n\
             default_md = sha256\n\
             default_days = 30\n\
             default_crl_days = 7\n\
             unique_subject = no\n\
             policy = policy_any\n\
             x509_extensions = user_cert\n\
             [ policy_any ]\n\
             domainComponent = optional\n\
             organizationalUnitName = optional\n\
             commonName = supplied\n\
             [ user_cert ]\n\
             basicConstraints = critical, CA:false\n\
             keyUsage = critical, digitalSignature, keyEncipherment\n",
            dir.display()
        ),
    );
    write(
        dir.join("proxy.cnf"),
        "[ proxy ]\n\
         basicConstraints = critical, CA:false\n\
         keyUsage = critical, digitalSignature, keyEncipherment\n\
         proxyCertInfo = critical, language:id-ppl-inheritAll\n",
    );

    // The CA, two users, Alice revoked, the CRL, the hashed directory.
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            CA_SUBJECT,
            "-addext",
            "basicConstraints=critical,CA:true",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    issue_user(dir, "alice", ALICE);
    issue_user(dir, "bob", BOB);
    openssl(
        dir,
        &["ca", "-batch", "-config", "ca.cnf", "-revoke", "alice.pem"],
    );
    openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-gencrl",
            "-out",
            "certificates/test-ca.crl",
        ],
    );
    std::fs::copy(dir.join("ca.pem"), certs.join("test-ca.pem")).unwrap();
    openssl(dir, &["rehash", "certificates"]);
    let hash = openssl(dir, &["x509", "-hash", "-noout", "-in", "ca.pem"])
        .trim()
        .to_owned();
    assert!(certs.join(format!("{hash}.0")).exists());
    assert!(certs.join(format!("{hash}.r0")).exists());

    let alice = proxy_file(dir, "alice", ALICE, 4001);
    let bob = proxy_file(dir, "bob", BOB, 4002);
    let alice_serial = openssl(dir, &["x509", "-serial", "-noout", "-in", "alice.pem"]);
    let alice_serial = alice_serial.trim().trim_start_matches("serial=");

    let trust = TrustStore::load(&certs, None).unwrap();
    assert!(trust.skipped().is_empty(), "{:?}", trust.skipped());
    assert_eq!(trust.ca_count(), 1);
    assert_eq!(trust.crl_count(), 1);
    let now = SystemTime::now();

    let err = read_proxy(alice.as_bytes(), &trust, now).unwrap_err();
    match &err {
        ProxyError::Revoked {
            subject,
            serial,
            issuer,
            ..
        } => {
            assert_eq!(*subject, format!("\"{ALICE}\""));
            assert_eq!(serial, alice_serial);
            assert_eq!(*issuer, format!("\"{CA_SUBJECT}\""));
        }
        other => panic!("unexpected {other:?}: {other}"),
    }
    let id = read_proxy(bob.as_bytes(), &trust, now).unwrap();
    assert_eq!(id.dn, BOB);
    assert!(id.fqans.is_empty());

    // After the CRL's nextUpdate (7 days), the CA is refused until fetch-crl runs.
    let later = now + std::time::Duration::from_secs(8 * 86_400);
    let err = read_proxy(bob.as_bytes(), &trust, later).unwrap_err();
    assert!(matches!(err, ProxyError::CrlExpired { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("{hash}.r0")), "{err}");

    // A signing policy filed under the hash OpenSSL computes.
    let policy = |pattern: &str| {
        format!(
            "access_id_CA X509 '{CA_SUBJECT}'\npos_rights globus CA:sign\n\
             cond_subjects globus '\"{pattern}\"'\n"
        )
    };
    write(
        certs.join(format!("{hash}.signing_policy")),
        &policy("/DC=org/DC=example/OU=Users/*"),
    );
    let trust = TrustStore::load(&certs, None).unwrap();
    assert!(trust.skipped().is_empty(), "{:?}", trust.skipped());
    assert_eq!(read_proxy(bob.as_bytes(), &trust, now).unwrap().dn, BOB);
    write(
        certs.join(format!("{hash}.signing_policy")),
        &policy("/DC=org/DC=example/OU=Hosts/*"),
    );
    let trust = TrustStore::load(&certs, None).unwrap();
    let err = read_proxy(bob.as_bytes(), &trust, now).unwrap_err();
    assert!(matches!(err, ProxyError::SigningPolicy { .. }), "{err:?}");
}
