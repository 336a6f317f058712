//! Root integration tests: real bridges, veth pairs, addresses and routes.
//!
//! Network namespaces are created by unsharing in a short-lived thread and kept alive only by
//! an fd, so they vanish with the test process even if it is killed; links created in the
//! caller's namespace use the prefix `dmsnt` and are deleted by Drop guards. Only addresses in
//! 198.18.0.0/15 (benchmarking range) are used, and only inside test namespaces.
//!
//! Gated by `can_run()`, which prints why it skips; with DMS_REQUIRE_ROOT_TESTS=1 a skip is a
//! failure.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dms_net::{Link, NetError, Rtnl};
use nix::sched::CloneFlags;

/// Whether these tests can run here; prints why not.
fn can_run() -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("not root")
    } else if !Path::new("/proc/thread-self/ns/net").exists() {
        Some("no network namespace support (/proc/thread-self/ns/net missing)")
    } else {
        None
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

/// A unique link name `dmsnt<pid><tag><n>` (at most 15 bytes).
fn link_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = format!("dmsnt{:05}{tag}{n}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "{name}");
    name
}

/// A fresh network namespace, alive as long as this fd (and any socket in it) is.
struct Netns(OwnedFd);

impl Netns {
    fn new() -> Netns {
        std::thread::scope(|s| {
            let t = s.spawn(|| {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET).unwrap();
                OwnedFd::from(File::open("/proc/thread-self/ns/net").unwrap())
            });
            Netns(join(t))
        })
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// Runs `f` on a thread that has joined this namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| join(self.spawn(s, f)))
    }

    fn spawn<'scope, T: Send + 'scope>(
        &'scope self,
        s: &'scope std::thread::Scope<'scope, '_>,
        f: impl FnOnce() -> T + Send + 'scope,
    ) -> std::thread::ScopedJoinHandle<'scope, T> {
        s.spawn(move || {
            nix::sched::setns(self.fd(), CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
    }

    fn rtnl(&self) -> Rtnl {
        Rtnl::open_in_netns(self.fd()).unwrap()
    }
}

fn join<T>(t: std::thread::ScopedJoinHandle<'_, T>) -> T {
    t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Deletes a link of the caller's namespace on drop, if it still exists.
struct HostLink(String);

impl Drop for HostLink {
    fn drop(&mut self) {
        match Rtnl::open().and_then(|mut r| r.delete_link_by_name(&self.0)) {
            Ok(_) => {}
            Err(e) => eprintln!("cleanup: {e}"),
        }
    }
}

fn must_link(rtnl: &mut Rtnl, name: &str) -> Link {
    rtnl.link(name)
        .unwrap()
        .unwrap_or_else(|| panic!("link {name} not found"))
}

#[test]
fn bridge_with_alias_lookup_and_delete() {
    if !can_run() {
        return;
    }
    let mut rtnl = Rtnl::open().unwrap();
    let name = link_name("b");
    let _guard = HostLink(name.clone());

    let index = rtnl.create_bridge(&name, "dms-test-bridge").unwrap();
    let link = must_link(&mut rtnl, &name);
    assert_eq!(link.index, index);
    assert_eq!(link.kind.as_deref(), Some("bridge"));
    assert_eq!(link.alias.as_deref(), Some("dms-test-bridge"));
    assert_eq!(link.master, None);
    assert!(!link.up);
    let all = rtnl.links().unwrap();
    assert_eq!(all.iter().filter(|l| l.name == name).count(), 1);
    assert_eq!(all.iter().find(|l| l.index == index), Some(&link));

    rtnl.set_alias(index, "dms-test-renamed").unwrap();
    rtnl.set_mtu(index, 1280).unwrap();
    let link = must_link(&mut rtnl, &name);
    assert_eq!(link.alias.as_deref(), Some("dms-test-renamed"));
    assert_eq!(link.mtu, 1280);
    rtnl.set_alias(index, "").unwrap();
    assert_eq!(must_link(&mut rtnl, &name).alias, None);

    let e = rtnl.create_bridge(&name, "dms-test-bridge").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("creating bridge {name}: File exists (os error 17)")
    );
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    // The failed duplicate did not touch the existing bridge.
    assert_eq!(must_link(&mut rtnl, &name).index, index);

    let e = rtnl.set_mtu(index, 10).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("setting MTU 10 on link {index}: Invalid argument")),
        "{e}"
    );

    rtnl.delete_link(index).unwrap();
    assert_eq!(rtnl.link(&name).unwrap(), None);
    assert!(!rtnl.delete_link_by_name(&name).unwrap());
    let e = rtnl.delete_link(index).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("deleting link {index}: No such device (os error 19)")
    );
}

