//! A small synchronous rtnetlink client for DMS container-domain networking.
//!
//! [`Rtnl`] owns one `NETLINK_ROUTE` socket, either in the caller's network namespace
//! ([`Rtnl::open`]) or in another one ([`Rtnl::open_in_netns`]). It creates bridges and veth
//! pairs, enslaves and configures links, and adds IPv4 addresses and default routes. Every
//! request is acknowledged (`NLM_F_ACK`) and the ack or error is read back before the call
//! returns, matched by sequence number; a failure names the operation and the object, e.g.
//! `creating veth dmsh7 (peer eth0): File exists (os error 17)`.
//!
//! The messages are built by hand (see `msg.rs`): the crate needs a dozen message shapes, and
//! the netlink-packet-* crates change their API with nearly every release. No async runtime:
//! every call blocks, with a receive timeout so a lost reply is an error, not a hang.

mod msg;
mod name;

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

pub use name::{validate_ifname, MAX_IFNAME_LEN};

use msg::MsgBuilder;

/// Longest interface alias the kernel accepts (`IFALIASZ - 1`).
pub const MAX_ALIAS_LEN: usize = 255;

/// How long a request waits for the kernel's reply before failing.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a link dump is retried when the kernel reports that it was interrupted by a
/// concurrent change (`NLM_F_DUMP_INTR`).
const DUMP_ATTEMPTS: usize = 5;

/// A failed network operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// An interface name was rejected before anything was sent to the kernel.
    #[error("interface name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Another argument was rejected before anything was sent to the kernel.
    #[error("{what} {value}: {reason}")]
    InvalidArgument {
        /// Which argument (`"prefix length"`, `"interface alias"`, ...).
        what: &'static str,
        /// The rejected value, quoted if it is a string.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The kernel refused a request.
    #[error("{op}: {source}{}", kernel_note(.kernel_message))]
    Netlink {
        /// What was being done, with the object: `creating veth dmsh7 (peer eth0)`.
        op: String,
        /// The errno the kernel returned.
        source: io::Error,
        /// The kernel's extended-ack text, if it sent one (`Nexthop has invalid gateway`).
        kernel_message: Option<String>,
    },
    /// A socket or thread operation failed (socket creation, setns, send, receive, timeout).
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The OS error.
        source: io::Error,
    },
    /// The kernel's reply could not be understood.
    #[error("{op}: malformed netlink reply: {detail}")]
    Protocol {
        /// What was being done.
        op: String,
        /// What was wrong with the reply.
        detail: String,
    },
}

fn kernel_note(message: &Option<String>) -> String {
    match message {
        Some(m) => format!(" (kernel: {m})"),
        None => String::new(),
    }
}

impl NetError {
    /// The errno of a kernel or OS error, e.g. to tell `EEXIST` from other failures.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            NetError::Netlink { source, .. } | NetError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Data messages `(type, payload)` received in reply to one request.
type Replies = Vec<(u16, Vec<u8>)>;

/// Result type of this crate.
pub type Result<T, E = NetError> = std::result::Result<T, E>;

/// A network interface as reported by `RTM_GETLINK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The interface index.
    pub index: u32,
    /// The interface name.
    pub name: String,
    /// The link kind (`"veth"`, `"bridge"`, ...); `None` for physical and loopback devices.
    pub kind: Option<String>,
    /// The interface alias (`IFLA_IFALIAS`), `None` if unset or empty.
    pub alias: Option<String>,
    /// The index of the master device (a bridge), if enslaved.
    pub master: Option<u32>,
    /// Whether the interface is administratively up (`IFF_UP`).
    pub up: bool,
    /// The MTU.
    pub mtu: u32,
}

