//! Logins with the real programs: libnss_dms.so.2 through glibc (getent, id), pam_dms.so
//! through pamtester, runuser -l, su -, a real sshd and Slurm with UsePAM=1; logins presenting
//! real X.509 VOMS proxies (an openssl-made PKI, voms-proxy-fake, pam_env's X509_USER_PROXY).
//!
//! Each test builds a "world": a mount namespace in which /etc/nsswitch.conf, /etc/ld.so.cache
//! (so glibc finds libnss_dms.so.2 by name), /etc/pam.d and /var/lib/dms/nss are the test's own
//! files, bound over the host's. dmsd and every login program run in it; the host's files are
//! never changed. Gated like the root suite (DMS_REQUIRE_ROOT_TESTS=1 makes a skip a failure).
#![allow(clippy::unwrap_used)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use dms_integration::*;

/// The NSS directory compiled into libnss_dms.so.2.
const NSS_MOUNTPOINT: &str = "/var/lib/dms/nss";

fn can_login() -> bool {
    if !can_run() {
        return false;
    }
    let missing: Vec<&str> = [
        "pamtester",
        "runuser",
        "su",
        "getent",
        "unshare",
        "nsenter",
        "ldconfig",
    ]
    .into_iter()
    .filter(|p| !which(p))
    .collect();
    let libs: Vec<String> = ["libpam_dms.so", "libnss_dms.so"]
        .into_iter()
        .filter(|l| !bin(l).exists())
        .map(|l| bin(l).display().to_string())
        .collect();
    let why = if !missing.is_empty() {
        format!("missing programs {missing:?} (scripts/deps.sh test installs them)")
    } else if !libs.is_empty() {
        format!("modules not built: {libs:?} (cargo build --workspace)")
    } else {
        return true;
    };
    skipped(&why)
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The test's own view of /etc, held by a sleeping process in a private mount namespace.
struct World {
    dir: PathBuf,
    holder: Child,
}

impl World {
    /// `pam` lists (service name, pam.d file text); `{module}` in the text is replaced by the
    /// absolute path of the built pam_dms.so, `{socket}` by the daemon's session socket.
    fn new(d: &Daemon, pam: &[(&str, &str)]) -> World {
        // Outside /tmp: domains have a private /tmp, and the ld.so cache names this directory.
        let dir = PathBuf::from(format!("/var/tmp/{}-world", d.subtree));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::fs::copy(bin("libnss_dms.so"), dir.join("lib/libnss_dms.so.2")).unwrap();
        std::fs::write(
            dir.join("ld.so.conf"),
            format!(
                "include /etc/ld.so.conf.d/*.conf\n{}\n",
                dir.join("lib").display()
            ),
        )
        .unwrap();
        // ldconfig always rewrites its aux-cache under /var/cache: give it a private tmpfs.
        let o = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs -o size=16m,mode=755 dmstest /var/cache && exec ldconfig -X -i -C \"$1\" -f \"$2\"")
            .arg("sh")
            .arg(dir.join("ld.so.cache"))
            .arg(dir.join("ld.so.conf"))
            .output()
            .unwrap();
        assert!(o.status.success(), "ldconfig: {}", text(&o));
        std::fs::copy("/etc/nsswitch.conf", dir.join("nsswitch.conf")).unwrap();
        // The install step's own edit.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nsswitch-add-dms.sh");
        let o = Command::new(script)
            .arg(dir.join("nsswitch.conf"))
            .output()
            .unwrap();
        assert!(o.status.success(), "nsswitch-add-dms: {}", text(&o));
        let o = Command::new("cp")
            .args(["-a", "/etc/pam.d"])
            .arg(dir.join("pam.d"))
            .output()
            .unwrap();
        assert!(o.status.success(), "cp pam.d: {}", text(&o));
        for (name, body) in pam {
            let body = body
                .replace("{module}", &bin("libpam_dms.so").display().to_string())
                .replace("{socket}", &d.pam_sock().display().to_string());
            std::fs::write(dir.join("pam.d").join(name), body).unwrap();
        }
        std::fs::create_dir_all(d.dir.join("nss")).unwrap();
        // The mount point; an empty directory, left for the next run (scripts/test.sh removes
        // it when it created it).
        std::fs::create_dir_all(NSS_MOUNTPOINT).unwrap();
        let binds = [
            (dir.join("nsswitch.conf"), "/etc/nsswitch.conf"),
            (dir.join("ld.so.cache"), "/etc/ld.so.cache"),
            (dir.join("pam.d"), "/etc/pam.d"),
            (d.dir.join("nss"), NSS_MOUNTPOINT),
        ];
        let mut script = String::new();
        for (from, to) in &binds {
            script.push_str(&format!("mount --bind '{}' '{to}' && ", from.display()));
        }
        script.push_str("echo ready && exec sleep 1000000");
        let mut holder = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "world setup failed");
        World { dir, holder }
    }

    /// The command prefix that enters the world (also used to start dmsd in it).
    fn wrap(&self) -> Vec<String> {
        ["nsenter", "-t", &self.holder.id().to_string(), "-m", "--"]
            .map(String::from)
            .to_vec()
    }

    /// A command run inside the world.
    fn cmd(&self, prog: &str) -> Command {
        let wrap = self.wrap();
        let mut c = Command::new(&wrap[0]);
        c.args(&wrap[1..]).arg(prog).stdin(Stdio::null());
        c
    }

    fn run(&self, prog: &str, args: &[&str]) -> Output {
        self.cmd(prog).args(args).output().unwrap()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const LOGIN_POLICY: &str = r#"
[vo.dmslogin]
granularity = "user"
network = { mode = "none" }
memory = { limit = "64M" }
pids = 64
idle = { action = "freeze", after = "0s" }

[vo.dmsjob]
granularity = "job"
network = { mode = "none" }
memory = { limit = "48M" }

[vo.dmsother]
granularity = "user"
network = { mode = "none" }
idle = { action = "destroy", after = "0s" }
userns = true
"#;

const GRID_MAPFILE: &str = r#"# test identities
"/dmslogin/Role=pilot" .dmslpil
"/DC=org/DC=dmstest/CN=Alice" .dmsl
"/DC=org/DC=dmstest/CN=Bob" .dmsl
"/DC=org/DC=dmstest/CN=Carol" .dmsl
"/DC=org/DC=dmstest/CN=Olga" .dmso
"/DC=org/DC=dmstest/CN=Nora" .dmsnp
"/DC=org/DC=dmstest/CN=Jo" .dmsj
"#;

/// Home directories live outside /tmp: domains get a private /tmp.
fn home_base(d: &Daemon) -> PathBuf {
    PathBuf::from(format!("/var/tmp/dms-test-homes-{}", d.subtree))
}

/// A daemon with pools dmsl (VO dmslogin, 3 accounts), dmslpil (pilots), dmso (VO dmsother)
/// and dmsnp (a VO without policy), not yet started.
fn login_daemon(tag: &str) -> Daemon {
    let d = Daemon::prepare(tag, |dir| {
        std::fs::write(dir.join("policies/login.toml"), LOGIN_POLICY).unwrap();
        std::fs::write(dir.join("grid-mapfile"), GRID_MAPFILE).unwrap();
        std::fs::write(
            dir.join("groupmapfile"),
            "\"/dmslogin/Role=pilot\" dmslpilots\n",
        )
        .unwrap();
    });
    let homes = home_base(&d);
    std::fs::create_dir_all(&homes).unwrap();
    let mut cfg = std::fs::read_to_string(d.dir.join("dmsd.toml")).unwrap();
    let h = homes.display();
    cfg.push_str(&format!(
        r#"[accounts.groups]
dmslpilots = 47900
[accounts.pools.dmsl]
size = 3
uid_min = 47001
gid = 47000
vo = "dmslogin"
home = "{h}/{{account}}"
[accounts.pools.dmslpil]
size = 2
uid_min = 47051
gid = 47050
vo = "dmslogin"
home = "{h}/{{account}}"
[accounts.pools.dmso]
size = 2
uid_min = 47101
gid = 47100
vo = "dmsother"
home = "{h}/{{account}}"
[accounts.pools.dmsj]
size = 1
uid_min = 47301
gid = 47300
vo = "dmsjob"
home = "{h}/{{account}}"
[accounts.pools.dmsnp]
size = 1
uid_min = 47201
gid = 47200
vo = "dmsnopolicy"
home = "{h}/{{account}}"
"#
    ));
    std::fs::write(d.dir.join("dmsd.toml"), cfg).unwrap();
    d
}

/// Removes the test's home directories (outside the daemon's directory).
struct Homes(PathBuf);

impl Drop for Homes {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn map(d: &Daemon, dn: &str, fqans: &[&str]) -> Output {
    let mut args = vec!["map", "--dn", dn];
    for f in fqans {
        args.extend(["--fqan", f]);
    }
    d.ctl(&args)
}

fn mapped(d: &Daemon, dn: &str, fqans: &[&str]) -> String {
    let o = map(d, dn, fqans);
    assert!(o.status.success(), "map {dn}: {}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

const PAM_SERVICE: &str = "account required {module} socket={socket}\n\
                           session required {module} socket={socket} debug\n";

#[test]
fn nss_resolves_leases_with_dmsd_up_and_down_and_leases_survive_kill9() {
    if !can_login() {
        return;
    }
    let mut d = login_daemon("nss");
    let _homes = Homes(home_base(&d));
    let w = World::new(&d, &[]);
    d.wrap = w.wrap();
    d.spawn();

    let alice = mapped(&d, "/DC=org/DC=dmstest/CN=Alice", &[]);
    assert_eq!(alice, "dmsl001");
    let pilot = mapped(&d, "/DC=org/DC=dmstest/CN=Pat", &["/dmslogin/Role=pilot"]);
    assert_eq!(pilot, "dmslpil001");
    // Same identity, same account.
    assert_eq!(mapped(&d, "/DC=org/DC=dmstest/CN=Alice", &[]), "dmsl001");

    let homes = home_base(&d);
    let check = |why: &str| {
        let o = w.run("getent", &["passwd", "dmsl001"]);
        assert!(o.status.success(), "{why}: getent by name: {}", text(&o));
        let line = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let home = homes.join("dmsl001");
        assert_eq!(
            line,
            format!(
                "dmsl001:*:47001:47000:DMS pool dmsl:{}:/bin/bash",
                home.display()
            ),
            "{why}"
        );
        let o = w.run("getent", &["passwd", "47051"]);
        assert!(
            String::from_utf8_lossy(&o.stdout).starts_with("dmslpil001:*:47051:47050:"),
            "{why}: getent by uid: {}",
            text(&o)
        );
        let o = w.run("id", &["dmslpil001"]);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            out.contains("uid=47051(dmslpil001)")
                && out.contains("gid=47050(dmslpil)")
                && out.contains("47900(dmslpilots)"),
            "{why}: id: {}",
            text(&o)
        );
        let o = w.run("getent", &["group", "dmslpilots"]);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "dmslpilots:*:47900:dmslpil001",
            "{why}"
        );
        // Unknown names are "not found" (exit 2), and the host's own accounts still resolve.
        assert_eq!(
            w.run("getent", &["passwd", "dmsl003"]).status.code(),
            Some(2)
        );
        assert!(w.run("getent", &["passwd", "root"]).status.success());
    };
    check("dmsd running");
    // The home directory was made for the account, owner-only.
    let meta = std::fs::metadata(home_base(&d).join("dmsl001")).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(
        (meta.uid(), meta.gid(), meta.permissions().mode() & 0o777),
        (47001, 47000, 0o700)
    );

    d.kill9();
    check("dmsd killed");

    d.spawn();
    check("dmsd restarted");
    assert_eq!(mapped(&d, "/DC=org/DC=dmstest/CN=Alice", &[]), "dmsl001");
    let v = d.json(&["account", "show", "dmsl001"]);
    assert_eq!(v["uid"], 47001);
    assert_eq!(v["dn"], "/DC=org/DC=dmstest/CN=Alice");

    // The pool fills up with a clear error, and nothing is leased for the refused identity.
    assert_eq!(mapped(&d, "/DC=org/DC=dmstest/CN=Bob", &[]), "dmsl002");
    assert_eq!(mapped(&d, "/DC=org/DC=dmstest/CN=Carol", &[]), "dmsl003");
    std::fs::write(
        d.dir.join("grid-mapfile"),
        format!("{GRID_MAPFILE}\"/DC=org/DC=dmstest/CN=Dave\" .dmsl\n\"/DC=org/DC=dmstest/CN=Erin\" .dmsl\n"),
    )
    .unwrap();
    d.ok(&["policy", "reload"]);
    let o = map(&d, "/DC=org/DC=dmstest/CN=Dave", &[]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("pool \"dmsl\" is full: all 3 accounts are leased"),
        "{}",
        text(&o)
    );
    // Bad identities: named field, exit 2.
    for (dn, fqans, want) in [
        ("/DC=org/CN=Quote\"d", vec![], "dn: invalid DN"),
        ("/DC=org/CN=New\nline", vec![], "control character"),
        (
            "/DC=org/DC=dmstest/CN=Alice",
            vec!["dmslogin/Role=pilot"],
            "fqan: invalid FQAN",
        ),
        (
            "/DC=org/DC=dmstest/CN=Alice",
            vec!["/dmslogin/Role=a/Capability=b/c"],
            "fqan: invalid FQAN",
        ),
    ] {
        let o = map(&d, dn, &fqans);
        assert_eq!(o.status.code(), Some(2), "{dn:?}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(want),
            "{}",
            text(&o)
        );
    }
    let o = map(&d, "/DC=org/CN=Unmapped", &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let list = d.json(&["account", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 4, "{list}");

    // Release: the account stops resolving, its home goes with Bob's files, and the next
    // identity gets the account with an empty home.
    let bob_home = homes.join("dmsl002");
    std::fs::create_dir(bob_home.join("data")).unwrap();
    std::fs::write(bob_home.join("data/results"), "Bob's").unwrap();
    std::os::unix::fs::symlink("/etc", bob_home.join("etc-link")).unwrap();
    d.ok(&["account", "release", "dmsl002"]);
    assert_eq!(
        w.run("getent", &["passwd", "dmsl002"]).status.code(),
        Some(2)
    );
    assert!(!bob_home.exists(), "the released account's home is removed");
    assert!(
        std::path::Path::new("/etc/passwd").exists(),
        "a symlink was not followed"
    );
    let left: Vec<_> = std::fs::read_dir(&homes)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".dms-released"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(mapped(&d, "/DC=org/DC=dmstest/CN=Dave", &[]), "dmsl002");
    assert_eq!(
        std::fs::read_dir(&bob_home).unwrap().count(),
        0,
        "Dave's home is empty"
    );
    // A home that is not the account's own (here root's) is left alone.
    d.ok(&["account", "release", "dmsl003"]);
    let carol_home = homes.join("dmsl003");
    assert!(!carol_home.exists());
    std::fs::create_dir(&carol_home).unwrap();
    assert_eq!(mapped(&d, "/DC=org/DC=dmstest/CN=Erin", &[]), "dmsl003");
    d.ok(&["account", "release", "dmsl003"]);
    assert!(
        carol_home.exists(),
        "a root-owned directory at the home path is not removed"
    );
    // Only admins see or change leases.
    let o = d.ctl_as(Some(NOBODY), &["account", "list"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
}

/// A /proc/self/cgroup listing from inside a domain's cgroup namespace: every hierarchy is
/// at its root ("/"), as the namespace is rooted at the domain's cgroup.
fn at_cgroup_ns_root(cgroup_listing: &str) -> bool {
    let lines: Vec<&str> = cgroup_listing
        .lines()
        .filter(|l| l.contains(":pids:") || l.starts_with("0::") || l.contains(":memory:"))
        .collect();
    !lines.is_empty() && lines.iter().all(|l| l.ends_with(":/"))
}

/// Host pids of `comm` processes of `uid`, seen from the host.
fn host_pids(uid: u32, comm: &str) -> Vec<i32> {
    let o = Command::new("pgrep")
        .args(["-u", &uid.to_string(), "-x", comm])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The cgroup path of the domain in a /proc/self/cgroup listing (pids controller on v1, the
/// unified line on v2).
fn in_domain(cgroup_listing: &str, subtree: &str, domain: &str) -> bool {
    let want = format!("/{subtree}/{domain}");
    cgroup_listing
        .lines()
        .any(|l| (l.contains(":pids:") || l.starts_with("0::")) && l.ends_with(&want))
}

fn domain_state(d: &Daemon, name: &str) -> Option<String> {
    let o = d.ctl(&["--json", "domain", "show", name]);
    if !o.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["state"].as_str().map(String::from)
}

#[test]
fn pamtester_runuser_and_su_put_sessions_into_domains() {
    if !can_login() {
        return;
    }
    let mut d = login_daemon("pam");
    let _homes = Homes(home_base(&d));
    let allow = "session required {module} socket={socket}.absent on_error=allow\n";
    let w = World::new(
        &d,
        &[
            ("dmstest-pam", PAM_SERVICE),
            ("dmstest-allow", allow),
            ("runuser-l", &format!("@include runuser\n{PAM_SERVICE}")),
            (
                "su-l",
                &format!(
                    "auth sufficient pam_rootok.so\n@include common-account\n{PAM_SERVICE}@include common-session\n"
                ),
            ),
        ],
    );
    d.wrap = w.wrap();
    d.spawn();
    let alice = mapped(&d, "/DC=org/DC=dmstest/CN=Alice", &[]);
    let olga = mapped(&d, "/DC=org/DC=dmstest/CN=Olga", &[]);
    let nora = mapped(&d, "/DC=org/DC=dmstest/CN=Nora", &[]);
    let dom_a = format!("dmslogin.{alice}");
    let dom_o = format!("dmsother.{olga}");

    // pamtester: open + close through libpam; the session lands in dmsd's book and the domain
    // is created; the idle action (freeze) follows the close.
    let o = w.run(
        "pamtester",
        &[
            "-v",
            "dmstest-pam",
            &alice,
            "acct_mgmt",
            "open_session",
            "close_session",
        ],
    );
    assert!(o.status.success(), "pamtester: {}", text(&o));
    wait_until("idle freeze after logout", Duration::from_secs(10), || {
        domain_state(&d, &dom_a).as_deref() == Some("frozen")
    });
    assert!(d.log().contains("session opened"), "{}", d.log());

    // runuser -l: the shell runs inside the domain (thawed for the login), sees only it.
    let o = w.run(
        "runuser",
        &["-l", &alice, "-c", "cat /proc/self/cgroup; echo host=$(hostname); echo procs=$(ps -e --no-headers | wc -l); id -un"],
    );
    assert!(o.status.success(), "runuser: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        at_cgroup_ns_root(&out),
        "runuser not in a domain's cgroup namespace: {out}"
    );
    assert!(out.contains(&format!("host={dom_a}")), "{out}");
    let procs: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        procs <= 6,
        "ps -e in the domain shows {procs} processes: {out}"
    );
    assert!(out.trim_end().ends_with(&alice), "{out}");

    // su -: same domain (the user's), for a different VO a different one.
    // Seen from the host: the login's processes are in the user's domain cgroup.
    for (user, uid, dom) in [(&alice, 47001, &dom_a), (&olga, 47101, &dom_o)] {
        let mut child = w
            .cmd("su")
            .args(["-", user, "-c", "exec sleep 30"])
            .spawn()
            .unwrap();
        wait_until("sleep in the su session", Duration::from_secs(10), || {
            !host_pids(uid, "sleep").is_empty()
        });
        let pids = host_pids(uid, "sleep");
        let members = cgroup_procs(&d.subtree, dom);
        assert!(
            pids.iter().all(|p| members.contains(p)),
            "su {user}: {pids:?} not in {dom} {members:?}"
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pids[0]),
            nix::sys::signal::Signal::SIGTERM,
        );
        let st = child.wait().unwrap();
        assert!(st.code().is_some(), "su {user}: {st}");
    }
    // dmsother's idle action destroys the domain once its last session ends.
    wait_until("idle destroy after logout", Duration::from_secs(10), || {
        domain_state(&d, &dom_o).is_none()
    });
    // Logins racing that idle destroy (due at once after each close) still open: for 3 s
    // (three idle checks), back-to-back sessions, each closing before the next opens.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let mut logins = 0;
    while std::time::Instant::now() < until {
        let o = w.run(
            "pamtester",
            &["dmstest-pam", &olga, "open_session", "close_session"],
        );
        assert!(
            o.status.success(),
            "login {logins}: {}\n{}",
            text(&o),
            d.log()
        );
        logins += 1;
    }
    wait_until(
        "idle destroy after the last login",
        Duration::from_secs(10),
        || domain_state(&d, &dom_o).is_none(),
    );

    // A VO without a policy is refused at account and session time, with the reason.
    let o = w.run("pamtester", &["dmstest-pam", &nora, "acct_mgmt"]);
    assert!(!o.status.success(), "{}", text(&o));
    let o = w.run("pamtester", &["dmstest-pam", &nora, "open_session"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        d.log().contains("VO \\\"dmsnopolicy\\\" has no policy")
            || d.log().contains("VO \"dmsnopolicy\" has no policy"),
        "{}",
        d.log()
    );
    // An unknown user is refused; a local user without grid identity passes untouched.
    let o = w.run(
        "pamtester",
        &["dmstest-pam", "dmsnosuchuser", "open_session"],
    );
    assert!(!o.status.success(), "{}", text(&o));
    let o = w.run(
        "pamtester",
        &["dmstest-pam", "nobody", "open_session", "close_session"],
    );
    assert!(o.status.success(), "unmanaged user: {}", text(&o));

    // Nothing leaked: no sessions left open.
    wait_until("sessions closed", Duration::from_secs(5), || {
        d.json(&["session", "list"]).as_array().unwrap().is_empty()
    });

    // dmsd down: the login is refused (fail closed), unless the service says on_error=allow.
    d.kill9();
    let o = w.run("pamtester", &["dmstest-pam", &alice, "open_session"]);
    assert!(!o.status.success(), "dmsd down must refuse: {}", text(&o));
    let o = w.run(
        "pamtester",
        &["dmstest-allow", &alice, "open_session", "close_session"],
    );
    assert!(o.status.success(), "on_error=allow: {}", text(&o));
    d.spawn();
}

#[test]
fn a_flood_of_concurrent_logins_makes_one_domain_and_leaks_nothing() {
    if !can_login() {
        return;
    }
    let mut d = login_daemon("flood");
    let _homes = Homes(home_base(&d));
    let w = World::new(&d, &[("dmstest-pam", PAM_SERVICE)]);
    d.wrap = w.wrap();
    d.spawn();
    let alice = mapped(&d, "/DC=org/DC=dmstest/CN=Alice", &[]);
    let children: Vec<Child> = (0..40)
        .map(|_| {
            w.cmd("pamtester")
                .args(["dmstest-pam", &alice, "open_session", "close_session"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
    let domains = d.json(&["domain", "list"]);
    assert_eq!(domains.as_array().unwrap().len(), 1, "{domains}");
    wait_until("sessions closed", Duration::from_secs(5), || {
        d.json(&["session", "list"]).as_array().unwrap().is_empty()
    });
    assert_eq!(d.json(&["account", "list"]).as_array().unwrap().len(), 1);
}

/// A real sshd on 127.0.0.1 under its own binary name (so its own PAM service), in the world.
struct Sshd {
    child: Child,
    log: PathBuf,
    port: u16,
    key: PathBuf,
    made_run_sshd: bool,
}

impl Sshd {
    fn start(w: &World) -> Sshd {
        let dir = w.dir.join("sshd");
        std::fs::create_dir_all(&dir).unwrap();
        let made_run_sshd = !Path::new("/run/sshd").exists();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let exe = dir.join("sshd-dmstest");
        std::fs::copy("/usr/sbin/sshd", &exe).unwrap();
        for k in ["host", "client"] {
            let o = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(k))
                .output()
                .unwrap();
            assert!(o.status.success(), "ssh-keygen: {}", text(&o));
        }
        let port = 20000 + (std::process::id() % 5000) as u16;
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {h}\nPidFile {p}\nUsePAM yes\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 AuthorizedKeysFile .ssh/authorized_keys\nPermitRootLogin no\nStrictModes no\n",
                h = dir.join("host").display(),
                p = dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
        let child = w
            .cmd(exe.to_str().unwrap())
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stderr(log)
            .spawn()
            .unwrap();
        let s = Sshd {
            log: dir.join("sshd.log"),
            child,
            port,
            key: dir.join("client"),
            made_run_sshd,
        };
        wait_until("sshd listening", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        s
    }

    /// Lets `user` (home `home`, ids uid/gid) log in with the client key.
    fn authorize(&self, home: &Path, uid: u32, gid: u32) {
        let ssh = home.join(".ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        let key = std::fs::read_to_string(self.key.with_extension("pub")).unwrap();
        std::fs::write(ssh.join("authorized_keys"), key).unwrap();
        for p in [&ssh, &ssh.join("authorized_keys")] {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ssh(&self, user: &str, cmd: &str) -> Command {
        self.ssh_with(&[], user, cmd)
    }

    /// `ssh` with extra options before the destination.
    fn ssh_with(&self, options: &[&str], user: &str, cmd: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(options)
            .arg("-i")
            .arg(&self.key)
            .args(["-p", &self.port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg(format!("{user}@127.0.0.1"))
            .arg(cmd)
            .stdin(Stdio::null());
        c
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.made_run_sshd {
            let _ = std::fs::remove_dir("/run/sshd");
        }
    }
}

#[test]
fn ssh_logins_land_in_the_users_domain() {
    if !can_login() {
        return;
    }
    if !Path::new("/usr/sbin/sshd").exists() || !which("ssh") {
        skipped("openssh-server or openssh-client missing");
        return;
    }
    let mut d = login_daemon("ssh");
    let homes = Homes(home_base(&d));
    let sshd_pam = "@include common-auth\naccount required {module} socket={socket}\n@include common-account\n\
                    session required {module} socket={socket} debug\n@include common-session-noninteractive\n";
    let w = World::new(&d, &[("sshd-dmstest", sshd_pam)]);
    d.wrap = w.wrap();
    d.spawn();
    let sshd = Sshd::start(&w);
    let alice = mapped(&d, "/DC=org/DC=dmstest/CN=Alice", &[]);
    let olga = mapped(&d, "/DC=org/DC=dmstest/CN=Olga", &[]);
    sshd.authorize(&homes.0.join(&alice), 47001, 47000);
    sshd.authorize(&homes.0.join(&olga), 47101, 47100);
    let dom_a = format!("dmslogin.{alice}");

    // First login stays open (a sleeper), the second must join the same domain and see it.
    let mut first = sshd
        .ssh(&alice, "echo in; exec sleep 60")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(first.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        "in",
        "first ssh login failed; sshd log:\n{}",
        std::fs::read_to_string(w.dir.join("sshd/sshd.log")).unwrap_or_default()
    );
    let o = sshd
        .ssh(
            &alice,
            "cat /proc/self/cgroup; echo host=$(hostname); ps -e -o comm=; id -u",
        )
        .output()
        .unwrap();
    assert!(o.status.success(), "second ssh: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        at_cgroup_ns_root(&out),
        "not in a domain's cgroup namespace: {out}"
    );
    let sleepers = host_pids(47001, "sleep");
    let members = cgroup_procs(&d.subtree, &dom_a);
    assert!(
        !sleepers.is_empty() && sleepers.iter().all(|p| members.contains(p)),
        "first login's sleep {sleepers:?} not in {dom_a}: {members:?}"
    );
    assert!(out.contains(&format!("host={dom_a}")), "{out}");
    assert!(
        out.lines().any(|l| l == "sleep"),
        "second login does not see the first: {out}"
    );
    // Only the domain's init, the two sessions' own sshd processes, their shells and commands.
    let comms: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("host="))
        .skip(1)
        .collect();
    assert!(
        !comms.contains(&"dmsd")
            && comms.iter().filter(|c| c.starts_with("sshd")).count() == 2
            && comms.len() <= 8,
        "host processes visible: {out}"
    );
    assert!(out.trim_end().ends_with("47001"), "{out}");

    // A memory hog is OOM-killed inside the domain (64M); the host and dmsd carry on.
    // (The hog volunteers as the OOM victim, so the session's own sshd process survives.)
    let o = sshd
        .ssh(
            &alice,
            "sh -c 'echo 1000 >/proc/self/oom_score_adj; exec tail /dev/zero'; echo rc=$?",
        )
        .output()
        .unwrap();
    assert!(o.status.success(), "memory hog: {}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "rc=137",
        "memory hog: {}",
        text(&o)
    );
    assert!(d.ctl(&["status"]).status.success());

    // Another VO's user gets another domain, which has a user namespace and no_new_privs.
    let o = sshd
        .ssh(&olga, "hostname; id -u; grep NoNewPrivs /proc/self/status")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\nsshd: {}", text(&o), sshd.log());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        [&format!("dmsother.{olga}"), "47101", "NoNewPrivs:", "1"],
        "{}",
        text(&o)
    );
    // With a terminal too.
    let o = sshd
        .ssh_with(&["-tt"], &olga, "tty; hostname")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\nsshd: {}", text(&o), sshd.log());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("dmsother.{olga}")),
        "{}",
        text(&o)
    );

    // Logout of the last session applies the idle action (freeze for dmslogin).
    assert_eq!(domain_state(&d, &dom_a).as_deref(), Some("running"));
    let _ = first.kill();
    let _ = first.wait();
    wait_until(
        "idle freeze after the last ssh logout",
        Duration::from_secs(15),
        || domain_state(&d, &dom_a).as_deref() == Some("frozen"),
    );
    drop(sshd);
}

/// munged, slurmctld and slurmd on one node (the recipe), inside the world.
struct Slurm {
    dir: PathBuf,
    daemons: Vec<Child>,
}

impl Slurm {
    fn start(w: &World, d: &Daemon) -> Slurm {
        use std::os::unix::fs::PermissionsExt;
        let dir = w.dir.join("slurm");
        for sub in ["state", "spool", "log", "munge"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for p in [&dir, &dir.join("munge")] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let munge_dir = dir.join("munge");
        let o = Command::new("chown")
            .arg("munge:")
            .arg(&munge_dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let socket = munge_dir.join("munge.sock");
        let o = Command::new("runuser")
            .args(["-u", "munge", "--", "/usr/sbin/munged"])
            .arg(format!("--socket={}", socket.display()))
            .arg(format!(
                "--pid-file={}",
                munge_dir.join("munged.pid").display()
            ))
            .arg(format!(
                "--log-file={}",
                munge_dir.join("munged.log").display()
            ))
            .arg(format!("--seed-file={}", munge_dir.join("seed").display()))
            .output()
            .unwrap();
        assert!(o.status.success(), "munged: {}", text(&o));
        let host = String::from_utf8(Command::new("hostname").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let ctl = bin("dmsctl");
        for (name, action) in [("prolog.sh", "start"), ("epilog.sh", "finish")] {
            let f = dir.join(name);
            std::fs::write(
                &f,
                format!(
                    "#!/bin/sh\nexec {} --socket {} job {action} >>{}/log/{name}.log 2>&1\n",
                    ctl.display(),
                    d.sock(),
                    dir.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let ds = dir.display();
        let conf = format!(
            "ClusterName=dmstest\nSlurmctldHost={host}(127.0.0.1)\nSlurmUser=root\nSlurmdUser=root\n\
             AuthType=auth/munge\nAuthInfo=socket={sock}\nStateSaveLocation={ds}/state\n\
             SlurmdSpoolDir={ds}/spool\nSlurmctldPidFile={ds}/slurmctld.pid\nSlurmdPidFile={ds}/slurmd.pid\n\
             SlurmctldLogFile={ds}/log/slurmctld.log\nSlurmdLogFile={ds}/log/slurmd.log\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core\nJobAcctGatherType=jobacct_gather/none\n\
             AccountingStorageType=accounting_storage/none\nUsePAM=1\nProlog={ds}/prolog.sh\n\
             Epilog={ds}/epilog.sh\nPrologFlags=Alloc\nReturnToService=2\nMpiDefault=none\n\
             PlugStackConfig={ds}/plugstack.conf\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2048 State=UNKNOWN\n\
             PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
            sock = socket.display(),
            cpus = std::thread::available_parallelism().map_or(1, |n| n.get()),
        );
        std::fs::write(dir.join("slurm.conf"), conf).unwrap();
        let mut daemons = Vec::new();
        for prog in ["slurmctld", "slurmd"] {
            daemons.push(
                w.cmd(prog)
                    .args(["-D", "-f"])
                    .arg(dir.join("slurm.conf"))
                    .env("SLURM_CONF", dir.join("slurm.conf"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
        }
        let s = Slurm { dir, daemons };
        wait_until("slurm node idle", Duration::from_secs(60), || {
            let o = w
                .cmd("sinfo")
                .args(["-h", "-o", "%t"])
                .env("SLURM_CONF", s.dir.join("slurm.conf"))
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).contains("idle")
        });
        s
    }

    fn srun(&self, w: &World, user: &str, home: &Path, script: &str) -> Output {
        self.srun_cmd(w, user, home, script).output().unwrap()
    }

    fn srun_cmd(&self, w: &World, user: &str, home: &Path, script: &str) -> Command {
        let mut c = w.cmd("runuser");
        c.args([
            "-u", user, "--", "srun", "-N1", "-t", "1", "sh", "-c", script,
        ])
        .env("SLURM_CONF", self.dir.join("slurm.conf"))
        .current_dir(home);
        c
    }

    /// Installs the SPANK plugin for the next steps (plugstack.conf is read by every srun and
    /// slurmstepd), talking to `d`.
    fn use_spank_plugin(&self, d: &Daemon) {
        let so = self.dir.join("spank_dms.so");
        std::fs::copy(bin("libspank_dms.so"), &so).unwrap();
        std::fs::write(
            self.dir.join("plugstack.conf"),
            format!(
                "required {} socket={} timeout=10 debug\n",
                so.display(),
                d.pam_sock().display()
            ),
        )
        .unwrap();
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for f in [
            "log/slurmctld.log",
            "log/slurmd.log",
            "log/prolog.sh.log",
            "log/epilog.sh.log",
        ] {
            all.push_str(&format!(
                "--- {f}\n{}\n",
                std::fs::read_to_string(self.dir.join(f)).unwrap_or_default()
            ));
        }
        all
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        for c in &mut self.daemons {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("munge/munged.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
}

#[test]
fn slurm_steps_run_in_the_job_users_domain() {
    if !can_login() {
        return;
    }
    if !which("slurmctld") || !which("munged") {
        skipped("slurm-wlm or munge missing");
        return;
    }
    // Slurm's ports (6817, 6818) are fixed: one Slurm at a time, and nothing else heavy.
    let _quiet = quiet_machine();
    let mut d = login_daemon("slurm");
    let homes = Homes(home_base(&d));
    // slurmstepd is multi-threaded: only the cgroups are joined (join=cgroup).
    let slurm_pam = "account required {module} socket={socket}\n\
                     session required {module} socket={socket} join=cgroup debug\n";
    let w = World::new(&d, &[("slurm", slurm_pam)]);
    d.wrap = w.wrap();
    d.spawn();
    let alice = mapped(&d, "/DC=org/DC=dmstest/CN=Alice", &[]);
    let jo = mapped(&d, "/DC=org/DC=dmstest/CN=Jo", &[]);
    let slurm = Slurm::start(&w, &d);

    // Per-user domain: the task's cgroup is the domain's, with its memory limit.
    let o = slurm.srun(&w, &alice, &homes.0.join(&alice), "cat /proc/self/cgroup");
    assert!(
        o.status.success(),
        "srun: {}\n{}\n{}",
        text(&o),
        slurm.logs(),
        d.log()
    );
    let dom_a = format!("dmslogin.{alice}");
    assert!(
        in_domain(&String::from_utf8_lossy(&o.stdout), &d.subtree, &dom_a),
        "{}",
        text(&o)
    );
    let mem = std::fs::read_to_string(cgroup_dir(&d.subtree, "memory").join(&dom_a).join(
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        },
    ))
    .unwrap();
    assert_eq!(mem.trim(), (64u64 << 20).to_string());

    // Per-job domain: made for the job the prolog announced, destroyed by the epilog.
    let o = slurm.srun(
        &w,
        &jo,
        &homes.0.join(&jo),
        "cat /proc/self/cgroup; echo job=$SLURM_JOB_ID",
    );
    assert!(
        o.status.success(),
        "srun: {}\n{}\n{}",
        text(&o),
        slurm.logs(),
        d.log()
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let job = out
        .lines()
        .find_map(|l| l.strip_prefix("job="))
        .unwrap()
        .to_string();
    let dom_j = format!("dmsjob.{jo}.job{job}");
    assert!(
        in_domain(&out, &d.subtree, &dom_j),
        "not in {dom_j}: {out}\n{}",
        d.log()
    );
    wait_until(
        "epilog destroys the job's domain",
        Duration::from_secs(20),
        || domain_state(&d, &dom_j).is_none(),
    );
    assert!(d.log().contains("job finished"), "{}", d.log());

    // The SPANK plugin: tasks run in the domain's namespaces too. PAM keeps only the account
    // check; the plugin opens a session per task (README's Slurm configuration).
    std::fs::write(
        w.dir.join("pam.d/slurm"),
        format!(
            "account required {} socket={}\n",
            bin("libpam_dms.so").display(),
            d.pam_sock().display()
        ),
    )
    .unwrap();
    slurm.use_spank_plugin(&d);
    let home_a = homes.0.join(&alice);
    let marker = format!("/tmp/{}-spank", d.subtree);
    let o = slurm.srun(
        &w,
        &alice,
        &home_a,
        &format!(
            "echo host=$(hostname); cat /proc/self/cgroup; echo self=$(cat /proc/$$/comm); \
             echo in-domain >{marker}; echo ps:; ps -e -o comm="
        ),
    );
    let leaked = Path::new(&marker).exists();
    let _ = std::fs::remove_file(&marker);
    assert!(
        o.status.success(),
        "srun with the plugin: {}\n{}\n{}",
        text(&o),
        slurm.logs(),
        d.log()
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains(&format!("host={dom_a}\n")), "{out}");
    assert!(
        at_cgroup_ns_root(&out),
        "not in the domain's cgroups: {out}"
    );
    // The task itself is in the domain's pid namespace and sees only the domain's processes.
    assert!(out.contains("self=sh\n"), "{out}");
    let comms: Vec<&str> = out.lines().skip_while(|l| *l != "ps:").skip(1).collect();
    assert!(
        comms.contains(&"dms-init")
            && comms.contains(&"ps")
            && comms.len() <= 4
            && !comms.iter().any(|c| c.starts_with("slurm") || *c == "dmsd"),
        "ps -e in the task: {out}"
    );
    assert!(!leaked, "the task wrote {marker} in the host's /tmp: {out}");
    // The domain's /tmp outlives the step; the domain stays running under a task (its
    // session holds it); the task's exit code reaches srun.
    let o = slurm.srun(
        &w,
        &alice,
        &home_a,
        &format!("sleep 2; cat {marker}; exit 3"),
    );
    assert_eq!(o.status.code(), Some(3), "{}\n{}", text(&o), d.log());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "in-domain");
    // Seen from the host: the task's process, in the domain's pid namespace, is in the
    // domain's cgroups; a signal ends it, and srun reports the task's own end (the plugin's
    // stand-in dies the same way).
    let init = d.json(&["domain", "show", &dom_a])["runtime"]["init"]["pid"].to_string();
    assert!(init.parse::<i32>().is_ok(), "no init pid: {init}");
    let task_sleeps = || -> Vec<i32> {
        let o = Command::new("pgrep")
            .args([
                "-u", "47001", "-x", "sleep", "--nslist", "pid", "--ns", &init,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let child = slurm
        .srun_cmd(&w, &alice, &home_a, "exec sleep 30")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        "the task's sleep in the domain's pid namespace",
        Duration::from_secs(20),
        || !task_sleeps().is_empty(),
    );
    let pids = task_sleeps();
    let members = cgroup_procs(&d.subtree, &dom_a);
    for p in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let o = child.wait_with_output().unwrap();
    assert!(
        pids.iter().all(|p| members.contains(p)),
        "{pids:?} not in {dom_a}: {members:?}"
    );
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("Terminated"),
        "{}",
        text(&o)
    );
    // Per-job domain: its hostname, then the epilog destroys it; the tasks' sessions end.
    let o = slurm.srun(
        &w,
        &jo,
        &homes.0.join(&jo),
        "echo host=$(hostname); echo job=$SLURM_JOB_ID",
    );
    assert!(o.status.success(), "{}\n{}", text(&o), d.log());
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let job = out.lines().find_map(|l| l.strip_prefix("job=")).unwrap();
    let dom_j = format!("dmsjob.{jo}.job{job}");
    assert!(out.contains(&format!("host={dom_j}\n")), "{out}");
    wait_until(
        "epilog destroys the job's domain",
        Duration::from_secs(20),
        || domain_state(&d, &dom_j).is_none(),
    );
    wait_until("the tasks' sessions end", Duration::from_secs(10), || {
        d.json(&["session", "list"]).as_array().unwrap().is_empty()
    });
    assert!(d.log().contains("slurm-task"), "{}", d.log());
}

// ---- Logins with a real X.509 VOMS proxy ----

/// The login gate, plus openssl and voms-proxy-fake (Debian package voms-clients).
fn can_login_with_proxies() -> bool {
    if !can_login() {
        return false;
    }
    let missing: Vec<&str> = ["openssl", "voms-proxy-fake"]
        .into_iter()
        .filter(|p| !which(p))
        .collect();
    if missing.is_empty() {
        return true;
    }
    skipped(&format!(
        "missing programs {missing:?} (scripts/deps.sh test installs them: openssl, voms-clients)"
    ))
}

const ALICE: &str = "/DC=org/DC=dmstest/CN=Alice";
const BOB: &str = "/DC=org/DC=dmstest/CN=Bob";
const CA_DN: &str = "/DC=org/DC=dmstest/CN=DMS Test CA";

/// A certificate and its key, made by [`Pki::cert`].
struct Cert {
    pem: PathBuf,
    key: PathBuf,
    /// The directory of its CA, for voms-proxy-fake's own check.
    ca_dir: PathBuf,
}

/// A PKI made with the openssl CLI in `dir` (inside the daemon's directory, removed with it):
/// `certificates/`, the trusted CA with `openssl rehash` names, as in
/// /etc/grid-security/certificates; `vomsdir/dmslogin/voms.pem`, VO dmslogin's VOMS server; and
/// `forged/`, a CA with the trusted CA's very name but its own key, which dmsd is not given.
struct Pki {
    dir: PathBuf,
    serial: std::cell::Cell<u32>,
    voms: Cert,
}

impl Pki {
    fn new(dir: PathBuf) -> Pki {
        for sub in [
            "certificates",
            "forged",
            "vomsdir/dmslogin",
            "keys",
            "proxies",
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(
            dir.join("eec.cnf"),
            "[eec]\nbasicConstraints = critical, CA:false\n\
             keyUsage = critical, digitalSignature, keyEncipherment\n",
        )
        .unwrap();
        for ca in ["certificates", "forged"] {
            openssl(
                &dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    CA_DN,
                    "-addext",
                    "basicConstraints=critical,CA:true",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                    "-keyout",
                    &format!("keys/{ca}-ca.key"),
                    "-out",
                    &format!("{ca}/dmstest-ca.pem"),
                ],
            );
            openssl(&dir, &["rehash", ca]);
        }
        let mut pki = Pki {
            dir,
            serial: std::cell::Cell::new(1),
            voms: Cert {
                pem: PathBuf::new(),
                key: PathBuf::new(),
                ca_dir: PathBuf::new(),
            },
        };
        pki.voms = pki.cert(
            "voms",
            "/DC=org/DC=dmstest/CN=voms.dmstest.org",
            "certificates",
        );
        std::fs::copy(&pki.voms.pem, pki.dir.join("vomsdir/dmslogin/voms.pem")).unwrap();
        pki
    }

    fn ca_dir(&self) -> PathBuf {
        self.dir.join("certificates")
    }

    fn vomsdir(&self) -> PathBuf {
        self.dir.join("vomsdir")
    }

    /// A user (end-entity) certificate for `dn`, issued by the CA of `ca` ("certificates", the
    /// trusted one, or "forged").
    fn cert(&self, name: &str, dn: &str, ca: &str) -> Cert {
        let serial = self.serial.get();
        self.serial.set(serial + 1);
        let (key, csr, pem) = (
            format!("keys/{name}.key"),
            format!("keys/{name}.csr"),
            format!("keys/{name}.pem"),
        );
        openssl(
            &self.dir,
            &[
                "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", dn, "-keyout", &key,
                "-out", &csr,
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &format!("{ca}/dmstest-ca.pem"),
                "-CAkey",
                &format!("keys/{ca}-ca.key"),
                "-set_serial",
                &serial.to_string(),
                "-days",
                "2",
                "-extfile",
                "eec.cnf",
                "-extensions",
                "eec",
                "-out",
                &pem,
            ],
        );
        Cert {
            pem: self.dir.join(pem),
            key: self.dir.join(key),
            ca_dir: self.dir.join(ca),
        }
    }

    /// The certificate's serial number in hex, as `openssl x509 -serial` prints it.
    fn serial_of(&self, cert: &Cert) -> String {
        let o = Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(&cert.pem)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let out = String::from_utf8(o.stdout).unwrap();
        out.trim().trim_start_matches("serial=").to_string()
    }

    /// Signs a CRL of the trusted CA listing `revoked` (serial, DN) with `openssl ca -gencrl`
    /// and renames it into the CA directory as `<hash>.r0`, as fetch-crl does.
    fn install_crl(&self, revoked: &[(&str, &str)]) {
        let mut index = String::new();
        for (serial, dn) in revoked {
            index.push_str(&format!(
                "R\t301231235959Z\t250101000000Z\t{serial}\tunknown\t{dn}\n"
            ));
        }
        std::fs::write(self.dir.join("index.txt"), index).unwrap();
        std::fs::write(self.dir.join("crlnumber"), "01\n").unwrap();
        std::fs::write(
            self.dir.join("crl.cnf"),
            "[ca]\ndefault_ca = dmstest\n[dmstest]\ndatabase = index.txt\n\
             crlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 1\n",
        )
        .unwrap();
        openssl(
            &self.dir,
            &[
                "ca",
                "-config",
                "crl.cnf",
                "-gencrl",
                "-keyfile",
                "keys/certificates-ca.key",
                "-cert",
                "certificates/dmstest-ca.pem",
                "-out",
                "new.crl",
            ],
        );
        let o = Command::new("openssl")
            .args(["x509", "-noout", "-hash", "-in"])
            .arg(self.ca_dir().join("dmstest-ca.pem"))
            .output()
            .unwrap();
        let hash = String::from_utf8(o.stdout).unwrap();
        std::fs::rename(
            self.dir.join("new.crl"),
            self.ca_dir().join(format!("{}.r0", hash.trim())),
        )
        .unwrap();
    }

    /// A VOMS proxy of `user` made by voms-proxy-fake: an attribute certificate of VO dmslogin
    /// with `fqans`, signed by `voms`; `extra` are more voms-proxy-fake options. The file is
    /// `proxies/<name>`, owned by `owner` (uid, gid), mode 0600.
    fn proxy(
        &self,
        name: &str,
        user: &Cert,
        voms: &Cert,
        fqans: &[&str],
        extra: &[&str],
        owner: (u32, u32),
    ) -> PathBuf {
        let out = self.dir.join("proxies").join(name);
        let mut c = Command::new("voms-proxy-fake");
        c.arg("-q")
            .arg("-certdir")
            .arg(&user.ca_dir)
            .arg("-cert")
            .arg(&user.pem)
            .arg("-key")
            .arg(&user.key)
            .arg("-hostcert")
            .arg(&voms.pem)
            .arg("-hostkey")
            .arg(&voms.key)
            .args(["-voms", "dmslogin", "-uri", "voms.dmstest.org:15000"]);
        for f in fqans {
            c.args(["-fqan", f]);
        }
        let o = c
            .args(extra)
            .arg("-out")
            .arg(&out)
            // It seeds OpenSSL from $HOME/.rnd (and says so when it is missing).
            .env("HOME", &self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            o.status.success() && out.exists(),
            "voms-proxy-fake {name}: {}",
            text(&o)
        );
        std::os::unix::fs::chown(&out, Some(owner.0), Some(owner.1)).unwrap();
        out
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
}

/// The PAM service of the proxy tests: runuser's own stack, then pam_env setting
/// X509_USER_PROXY from `conf` (written per login by [`set_proxy`]), then pam_dms with `options`.
fn proxy_pam_service(conf: &Path, options: &str) -> String {
    format!(
        "@include runuser\naccount required {{module}} socket={{socket}}\n\
         session required pam_env.so readenv=0 conffile={}\n\
         session required {{module}} socket={{socket}} debug{options}\n",
        conf.display()
    )
}

/// Points pam_env's X509_USER_PROXY at `proxy` for the next logins.
fn set_proxy(conf: &Path, proxy: &Path) {
    std::fs::write(
        conf,
        format!("X509_USER_PROXY DEFAULT={}\n", proxy.display()),
    )
    .unwrap();
}

/// A login daemon whose dmsd.toml trusts a new [`Pki`] in its directory, started in a world
/// whose `runuser-l` service is
/// [`proxy_pam_service`] with pam_env's file `conf` (and `dmstest-voms-allow` the same with
/// `on_error=allow`). Returns (daemon, homes, world, pki, conf).
fn proxy_login_world(tag: &str) -> (Daemon, Homes, World, Pki, PathBuf) {
    let mut d = login_daemon(tag);
    let homes = Homes(home_base(&d));
    let pki = Pki::new(d.dir.join("pki"));
    let cfg = std::fs::read_to_string(d.dir.join("dmsd.toml")).unwrap();
    let trusted = cfg.replacen(
        "[accounts]\n",
        &format!(
            "[accounts]\nx509_cert_dir = \"{}\"\nvomsdir = \"{}\"\n",
            pki.ca_dir().display(),
            pki.vomsdir().display()
        ),
        1,
    );
    assert_ne!(cfg, trusted, "no [accounts] table in dmsd.toml:\n{cfg}");
    std::fs::write(d.dir.join("dmsd.toml"), trusted).unwrap();
    let conf = d.dir.join("pam_env.conf");
    let w = World::new(
        &d,
        &[
            ("runuser-l", &proxy_pam_service(&conf, "")),
            (
                "dmstest-voms-allow",
                &proxy_pam_service(&conf, " on_error=allow"),
            ),
        ],
    );
    d.wrap = w.wrap();
    d.spawn();
    (d, homes, w, pki, conf)
}

/// A `runuser -l` login held open by a sleep, and what its shell printed before.
struct HeldLogin {
    child: Child,
    out: String,
}

/// Logs `account` in with `runuser -l` and X509_USER_PROXY = `proxy`; the shell prints its
/// hostname, proxy variable, groups and cgroups, then sleeps until [`HeldLogin::end`].
fn hold_login(w: &World, d: &Daemon, conf: &Path, account: &str, proxy: &Path) -> HeldLogin {
    set_proxy(conf, proxy);
    let mut child = w
        .cmd("runuser")
        .args([
            "-l",
            account,
            "-c",
            "echo host=$(hostname); echo proxy=$X509_USER_PROXY; echo groups=$(id -G); \
             cat /proc/self/cgroup; echo end; exec sleep 60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let mut r = std::io::BufReader::new(child.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap() == 0 {
            let o = child.wait_with_output().unwrap();
            panic!(
                "login of {account} with {} failed: {out}{}\ndmsd log:\n{}",
                proxy.display(),
                text(&o),
                d.log()
            );
        }
        if line.trim() == "end" {
            break;
        }
        out.push_str(&line);
    }
    HeldLogin { child, out }
}

impl HeldLogin {
    /// The host pid of the login's sleep: the shell runuser started, after its exec (by parent,
    /// not by uid: other logins of the same account may run meanwhile).
    fn sleeper(&self) -> i32 {
        let find = || {
            let o = Command::new("pgrep")
                .args(["-P", &self.child.id().to_string(), "-x", "sleep"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.trim().parse::<i32>().ok())
        };
        wait_until("the login's sleep", Duration::from_secs(10), || {
            find().is_some()
        });
        find().unwrap()
    }

    /// Ends the login (its sleep) and waits for runuser.
    fn end(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.sleeper()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let st = self.child.wait().unwrap();
        assert!(st.code().is_some(), "runuser: {st}");
    }
}

#[test]
fn a_real_voms_proxy_puts_the_login_into_its_vos_domain() {
    if !can_login_with_proxies() {
        return;
    }
    let (d, _homes, w, pki, conf) = proxy_login_world("voms");
    let alice_cert = pki.cert("alice", ALICE, "certificates");
    // Leases first (as a gatekeeper or the first mapping would): Alice, and Alice as a pilot.
    let alice = mapped(&d, ALICE, &[]);
    let pilot = mapped(&d, ALICE, &["/dmslogin/Role=pilot"]);
    assert_eq!((alice.as_str(), pilot.as_str()), ("dmsl001", "dmslpil001"));

    // Alice's RFC 3820 proxy with a plain dmslogin membership: her account, in VO dmslogin's
    // domain, seen from inside (hostname, cgroup namespace) and from the host (cgroup members).
    let proxy = pki.proxy(
        "alice",
        &alice_cert,
        &pki.voms,
        &["/dmslogin"],
        &["-rfc"],
        (47001, 47000),
    );
    let dom = format!("dmslogin.{alice}");
    let login = hold_login(&w, &d, &conf, &alice, &proxy);
    let out = login.out.clone();
    assert!(out.contains(&format!("host={dom}\n")), "{out}");
    assert!(
        at_cgroup_ns_root(&out),
        "not in a domain's cgroup namespace: {out}"
    );
    assert!(
        out.contains(&format!("proxy={}\n", proxy.display())),
        "pam_env did not set X509_USER_PROXY: {out}"
    );
    let (sleeper, members) = (login.sleeper(), cgroup_procs(&d.subtree, &dom));
    assert!(
        members.contains(&sleeper),
        "{sleeper} not in {dom}: {members:?}"
    );
    let sessions = d.json(&["session", "list"]);
    let s = &sessions.as_array().unwrap()[..];
    assert!(
        s.len() == 1
            && s[0]["domain"] == dom.as_str()
            && s[0]["user"] == alice.as_str()
            && s[0]["service"] == "runuser-l",
        "{sessions}"
    );
    // dmsd's record: the domain of the proxy's primary FQAN, and the lease renewed with it.
    let v = d.json(&["domain", "show", &dom]);
    assert_eq!(
        (&v["vo"], &v["group"], &v["role"]),
        (
            &"dmslogin".into(),
            &"/dmslogin".into(),
            &serde_json::Value::Null
        ),
        "{v}"
    );
    let a = d.json(&["account", "show", &alice]);
    assert_eq!(a["dn"], ALICE, "{a}");
    assert_eq!(a["fqans"], serde_json::json!(["/dmslogin"]), "{a}");
    assert!(d.log().contains("session opened"), "{}", d.log());
    login.end();
    wait_until("the session closed", Duration::from_secs(10), || {
        d.json(&["session", "list"]).as_array().unwrap().is_empty()
    });

    // A legacy (pre-RFC) proxy of Alice as a pilot: the pilot account, its own domain, and the
    // group-mapfile's secondary group for the pilot FQAN.
    let proxy = pki.proxy(
        "pilot",
        &alice_cert,
        &pki.voms,
        &["/dmslogin/Role=pilot", "/dmslogin"],
        &["-proxyver", "2"],
        (47051, 47050),
    );
    let dom_p = format!("dmslogin.{pilot}");
    let login = hold_login(&w, &d, &conf, &pilot, &proxy);
    let out = login.out.clone();
    assert!(out.contains(&format!("host={dom_p}\n")), "{out}");
    assert!(at_cgroup_ns_root(&out), "{out}");
    let groups = out
        .lines()
        .find_map(|l| l.strip_prefix("groups="))
        .unwrap_or_default();
    assert!(
        groups.split(' ').any(|g| g == "47900"),
        "no dmslpilots (47900) in {groups:?}: {out}"
    );
    let (sleeper, members) = (login.sleeper(), cgroup_procs(&d.subtree, &dom_p));
    assert!(
        members.contains(&sleeper),
        "{sleeper} not in {dom_p}: {members:?}"
    );
    let v = d.json(&["domain", "show", &dom_p]);
    assert_eq!(
        (&v["vo"], &v["group"], &v["role"]),
        (&"dmslogin".into(), &"/dmslogin".into(), &"pilot".into()),
        "{v}"
    );
    let a = d.json(&["account", "show", &pilot]);
    assert_eq!(
        a["fqans"],
        serde_json::json!(["/dmslogin/Role=pilot", "/dmslogin"]),
        "{a}"
    );
    assert_eq!(a["groups"], serde_json::json!(["dmslpilots"]), "{a}");
    login.end();
    wait_until("the session closed", Duration::from_secs(10), || {
        d.json(&["session", "list"]).as_array().unwrap().is_empty()
    });
    let domains = d.json(&["domain", "list"]);
    assert_eq!(domains.as_array().unwrap().len(), 2, "{domains}");
}

/// Names in a `dmsctl --json <what> list` (`name` of domains, `account` of accounts).
fn listed(d: &Daemon, what: &str, field: &str) -> Vec<String> {
    let v = d.json(&[what, "list"]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e[field].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Runs `login` (a program and its arguments, in the world) with X509_USER_PROXY = `proxy`: the
/// login must be refused, every text of `want` appear in its output or in what dmsd logged
/// meanwhile, and no session, domain or lease be left behind.
fn refused_login(w: &World, d: &Daemon, conf: &Path, login: &[&str], proxy: &Path, want: &[&str]) {
    let domains = listed(d, "domain", "name");
    let accounts = listed(d, "account", "account");
    let log_len = d.log().len();
    set_proxy(conf, proxy);
    let o = w.run(login[0], &login[1..]);
    let seen = format!(
        "{}\ndmsd log meanwhile:\n{}",
        text(&o),
        d.log().get(log_len..).unwrap_or_default()
    );
    let what = format!("{login:?} with {}", proxy.display());
    assert!(
        !o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("logged in"),
        "{what} was not refused: {seen}"
    );
    for text in want {
        assert!(seen.contains(text), "{what}: {text:?} not said: {seen}");
    }
    assert!(
        d.json(&["session", "list"]).as_array().unwrap().is_empty(),
        "{what} left a session"
    );
    assert_eq!(
        listed(d, "domain", "name"),
        domains,
        "{what} changed the domains"
    );
    assert_eq!(
        listed(d, "account", "account"),
        accounts,
        "{what} changed the leases"
    );
    eprintln!("{what}: refused as expected:\n{seen}");
}

#[test]
fn forged_expired_foreign_and_exposed_voms_proxies_are_refused() {
    if !can_login_with_proxies() {
        return;
    }
    let (d, _homes, w, pki, conf) = proxy_login_world("vomsbad");
    let alice_cert = pki.cert("alice", ALICE, "certificates");
    let bob_cert = pki.cert("bob", BOB, "certificates");
    let forged_alice = pki.cert("forged-alice", ALICE, "forged");
    let alice = mapped(&d, ALICE, &[]);
    let pilot = mapped(&d, ALICE, &["/dmslogin/Role=pilot"]);
    let owned = (47001, 47000);
    let member = ["/dmslogin"];
    let shell = "echo logged in; hostname";
    let as_alice = ["runuser", "-l", alice.as_str(), "-c", shell];
    let as_pilot = ["runuser", "-l", pilot.as_str(), "-c", shell];

    // Bob's genuine proxy used for Alice's account: it maps to another account (Bob holds
    // none, and the refusal leases him none, nor makes its home).
    let p = pki.proxy("bob", &bob_cert, &pki.voms, &member, &["-rfc"], owned);
    refused_login(
        &w,
        &d,
        &conf,
        &as_alice,
        &p,
        &["which maps to account", "dmsl002"],
    );
    assert!(!home_base(&d).join("dmsl002").exists());
    // Alice's pilot proxy for her plain account: the primary FQAN maps to the pilot pool.
    let p = pki.proxy(
        "alice-pilot",
        &alice_cert,
        &pki.voms,
        &["/dmslogin/Role=pilot"],
        &["-rfc"],
        owned,
    );
    refused_login(
        &w,
        &d,
        &conf,
        &as_alice,
        &p,
        &["which maps to account", &pilot],
    );
    // Alice's name, signed by a CA dmsd does not trust (with the trusted CA's very name).
    let p = pki.proxy(
        "forged",
        &forged_alice,
        &pki.voms,
        &member,
        &["-rfc"],
        owned,
    );
    refused_login(
        &w,
        &d,
        &conf,
        &as_alice,
        &p,
        &["is not trusted", "signature does not verify"],
    );
    // A proxy that expired an hour ago.
    let p = pki.proxy(
        "expired",
        &alice_cert,
        &pki.voms,
        &member,
        &["-rfc", "-hours", "1", "-pastproxy", "2:00"],
        owned,
    );
    refused_login(&w, &d, &conf, &as_alice, &p, &["expired at"]);
    // A valid proxy whose VOMS attributes expired an hour ago.
    let p = pki.proxy(
        "ac-expired",
        &alice_cert,
        &pki.voms,
        &member,
        &["-rfc", "-vomslife", "1", "-pastac", "2:00"],
        owned,
    );
    refused_login(
        &w,
        &d,
        &conf,
        &as_alice,
        &p,
        &["VOMS attribute certificate of VO", "expired at"],
    );
    // Alice signs her own pilot role: the signer is no VOMS server of the VO.
    let p = pki.proxy(
        "self-signed-role",
        &alice_cert,
        &alice_cert,
        &["/dmslogin/Role=pilot"],
        &["-rfc"],
        (47051, 47050),
    );
    refused_login(
        &w,
        &d,
        &conf,
        &as_pilot,
        &p,
        &["no VOMS server certificate"],
    );
    // Alice's good proxy, readable by everyone: pam_dms does not even send it.
    let p = pki.proxy("exposed", &alice_cert, &pki.voms, &member, &["-rfc"], owned);
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    refused_login(
        &w,
        &d,
        &conf,
        &as_alice,
        &p,
        &["mode 0644; it must be 0600 or 0400"],
    );

    // A genuine proxy of someone the mapfiles do not know: a refusal (by policy), not an error
    // that on_error=allow would let through unplaced.
    let mallory = pki.cert("mallory", "/DC=org/DC=dmstest/CN=Mallory", "certificates");
    let p = pki.proxy("mallory", &mallory, &pki.voms, &member, &["-rfc"], owned);
    refused_login(
        &w,
        &d,
        &conf,
        &[
            "pamtester",
            "dmstest-voms-allow",
            &alice,
            "open_session",
            "close_session",
        ],
        &p,
        &["no mapping for dn", "Mallory"],
    );

    // The same good proxy, private again: the login goes through.
    let p = pki.proxy("good", &alice_cert, &pki.voms, &member, &["-rfc"], owned);
    set_proxy(&conf, &p);
    let o = w.run("runuser", &["-l", &alice, "-c", "hostname"]);
    assert!(o.status.success(), "{}\n{}", text(&o), d.log());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("dmslogin.{alice}")
    );

    // The CA revokes Alice's certificate and a CRL arrives as fetch-crl installs one (renamed
    // into the CA directory): the running dmsd refuses her next login, naming the serial.
    let serial = pki.serial_of(&alice_cert);
    pki.install_crl(&[(&serial, "/DC=org/DC=dmstest/CN=Alice")]);
    refused_login(
        &w,
        &d,
        &conf,
        &as_alice,
        &p,
        &["is revoked", &format!("serial number {serial}")],
    );
    // A new CRL without her: she logs in again.
    pki.install_crl(&[]);
    let o = w.run("runuser", &["-l", &alice, "-c", "hostname"]);
    assert!(o.status.success(), "{}\n{}", text(&o), d.log());
}
