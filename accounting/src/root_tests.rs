//! Root-only checks against the real kernel: a cgroup v1 group and a veth pair are created,
//! read through kept-open files, removed, and the next read must say [`UsageError::Vanished`].
//!
//! Gated by `can_run()`, which prints why it skips; with DMS_REQUIRE_ROOT_TESTS=1 a skip is a
//! failure. Groups are named `accttest-<pid>`, links `dmsacct<pid><n>{a,b}`; Drop guards remove
//! them when a test fails.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{LinkSide, NetReader, NetUsage, UsageError, UsageReader, V1Dirs};

const V1_ROOT: &str = "/sys/fs/cgroup";
const SYS_CLASS_NET: &str = "/sys/class/net";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a test can run here given its own requirement; prints why not.
fn can_run(why_not: Option<String>) -> bool {
    let why = if !is_root() {
        Some("not root".to_string())
    } else {
        why_not
    };
    match why {
        None => true,
        Some(w) => {
            assert!(
                std::env::var("DMS_REQUIRE_ROOT_TESTS").is_err(),
                "root tests required but cannot run: {w}"
            );
            eprintln!("SKIPPED: {w}");
            false
        }
    }
}

/// Created v1 groups and the process put into them; killed and removed on drop.
struct Groups {
    dirs: Vec<PathBuf>,
    child: Option<Child>,
}

impl Groups {
    fn stop_child(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Removes the groups, retrying while the kernel still holds the just-emptied group busy.
    fn remove(&mut self) -> io::Result<()> {
        self.stop_child();
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(d) = self.dirs.last() {
            match fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(e) => return Err(e),
            }
            self.dirs.pop();
        }
        Ok(())
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("cleanup: cannot remove test cgroups {:?}: {e}", self.dirs);
        }
    }
}

#[test]
fn v1_real_group_reads_then_vanishes() {
    let memory = Path::new(V1_ROOT).join("memory");
    let why = (!memory.join("memory.usage_in_bytes").exists())
        .then(|| format!("no cgroup v1 memory controller at {}", memory.display()));
    if !can_run(why) {
        return;
    }
    let name = format!("accttest-{}", std::process::id());
    // Controller -> its group; controllers co-mounted (cpu,cpuacct) share one directory.
    let mut dir_of: BTreeMap<&str, PathBuf> = BTreeMap::new();
    let mut g = Groups {
        dirs: Vec::new(),
        child: None,
    };
    for c in ["cpu", "cpuacct", "memory", "pids", "blkio"] {
        let root = Path::new(V1_ROOT).join(c);
        if !root.join("cgroup.procs").exists() || root.join("cgroup.controllers").exists() {
            continue; // not a v1 hierarchy of this controller
        }
        let d = fs::canonicalize(&root).unwrap().join(&name);
        if !g.dirs.contains(&d) {
            fs::create_dir(&d).unwrap();
            g.dirs.push(d.clone());
        }
        dir_of.insert(c, d);
    }
    let dirs = V1Dirs {
        cpu: dir_of.get("cpu").cloned(),
        cpuacct: dir_of.get("cpuacct").cloned(),
        memory: dir_of.get("memory").cloned(),
        pids: dir_of.get("pids").cloned(),
        blkio: dir_of.get("blkio").cloned(),
    };
    let child = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = child.id().to_string();
    g.child = Some(child);
    for d in &g.dirs {
        fs::write(d.join("cgroup.procs"), &pid).unwrap();
    }

    let mut r = UsageReader::open_v1(&dirs).unwrap();
    let u = r.read().unwrap();
    eprintln!("v1 usage: {u:?}");
    if dirs.pids.is_some() {
        assert_eq!(u.pids_current, 1);
        assert_eq!(u.pids_limit_hits, Some(0));
    }
    assert!(u.memory_rss_bytes.is_some());
    assert!(u.memory_cache_bytes.is_some());
    assert_eq!(u.memory_limit_hits, Some(0));
    assert_eq!(u.oom_kills, Some(0));
    if dirs.cpu.is_some() {
        assert_eq!(u.cpu_throttled_periods, Some(0));
    }
    if dirs.blkio.is_some() {
        assert!(u.io_read_ops.is_some() && u.io_write_ops.is_some());
    }
    assert_eq!(u.psi_cpu_some_us, None, "no PSI on v1");
    assert_eq!(u.psi_memory_full_us, None);
    assert_eq!(u.network, None);

    g.remove().unwrap();
    match r.read() {
        Err(UsageError::Vanished(p)) => eprintln!("after rmdir: vanished {}", p.display()),
        other => panic!("expected Vanished after rmdir, got {other:?}"),
    }
    match UsageReader::open_v1(&dirs) {
        Err(UsageError::Vanished(_)) => {}
        other => panic!("expected Vanished when opening a removed group, got {other:?}"),
    }
}

/// A veth pair, deleted on drop.
struct Veth {
    a: String,
    b: String,
}