/// A `NETLINK_ROUTE` socket bound to the network namespace it was opened in.
///
/// Requests are strictly sequential (`&mut self`); the socket subscribes to no multicast
/// group, so only replies to its own requests arrive.
#[derive(Debug)]
pub struct Rtnl {
    fd: OwnedFd,
    /// Our netlink port id, the `nlmsg_pid` of every reply.
    port: u32,
    /// The last sequence number used.
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// Opens a socket in the caller's network namespace.
    pub fn open() -> Result<Rtnl> {
        let io_err = |what: &str, e: nix::Error| NetError::Io {
            op: format!("opening NETLINK_ROUTE socket: {what}"),
            source: e.into(),
        };
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(|e| io_err("socket", e))?;
        // Errors come back with only the request's header (CAP_ACK) and with the kernel's
        // explanation (EXT_ACK). Both are optional comforts: old kernels refuse them.
        let _ = set_int_opt(&fd, libc::NETLINK_CAP_ACK, 1);
        let _ = set_int_opt(&fd, libc::NETLINK_EXT_ACK, 1);
        let timeout = TimeVal::new(
            REPLY_TIMEOUT.as_secs() as libc::time_t,
            libc::suseconds_t::from(REPLY_TIMEOUT.subsec_micros()),
        );
        socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &timeout)
            .map_err(|e| io_err("SO_RCVTIMEO", e))?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| io_err("bind", e))?;
        let addr: NetlinkAddr =
            socket::getsockname(fd.as_raw_fd()).map_err(|e| io_err("getsockname", e))?;
        Ok(Rtnl {
            fd,
            port: addr.pid(),
            seq: 0,
            buf: vec![0; 32 * 1024],
        })
    }

    /// Opens a socket in the network namespace `netns` (an open `/proc/<pid>/ns/net` or
    /// `/run/netns/<name>`).
    ///
    /// A dedicated short-lived thread joins the namespace, opens the socket and exits; the
    /// socket stays in the namespace it was created in. The caller's thread never changes
    /// namespace.
    pub fn open_in_netns(netns: BorrowedFd<'_>) -> Result<Rtnl> {
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("dms-net-setns".into())
                .spawn_scoped(scope, move || {
                    nix::sched::setns(netns, CloneFlags::CLONE_NEWNET).map_err(|e| {
                        NetError::Io {
                            op: format!(
                                "joining network namespace (fd {}) to open a netlink socket",
                                netns.as_raw_fd()
                            ),
                            source: e.into(),
                        }
                    })?;
                    Rtnl::open()
                })
                .map_err(|e| NetError::Io {
                    op: "spawning the thread that opens a netlink socket in a netns".into(),
                    source: e,
                })?;
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Looks a link up by name; `Ok(None)` if there is none.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        validate_ifname(name)?;
        let op = || format!("looking up link {name}");
        match self.request(msg::get_link(Some(name)), &op) {
            Ok(replies) => Self::first_link(replies, &op),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists all links of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let op = || "listing links".to_string();
        let replies = self.dump(msg::get_link(None), &op)?;
        replies
            .iter()
            .filter(|(ty, _)| *ty == msg::RTM_NEWLINK)
            .map(|(_, payload)| {
                msg::parse_link(payload).map_err(|detail| NetError::Protocol { op: op(), detail })
            })
            .collect()
    }

    /// Creates a bridge named `name` with the alias `alias` and returns its index.
    ///
    /// The kernel ignores `IFLA_IFALIAS` in a create request, so the alias is set by a second
    /// request; if that fails, the bridge is deleted again.
    pub fn create_bridge(&mut self, name: &str, alias: &str) -> Result<u32> {
        validate_ifname(name)?;
        validate_alias(alias)?;
        let op = || format!("creating bridge {name}");
        self.request(msg::new_bridge(name), &op)?;
        let index = self.created_index(name, &op)?;
        if let Err(e) = self.set_alias(index, alias) {
            let _ = self.delete_link(index);
            return Err(e);
        }
        Ok(index)
    }

    /// Sets the alias (`IFLA_IFALIAS`) of link `index`; an empty alias clears it.
    pub fn set_alias(&mut self, index: u32, alias: &str) -> Result<()> {
        validate_alias(alias)?;
        let mut m = msg::set_link(index, 0, 0);
        m.attr_str(msg::IFLA_IFALIAS, alias);
        self.request(m, &|| format!("setting alias {alias:?} on link {index}"))?;
        Ok(())
    }

    /// Creates a veth pair: `host_name` in this socket's namespace and `peer_name` created
    /// directly in the namespace `peer_netns` (so a peer named `eth0` never clashes with a
    /// host interface). Returns the index of the host end.
    pub fn create_veth(
        &mut self,
        host_name: &str,
        peer_name: &str,
        peer_netns: BorrowedFd<'_>,
    ) -> Result<u32> {
        let op = || format!("creating veth {host_name} (peer {peer_name})");
        self.new_veth(
            host_name,
            peer_name,
            peer_netns,
            msg::VethExtra::default(),
            &op,
        )?;
        self.created_index(host_name, &op)
    }

    /// Creates a veth pair in one request: `host_name` in this socket's namespace, up and
    /// enslaved to the bridge `bridge_index`, and `peer_name` in `peer_netns`, down (veth
    /// cannot open an end before the pair is linked). The kernel applies all of it or nothing:
    /// on any error no link is left.
    pub fn create_veth_on_bridge(
        &mut self,
        host_name: &str,
        bridge_index: u32,
        peer_name: &str,
        peer_netns: BorrowedFd<'_>,
    ) -> Result<()> {
        let op =
            || format!("creating veth {host_name} (peer {peer_name}) on bridge {bridge_index}");
        let extra = msg::VethExtra {
            up: true,
            master: Some(bridge_index),
            index: 0,
        };
        self.new_veth(host_name, peer_name, peer_netns, extra, &op)
    }

    /// The veth creation request both of the above send.
    fn new_veth(
        &mut self,
        host_name: &str,
        peer_name: &str,
        peer_netns: BorrowedFd<'_>,
        extra: msg::VethExtra,
        op: &dyn Fn() -> String,
    ) -> Result<()> {
        validate_ifname(host_name)?;
        validate_ifname(peer_name)?;
        let fd = u32::try_from(peer_netns.as_raw_fd()).map_err(|_| NetError::InvalidArgument {
            what: "network namespace fd",
            value: peer_netns.as_raw_fd().to_string(),
            reason: "is negative".into(),
        })?;
        self.request(msg::new_veth(host_name, peer_name, fd, extra), op)?;
        Ok(())
    }

    /// Enslaves link `index` to `master_index` (a bridge); `master_index` 0 releases it.
    ///
    /// Not atomic in the kernel: a link that already has a master is released from it before
    /// the new master is looked up, so after a failure (e.g. `EINVAL` for a missing master)
    /// the link may have no master at all.
    pub fn set_master(&mut self, index: u32, master_index: u32) -> Result<()> {
        let mut m = msg::set_link(index, 0, 0);
        m.attr_u32(msg::IFLA_MASTER, master_index);
        self.request(m, &|| {
            format!("attaching link {index} to master {master_index}")
        })?;
        Ok(())
    }

    /// Enslaves the link `name` to `master_index` and sets it up, in one request naming it
    /// (no index lookup first). For a veth end made ahead of time.
    pub fn attach_link(&mut self, name: &str, master_index: u32) -> Result<()> {
        validate_ifname(name)?;
        let mut m = msg::set_link(0, msg::IFF_UP, msg::IFF_UP);
        m.attr_str(msg::IFLA_IFNAME, name)
            .attr_u32(msg::IFLA_MASTER, master_index);
        self.request(m, &|| {
            format!("attaching link {name} to master {master_index}")
        })?;
        Ok(())
    }

    /// Sets link `index` administratively up.
    pub fn set_up(&mut self, index: u32) -> Result<()> {
        let m = msg::set_link(index, msg::IFF_UP, msg::IFF_UP);
        self.request(m, &|| format!("setting link {index} up"))?;
        Ok(())
    }

    /// Sets the MTU of link `index`.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut m = msg::set_link(index, 0, 0);
        m.attr_u32(msg::IFLA_MTU, mtu);
        self.request(m, &|| format!("setting MTU {mtu} on link {index}"))?;
        Ok(())
    }

    /// Deletes link `index` (for a veth, both ends).
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        self.request(msg::del_link(index, None), &|| {
            format!("deleting link {index}")
        })?;
        Ok(())
    }

    /// Deletes the link named `name` if it exists; returns whether it did.
    pub fn delete_link_by_name(&mut self, name: &str) -> Result<bool> {
        validate_ifname(name)?;
        match self.request(msg::del_link(0, Some(name)), &|| {
            format!("deleting link {name}")
        }) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds the IPv4 address `addr/prefix_len` to link `index` (any link, bridges included).
    /// No broadcast address is set.
    pub fn add_address(&mut self, index: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<()> {
        if prefix_len > 32 {
            return Err(NetError::InvalidArgument {
                what: "IPv4 prefix length",
                value: prefix_len.to_string(),
                reason: "must be at most 32".into(),
            });
        }
        self.request(msg::new_addr_v4(index, addr, prefix_len), &|| {
            format!("adding address {addr}/{prefix_len} to link {index}")
        })?;
        Ok(())
    }

    /// Adds an IPv4 default route via `gateway` to the main table; fails with `EEXIST` if
    /// there already is one.
    pub fn add_default_route(&mut self, gateway: Ipv4Addr) -> Result<()> {
        self.request(msg::new_default_route_v4(gateway), &|| {
            format!("adding default route via {gateway}")
        })?;
        Ok(())
    }

    /// The index of a link this socket has just created.
    fn created_index(&mut self, name: &str, op: &dyn Fn() -> String) -> Result<u32> {
        match self.link(name)? {
            Some(link) => Ok(link.index),
            None => Err(NetError::Protocol {
                op: op(),
                detail: format!("link {name} not found right after it was created"),
            }),
        }
    }

    fn first_link(replies: Replies, op: &dyn Fn() -> String) -> Result<Option<Link>> {
        match replies.iter().find(|(ty, _)| *ty == msg::RTM_NEWLINK) {
            Some((_, payload)) => msg::parse_link(payload)
                .map(Some)
                .map_err(|detail| NetError::Protocol { op: op(), detail }),
            None => Err(NetError::Protocol {
                op: op(),
                detail: "acknowledged without a link message".into(),
            }),
        }
    }

    /// Sends a request with `NLM_F_ACK` and reads replies up to its ack; returns the data
    /// messages (type, payload) that came before the ack.
    fn request(&mut self, mut m: MsgBuilder, op: &dyn Fn() -> String) -> Result<Replies> {
        self.transact(&mut m, false, op).map(|(replies, _)| replies)
    }

    /// Sends a dump request and reads replies up to `NLMSG_DONE`, retrying when the dump was
    /// interrupted by a concurrent change.
    fn dump(&mut self, mut m: MsgBuilder, op: &dyn Fn() -> String) -> Result<Replies> {
        for _ in 0..DUMP_ATTEMPTS {
            let (replies, interrupted) = self.transact(&mut m, true, op)?;
            if !interrupted {
                return Ok(replies);
            }
        }
        Err(NetError::Io {
            op: op(),
            source: io::Error::new(
                io::ErrorKind::Interrupted,
                format!("dump interrupted by concurrent changes {DUMP_ATTEMPTS} times"),
            ),
        })
    }

    fn transact(
        &mut self,
        m: &mut MsgBuilder,
        is_dump: bool,
        op: &dyn Fn() -> String,
    ) -> Result<(Replies, bool)> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let io_err = |what: &str, e: io::Error| NetError::Io {
            op: format!("{}: {what}", op()),
            source: e,
        };
        let request = m.finish(seq);
        let sent = socket::sendto(
            self.fd.as_raw_fd(),
            request,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(|e| io_err("sending netlink request", e.into()))?;
        if sent != request.len() {
            return Err(io_err(
                "sending netlink request",
                io::Error::new(io::ErrorKind::WriteZero, "short send"),
            ));
        }

        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            let len = self
                .recv()
                .map_err(|e| io_err("receiving netlink reply", e))?;
            let msgs = msg::parse_messages(&self.buf[..len])
                .map_err(|detail| NetError::Protocol { op: op(), detail })?;
            for m in msgs {
                // Replies to an earlier request (e.g. an ack after a dump) are skipped.
                if m.seq != seq || m.pid != self.port {
                    continue;
                }
                match m.ty {
                    msg::NLMSG_NOOP => {}
                    msg::NLMSG_ERROR => {
                        let ack = msg::parse_error(m.flags, m.payload)
                            .map_err(|detail| NetError::Protocol { op: op(), detail })?;
                        if ack.errno != 0 {
                            return Err(kernel_error(op(), ack));
                        }
                        if !is_dump {
                            return Ok((replies, interrupted));
                        }
                    }
                    msg::NLMSG_DONE if is_dump => {
                        let ack = msg::parse_done(m.flags, m.payload);
                        if ack.errno != 0 {
                            return Err(kernel_error(op(), ack));
                        }
                        interrupted |= m.flags & msg::NLM_F_DUMP_INTR != 0;
                        return Ok((replies, interrupted));
                    }
                    msg::NLMSG_OVERRUN => {
                        return Err(NetError::Protocol {
                            op: op(),
                            detail: "NLMSG_OVERRUN: the kernel dropped part of the reply".into(),
                        })
                    }
                    ty => {
                        interrupted |= m.flags & msg::NLM_F_DUMP_INTR != 0;
                        replies.push((ty, m.payload.to_vec()));
                    }
                }
            }
        }
    }

    /// Receives one datagram from the kernel into `self.buf`, growing it as needed.
    fn recv(&mut self) -> io::Result<usize> {
        loop {
            // Peek with MSG_TRUNC to learn the datagram's full size.
            let size = retry_eintr(|| {
                socket::recv(
                    self.fd.as_raw_fd(),
                    &mut self.buf,
                    MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
                )
            })?;
            if size > self.buf.len() {
                self.buf.resize(size, 0);
            }
            let (len, from) = retry_eintr(|| {
                socket::recvfrom::<NetlinkAddr>(self.fd.as_raw_fd(), &mut self.buf)
            })?;
            // Only the kernel (port 0) may answer; drop anything another process sent us.
            if from.is_some_and(|a| a.pid() == 0) {
                return Ok(len);
            }
        }
    }
}

