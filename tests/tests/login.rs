//! Logins with the real programs: libnss_dms.so.2 through glibc (getent, id), pam_dms.so
//! through pamtester, runuser -l, su -, a real sshd and Slurm with UsePAM=1.
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
        format!("{GRID_MAPFILE}\"/DC=org/DC=dmstest/CN=Dave\" .dmsl\n"),
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

    // Release: the account stops resolving, and the next identity gets it.
    d.ok(&["account", "release", "dmsl002"]);
    assert_eq!(
        w.run("getent", &["passwd", "dmsl002"]).status.code(),
        Some(2)
    );
    assert_eq!(mapped(&d, "/DC=org/DC=dmstest/CN=Dave", &[]), "dmsl002");
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
            .args(["-D", "-f"])
            .arg(dir.join("sshd_config"))
            .stderr(log)
            .spawn()
            .unwrap();
        let s = Sshd {
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

    fn ssh(&self, user: &str, cmd: &str) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-i")
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

    // Another VO's user gets another domain.
    let o = sshd.ssh(&olga, "hostname").output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("dmsother.{olga}"),
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
        w.cmd("runuser")
            .args([
                "-u", user, "--", "srun", "-N1", "-t", "1", "sh", "-c", script,
            ])
            .env("SLURM_CONF", self.dir.join("slurm.conf"))
            .current_dir(home)
            .output()
            .unwrap()
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
}