impl Veth {
    fn new() -> Result<Veth, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let stem = format!("dmsacct{}{n}", std::process::id() % 100_000);
        let v = Veth {
            a: format!("{stem}a"),
            b: format!("{stem}b"),
        };
        assert!(v.a.len() <= 15, "{}", v.a);
        ip(&["link", "add", &v.a, "type", "veth", "peer", "name", &v.b])?;
        for l in [&v.a, &v.b] {
            // No IPv6 autoconfiguration traffic: the counters move only by what the test sends.
            let _ = fs::write(format!("/proc/sys/net/ipv6/conf/{l}/disable_ipv6"), "1");
            ip(&["link", "set", l, "up"])?;
        }
        Ok(v)
    }

    fn delete(&self) -> Result<(), String> {
        ip(&["link", "del", &self.a])
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        if Path::new(SYS_CLASS_NET).join(&self.a).exists() {
            if let Err(e) = self.delete() {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Sends `n` 60-byte broadcast frames (local experimental ethertype 0x88b5) out of `ifname`.
fn send_frames(ifname: &str, n: usize) {
    let index: i32 = fs::read_to_string(Path::new(SYS_CLASS_NET).join(ifname).join("ifindex"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: socket(2) has no memory preconditions; the result is checked below.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    assert!(raw >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
    // SAFETY: `raw` is a fresh descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain old data for which all-zero bytes are a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = 0x88b5u16.to_be();
    addr.sll_ifindex = index;
    let mut frame = [0u8; 60];
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0xac, 0xc7, 0x01]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    for _ in 0..n {
        // SAFETY: `frame` and `addr` are live for the call and the lengths passed are theirs;
        // `fd` is open.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(sent, 60, "sendto: {}", io::Error::last_os_error());
    }
}

/// Reads until `done` holds for the difference from `base`, or fails after two seconds.
fn wait_for(r: &mut NetReader, base: &NetUsage, done: impl Fn(&NetUsage) -> bool) -> NetUsage {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = r.read().unwrap();
        let d = NetUsage {
            receive_bytes: now.receive_bytes - base.receive_bytes,
            transmit_bytes: now.transmit_bytes - base.transmit_bytes,
            receive_packets: now.receive_packets - base.receive_packets,
            transmit_packets: now.transmit_packets - base.transmit_packets,
            receive_dropped: now.receive_dropped - base.receive_dropped,
            transmit_dropped: now.transmit_dropped - base.transmit_dropped,
        };
        if done(&d) || Instant::now() > deadline {
            return d;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_carrier(ifname: &str) {
    let f = Path::new(SYS_CLASS_NET).join(ifname).join("carrier");
    let deadline = Instant::now() + Duration::from_secs(2);
    while !fs::read_to_string(&f).is_ok_and(|s| s.trim() == "1") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn veth_counters_swap_then_vanish() {
    let why = (!Path::new(SYS_CLASS_NET).exists()).then(|| format!("no {SYS_CLASS_NET}"));
    if !can_run(why) {
        return;
    }
    let v = match Veth::new() {
        Ok(v) => v,
        Err(e) => {
            can_run(Some(format!("cannot create a veth pair: {e}")));
            return;
        }
    };
    wait_carrier(&v.a);
    wait_carrier(&v.b);
    let root = Path::new(SYS_CLASS_NET);
    // `a` is the host end of the domain's pair, `b` the end inside the domain.
    let mut host = NetReader::open(root, &v.a, LinkSide::HostPeer).unwrap();
    let mut dom = NetReader::open(root, &v.b, LinkSide::Domain).unwrap();
    let (h0, d0) = (host.read().unwrap(), dom.read().unwrap());

    // The host sends 3 frames: the domain receives them, seen from either end.
    send_frames(&v.a, 3);
    let expect_rx = |d: &NetUsage| d.receive_packets == 3 && d.receive_bytes == 180;
    let hd = wait_for(&mut host, &h0, expect_rx);
    let dd = wait_for(&mut dom, &d0, expect_rx);
    for d in [&hd, &dd] {
        assert_eq!((d.receive_packets, d.receive_bytes), (3, 180), "{d:?}");
        assert_eq!((d.transmit_packets, d.transmit_bytes), (0, 0), "{d:?}");
    }

    // The domain sends 2 frames.
    send_frames(&v.b, 2);
    let expect_tx = |d: &NetUsage| d.transmit_packets == 2 && d.transmit_bytes == 120;
    let hd = wait_for(&mut host, &h0, expect_tx);
    let dd = wait_for(&mut dom, &d0, expect_tx);
    for d in [&hd, &dd] {
        assert_eq!((d.transmit_packets, d.transmit_bytes), (2, 120), "{d:?}");
        assert_eq!((d.receive_packets, d.receive_bytes), (3, 180), "{d:?}");
    }
    // No protocol handles ethertype 0x88b5, so each receiving stack counts the frames in its
    // rx_dropped: `b` dropped the 3 the domain received, `a` the 2 the domain sent. Through the
    // host end that is the domain's transmit_dropped, which shows the swap of the drop counters.
    assert_eq!((hd.receive_dropped, hd.transmit_dropped), (0, 2), "{hd:?}");
    assert_eq!((dd.receive_dropped, dd.transmit_dropped), (3, 0), "{dd:?}");

    // Deleting one end deletes the pair; both kept-open readers now see it gone.
    v.delete().unwrap();
    for r in [&mut host, &mut dom] {
        match r.read() {
            Err(UsageError::Vanished(p)) => eprintln!("after link del: vanished {}", p.display()),
            other => panic!("expected Vanished after link del, got {other:?}"),
        }
    }
    assert!(matches!(
        NetReader::open(root, &v.a, LinkSide::HostPeer),
        Err(UsageError::Vanished(_))
    ));
}