#[test]
fn veth_created_up_on_a_bridge_in_one_request() {
    if !can_run() {
        return;
    }
    let ns = Netns::new();
    let mut host = Rtnl::open().unwrap();
    let mut inside = ns.rtnl();
    let (br, vh) = (link_name("b"), link_name("v"));
    let _guards = (HostLink(vh.clone()), HostLink(br.clone()));
    let bridge = host.create_bridge(&br, "dms-net test").unwrap();

    host.create_veth_on_bridge(&vh, bridge, "eth0", ns.fd())
        .unwrap();
    let link = must_link(&mut host, &vh);
    assert_eq!((link.master, link.up), (Some(bridge), true));
    let peer = must_link(&mut inside, "eth0");
    assert!(!peer.up);

    // A missing bridge: refused, and neither end is left behind.
    let vh2 = link_name("v");
    let _guard2 = HostLink(vh2.clone());
    let e = host
        .create_veth_on_bridge(&vh2, u32::MAX - 1, "eth1", ns.fd())
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("creating veth {vh2} (peer eth1) on bridge")),
        "{e}"
    );
    assert_eq!(host.link(&vh2).unwrap(), None);
    assert_eq!(inside.link("eth1").unwrap(), None);
}

#[test]
fn veth_peer_created_inside_the_netns() {
    if !can_run() {
        return;
    }
    let ns = Netns::new();
    let mut host = Rtnl::open().unwrap();
    let mut inside = ns.rtnl();
    let (vh, vh2) = (link_name("v"), link_name("v"));
    let _guards = (HostLink(vh.clone()), HostLink(vh2.clone()));

    let index = host.create_veth(&vh, "eth0", ns.fd()).unwrap();
    let link = must_link(&mut host, &vh);
    assert_eq!((link.index, link.kind.as_deref()), (index, Some("veth")));
    let peer = must_link(&mut inside, "eth0");
    assert_eq!(peer.kind.as_deref(), Some("veth"));
    let names: Vec<String> = inside
        .links()
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, ["lo", "eth0"]);

    // Same host name: refused, naming both ends.
    let e = host.create_veth(&vh, "eth1", ns.fd()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("creating veth {vh} (peer eth1): File exists (os error 17)")
    );
    // Same peer name inside the netns: refused, and no half pair is left on the host.
    let e = host.create_veth(&vh2, "eth0", ns.fd()).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("creating veth {vh2} (peer eth0): File exists")),
        "{e}"
    );
    assert_eq!(host.link(&vh2).unwrap(), None);

    // Deleting the host end removes the peer too.
    host.delete_link(index).unwrap();
    assert_eq!(host.link(&vh).unwrap(), None);
    assert_eq!(inside.link("eth0").unwrap(), None);
    assert!(!host.delete_link_by_name(&vh).unwrap());
}