/// The index a domain's `eth0` gets in its fresh network namespace, where only `lo` (1) exists
/// before it: requests prepared ahead of time ([`domain_link_requests`]) name it by index.
pub const DOMAIN_LINK_INDEX: u32 = 2;

/// A prepared `RTM_NEWLINK` (sequence number 1) that, sent from inside a fresh network
/// namespace, creates a veth pair: `eth0` there with index [`DOMAIN_LINK_INDEX`], down, and
/// `peer_name` in the namespace of `peer_netns_fd` (an fd the sender holds), down and without
/// a master. For processes that may only make syscalls (a domain init before its claim).
pub fn spare_link_request(peer_name: &str, peer_netns_fd: u32) -> Result<Vec<u8>> {
    validate_ifname(peer_name)?;
    let extra = msg::VethExtra {
        up: false,
        master: None,
        index: DOMAIN_LINK_INDEX,
    };
    Ok(msg::new_veth("eth0", peer_name, peer_netns_fd, extra)
        .finish(1)
        .to_vec())
}

/// Prepared requests (sequence numbers 1 to 3, concatenated) that configure a domain's `eth0`
/// (index [`DOMAIN_LINK_INDEX`]) from inside its network namespace: up, `addr/prefix_len`, and
/// a default route via `gateway` (accepted while the link has no carrier yet).
pub fn domain_link_requests(addr: Ipv4Addr, prefix_len: u8, gateway: Ipv4Addr) -> Result<Vec<u8>> {
    if prefix_len > 32 {
        return Err(NetError::InvalidArgument {
            what: "IPv4 prefix length",
            value: prefix_len.to_string(),
            reason: "must be at most 32".into(),
        });
    }
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(msg::set_link(DOMAIN_LINK_INDEX, msg::IFF_UP, msg::IFF_UP).finish(1));
    out.extend_from_slice(msg::new_addr_v4(DOMAIN_LINK_INDEX, addr, prefix_len).finish(2));
    out.extend_from_slice(msg::new_default_route_v4(gateway).finish(3));
    Ok(out)
}

/// How many requests a buffer of prepared requests holds (by their headers).
pub fn count_requests(buf: &[u8]) -> usize {
    scan(buf).count()
}

/// Scans the acknowledgements the kernel sent for prepared requests: the number of
/// `NLMSG_ERROR` messages in `buf`, and the first non-zero error among them (a positive
/// errno). Allocates nothing, for processes that may only make syscalls.
pub fn scan_acks(buf: &[u8]) -> (usize, Option<i32>) {
    let mut acks = 0;
    let mut first = None;
    for (ty, payload) in scan(buf) {
        if ty == msg::NLMSG_ERROR && payload.len() >= 4 {
            acks += 1;
            let e = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
            if e != 0 && first.is_none() {
                first = Some(-e);
            }
        }
    }
    (acks, first)
}

/// The (type, payload) of each whole message in `buf`, without allocating.
fn scan(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < msg::NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < msg::NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        let payload = &buf[msg::NLMSG_HDRLEN..len];
        buf = &buf[msg::align(len).min(buf.len())..];
        Some((ty, payload))
    })
}

fn kernel_error(op: String, ack: msg::Ack) -> NetError {
    NetError::Netlink {
        op,
        source: io::Error::from_raw_os_error(ack.errno),
        kernel_message: ack.message,
    }
}