/// The daemon's topology, entirely inside two fresh namespaces: `outer` plays the host (bridge
/// with the gateway address, host end of the veth), `inner` the container domain.
#[test]
fn bridge_veth_addresses_route_and_traffic() {
    if !can_run() {
        return;
    }
    let outer = Netns::new();
    let inner = Netns::new();
    let mut out = outer.rtnl();
    let mut inn = inner.rtnl();
    let gateway = Ipv4Addr::new(198, 18, 0, 1);
    let other_net_addr = Ipv4Addr::new(198, 18, 1, 1);
    let inner_addr = Ipv4Addr::new(198, 18, 0, 2);

    let br = out.create_bridge("dmsntbr0", "dms-test-bridge").unwrap();
    out.add_address(br, gateway, 24).unwrap();
    out.add_address(br, other_net_addr, 24).unwrap();
    let e = out.add_address(br, gateway, 24).unwrap_err();
    // Kernels with extended acks append their explanation: "... (kernel: ipv4: Address
    // already assigned)".
    assert!(
        e.to_string().starts_with(&format!(
            "adding address 198.18.0.1/24 to link {br}: File exists (os error 17)"
        )),
        "{e}"
    );
    out.set_up(br).unwrap();

    let vh = out.create_veth("dmsntvh0", "eth0", inner.fd()).unwrap();
    // Before enslaving: a failed IFLA_MASTER change releases the link from its current
    // master first (see `Rtnl::set_master`).
    let e = out.set_master(vh, 999_999).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("attaching link {vh} to master 999999: ")),
        "{e}"
    );
    out.set_master(vh, br).unwrap();
    out.set_mtu(vh, 1400).unwrap();
    out.set_up(vh).unwrap();
    let link = must_link(&mut out, "dmsntvh0");
    assert_eq!((link.master, link.up, link.mtu), (Some(br), true, 1400));
    assert!(must_link(&mut out, "dmsntbr0").up);

    let eth0 = must_link(&mut inn, "eth0").index;
    inn.set_mtu(eth0, 1400).unwrap();
    inn.set_up(eth0).unwrap();
    inn.add_address(eth0, inner_addr, 24).unwrap();
    let e = inn
        .add_default_route(Ipv4Addr::new(198, 18, 9, 1))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENETUNREACH), "{e}");
    assert!(
        e.to_string()
            .starts_with("adding default route via 198.18.9.1: Network is unreachable"),
        "{e}"
    );
    inn.add_default_route(gateway).unwrap();
    assert_eq!(inner.run(default_gateway), Some(gateway));
    let e = inn.add_default_route(gateway).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}");

    // Inner -> outer's other subnet: only reachable through the default route.
    tcp_roundtrip(&outer, other_net_addr, &inner);
    // Outer -> inner over the bridge.
    tcp_roundtrip(&inner, inner_addr, &outer);

    out.delete_link(vh).unwrap();
    assert_eq!(inn.link("eth0").unwrap(), None);
    assert_eq!(inner.run(default_gateway), None);
}

/// The gateway of the IPv4 default route of the calling thread's namespace.
fn default_gateway() -> Option<Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/thread-self/net/route").unwrap();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f[1] == "00000000" && f[7] == "00000000").then(|| {
            let raw = u32::from_str_radix(f[2], 16).unwrap();
            Ipv4Addr::from(raw.to_ne_bytes())
        })
    })
}

/// Listens on `addr` in `server_ns`, connects from `client_ns` and exchanges a few bytes, with
/// a deadline.
fn tcp_roundtrip(server_ns: &Netns, addr: Ipv4Addr, client_ns: &Netns) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let (port_tx, port_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let server = server_ns.spawn(s, move || {
            let listener = TcpListener::bind(SocketAddrV4::new(addr, 0)).unwrap();
            port_tx.send(listener.local_addr().unwrap().port()).unwrap();
            listener.set_nonblocking(true).unwrap();
            loop {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        conn.write_all(b"dms-net").unwrap();
                        return;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        assert!(Instant::now() < deadline, "no connection to {addr}");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("accept on {addr}: {e}"),
                }
            }
        });
        let port = port_rx.recv().unwrap();
        let target = SocketAddr::V4(SocketAddrV4::new(addr, port));
        let client = client_ns.spawn(s, move || loop {
            match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                Ok(mut conn) => {
                    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut got = Vec::new();
                    conn.read_to_end(&mut got).unwrap();
                    return got;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "connecting to {target}: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        assert_eq!(join(client), b"dms-net");
        join(server);
    });
}

#[test]
fn open_in_netns_reports_a_bad_fd() {
    if !can_run() {
        return;
    }
    // A regular file is not a namespace: setns fails with EINVAL, on the helper thread.
    let file = File::open("/proc/self/status").unwrap();
    let e = Rtnl::open_in_netns(file.as_fd()).unwrap_err();
    assert!(matches!(e, NetError::Io { .. }), "{e:?}");
    assert!(
        e.to_string().starts_with("joining network namespace"),
        "{e}"
    );
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
}