fn retry_eintr<T>(mut f: impl FnMut() -> nix::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no reply from the kernel within {} s",
                        REPLY_TIMEOUT.as_secs()
                    ),
                ))
            }
            r => return r.map_err(io::Error::from),
        }
    }
}

fn set_int_opt(fd: &OwnedFd, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is an open socket for the duration of the call; the option value points to
    // a live c_int and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_NETLINK,
            opt,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn validate_alias(alias: &str) -> Result<()> {
    let invalid = |reason: String| {
        Err(NetError::InvalidArgument {
            what: "interface alias",
            value: format!("{alias:?}"),
            reason,
        })
    };
    if alias.len() > MAX_ALIAS_LEN {
        return invalid(format!(
            "is {} bytes long, at most {MAX_ALIAS_LEN} are allowed",
            alias.len()
        ));
    }
    if alias.contains('\0') {
        return invalid("must not contain NUL".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn prepared_link_requests_are_three_acked_messages_on_the_domain_link() {
        let b = domain_link_requests("10.1.0.2".parse().unwrap(), 16, "10.1.0.1".parse().unwrap())
            .unwrap();
        assert_eq!(count_requests(&b), 3);
        let msgs = msg::parse_messages(&b).unwrap();
        let kinds: Vec<(u16, u32)> = msgs.iter().map(|m| (m.ty, m.seq)).collect();
        assert_eq!(
            kinds,
            [
                (msg::RTM_SETLINK, 1),
                (msg::RTM_NEWADDR, 2),
                (msg::RTM_NEWROUTE, 3)
            ]
        );
        assert!(msgs.iter().all(|m| m.flags & msg::NLM_F_ACK != 0));
        // ifinfomsg and ifaddrmsg name eth0 by its index.
        assert_eq!(&msgs[0].payload[4..8], &DOMAIN_LINK_INDEX.to_ne_bytes());
        assert_eq!(&msgs[1].payload[4..8], &DOMAIN_LINK_INDEX.to_ne_bytes());
        assert!(domain_link_requests(Ipv4Addr::LOCALHOST, 33, Ipv4Addr::LOCALHOST).is_err());
    }

    #[test]
    fn spare_link_request_makes_eth0_with_the_domain_index_and_the_peer_elsewhere() {
        let b = spare_link_request("dmsvx12", 7).unwrap();
        let msgs = msg::parse_messages(&b).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].ty, msg::RTM_NEWLINK);
        assert_eq!(&msgs[0].payload[4..8], &DOMAIN_LINK_INDEX.to_ne_bytes());
        // Down: no flags set or changed.
        assert_eq!(&msgs[0].payload[8..16], &[0u8; 8]);
        let top = msg::parse_attrs(&msgs[0].payload[msg::IFINFOMSG_LEN..]).unwrap();
        assert_eq!(top[0], (msg::IFLA_IFNAME, &b"eth0\0"[..]));
        assert!(spare_link_request("a-name-that-is-too-long", 7).is_err());
    }

    /// An NLMSG_ERROR ack for `seq` with `errno` (0: success), as the kernel sends it.
    fn ack(seq: u32, errno: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&msg::NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(-errno).to_ne_bytes());
        m.extend_from_slice(&[0u8; 16]);
        m
    }

    #[test]
    fn scan_acks_counts_acks_and_reports_the_first_error() {
        let ok = [ack(1, 0), ack(2, 0)].concat();
        assert_eq!(scan_acks(&ok), (2, None));
        let failed = [ack(1, 0), ack(2, libc::EEXIST), ack(3, libc::ENETUNREACH)].concat();
        assert_eq!(scan_acks(&failed), (3, Some(libc::EEXIST)));
        // A truncated message ends the scan; nothing is read past the buffer.
        assert_eq!(scan_acks(&ok[..40]), (1, None));
        assert_eq!(scan_acks(&[]), (0, None));
    }

    #[test]
    fn error_display_names_op_and_object() {
        let e = NetError::Netlink {
            op: "creating veth dmsh7 (peer eth0)".into(),
            source: io::Error::from_raw_os_error(libc::EEXIST),
            kernel_message: None,
        };
        assert_eq!(
            e.to_string(),
            "creating veth dmsh7 (peer eth0): File exists (os error 17)"
        );
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        let e = NetError::Netlink {
            op: "adding default route via 198.18.0.1".into(),
            source: io::Error::from_raw_os_error(libc::ENETUNREACH),
            kernel_message: Some("Nexthop has invalid gateway".into()),
        };
        assert_eq!(
            e.to_string(),
            "adding default route via 198.18.0.1: Network is unreachable (os error 101) \
             (kernel: Nexthop has invalid gateway)"
        );
    }

    #[test]
    fn alias_validation() {
        assert!(validate_alias("dms-bridge v1").is_ok());
        assert!(validate_alias("").is_ok());
        let e = validate_alias(&"x".repeat(256)).unwrap_err().to_string();
        assert!(e.starts_with("interface alias \"xxx"), "{e}");
        assert!(
            e.ends_with("is 256 bytes long, at most 255 are allowed"),
            "{e}"
        );
        assert!(validate_alias("a\0b").is_err());
    }

    #[test]
    fn bad_arguments_fail_before_any_syscall() {
        // These checks run before the socket is used, so an unprivileged socket suffices.
        let Ok(mut rtnl) = Rtnl::open() else {
            eprintln!("SKIPPED: cannot open a NETLINK_ROUTE socket here");
            return;
        };
        let e = rtnl.create_bridge("a/b", "x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "interface name \"a/b\": character '/' is not allowed"
        );
        let e = rtnl
            .add_address(1, Ipv4Addr::new(198, 18, 0, 1), 33)
            .unwrap_err();
        assert_eq!(e.to_string(), "IPv4 prefix length 33: must be at most 32");
        assert!(rtnl.link("waytoolonginterfacename").is_err());
    }

    #[test]
    fn loopback_lookup_and_dump_without_privileges() {
        let Ok(mut rtnl) = Rtnl::open() else {
            eprintln!("SKIPPED: cannot open a NETLINK_ROUTE socket here");
            return;
        };
        let lo = rtnl.link("lo").unwrap().unwrap();
        assert_eq!(lo.index, 1);
        assert_eq!(lo.kind, None);
        assert!(rtnl.links().unwrap().iter().any(|l| l.name == "lo"));
        assert_eq!(rtnl.link("dmsntabsent").unwrap(), None);
        // Several requests on one socket keep sequence numbers in step.
        for _ in 0..3 {
            assert_eq!(rtnl.link("lo").unwrap().unwrap().index, 1);
            assert!(!rtnl.links().unwrap().is_empty());
        }
    }
}
