//! Building and parsing the few rtnetlink messages this crate uses.
//!
//! Pure byte manipulation, no sockets: everything here is unit-tested. Layouts follow
//! `linux/netlink.h`, `linux/rtnetlink.h` and `linux/if_link.h`; integers are in host byte
//! order, attributes are 4-byte aligned.

use std::net::Ipv4Addr;

// Message types (linux/netlink.h, linux/rtnetlink.h).
pub(crate) const NLMSG_NOOP: u16 = 1;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLMSG_OVERRUN: u16 = 4;
pub(crate) const RTM_NEWLINK: u16 = 16;
pub(crate) const RTM_DELLINK: u16 = 17;
pub(crate) const RTM_GETLINK: u16 = 18;
pub(crate) const RTM_SETLINK: u16 = 19;
pub(crate) const RTM_NEWADDR: u16 = 20;
pub(crate) const RTM_NEWROUTE: u16 = 24;

// Header flags.
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP_INTR: u16 = 0x10;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
// Flags of an NLMSG_ERROR message.
pub(crate) const NLM_F_CAPPED: u16 = 0x100;
pub(crate) const NLM_F_ACK_TLVS: u16 = 0x200;
pub(crate) const NLMSGERR_ATTR_MSG: u16 = 1;

// Link attributes.
pub(crate) const IFLA_IFNAME: u16 = 3;
pub(crate) const IFLA_MTU: u16 = 4;
pub(crate) const IFLA_MASTER: u16 = 10;
pub(crate) const IFLA_LINKINFO: u16 = 18;
pub(crate) const IFLA_IFALIAS: u16 = 20;
pub(crate) const IFLA_NET_NS_FD: u16 = 28;
pub(crate) const IFLA_EXT_MASK: u16 = 29;
pub(crate) const IFLA_INFO_KIND: u16 = 1;
pub(crate) const IFLA_INFO_DATA: u16 = 2;
pub(crate) const VETH_INFO_PEER: u16 = 1;
pub(crate) const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
pub(crate) const IFF_UP: u32 = 0x1;

// Address and route attributes and values.
pub(crate) const IFA_ADDRESS: u16 = 1;
pub(crate) const IFA_LOCAL: u16 = 2;
pub(crate) const RTA_GATEWAY: u16 = 5;
pub(crate) const RTA_TABLE: u16 = 15;
pub(crate) const RT_TABLE_MAIN: u8 = 254;
pub(crate) const RTPROT_BOOT: u8 = 3;
pub(crate) const RT_SCOPE_UNIVERSE: u8 = 0;
pub(crate) const RTN_UNICAST: u8 = 1;
pub(crate) const AF_UNSPEC: u8 = 0;
pub(crate) const AF_INET: u8 = 2;

/// `sizeof(struct nlmsghdr)`.
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct ifinfomsg)`.
pub(crate) const IFINFOMSG_LEN: usize = 16;
/// `sizeof(struct ifaddrmsg)`.
#[cfg(test)]
pub(crate) const IFADDRMSG_LEN: usize = 8;
/// `sizeof(struct rtmsg)`.
#[cfg(test)]
pub(crate) const RTMSG_LEN: usize = 12;

/// Rounds up to the netlink alignment (4 bytes).
pub(crate) const fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Builds one netlink request: header, fixed family header, attributes (possibly nested).
#[derive(Debug)]
pub(crate) struct MsgBuilder {
    buf: Vec<u8>,
}

/// An open nested attribute; close it with [`MsgBuilder::end_nest`].
#[derive(Debug)]
#[must_use]
pub(crate) struct Nest(usize);

impl MsgBuilder {
    /// Starts a request of type `ty`; `NLM_F_REQUEST` is always added to `flags`.
    pub(crate) fn new(ty: u16, flags: u16) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by finish
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq, set by finish
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills it in
        MsgBuilder { buf }
    }

    /// Appends a `struct ifinfomsg`.
    pub(crate) fn ifinfomsg(&mut self, index: u32, flags: u32, change: u32) -> &mut Self {
        self.buf.push(AF_UNSPEC); // ifi_family
        self.buf.push(0); // padding
        self.buf.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
        self.buf.extend_from_slice(&index.to_ne_bytes()); // ifi_index (int)
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&change.to_ne_bytes());
        self
    }

    /// Appends a `struct ifaddrmsg` for an IPv4 address.
    pub(crate) fn ifaddrmsg_v4(&mut self, prefix_len: u8, index: u32) -> &mut Self {
        self.buf
            .extend_from_slice(&[AF_INET, prefix_len, 0, RT_SCOPE_UNIVERSE]);
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self
    }

    /// Appends a `struct rtmsg` for an IPv4 unicast route in the main table.
    pub(crate) fn rtmsg_v4_unicast(&mut self, dst_len: u8) -> &mut Self {
        self.buf.extend_from_slice(&[
            AF_INET,
            dst_len,
            0, // rtm_src_len
            0, // rtm_tos
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            RT_SCOPE_UNIVERSE,
            RTN_UNICAST,
        ]);
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
        self
    }

    /// Appends an attribute with a raw payload.
    pub(crate) fn attr(&mut self, ty: u16, payload: &[u8]) -> &mut Self {
        let len = u16::try_from(4 + payload.len()).expect("netlink attribute too long");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    /// Appends a `u32` attribute.
    pub(crate) fn attr_u32(&mut self, ty: u16, value: u32) -> &mut Self {
        self.attr(ty, &value.to_ne_bytes())
    }

    /// Appends a NUL-terminated string attribute.
    pub(crate) fn attr_str(&mut self, ty: u16, value: &str) -> &mut Self {
        let mut payload = Vec::with_capacity(value.len() + 1);
        payload.extend_from_slice(value.as_bytes());
        payload.push(0);
        self.attr(ty, &payload)
    }

    /// Opens a nested attribute: everything appended until [`Self::end_nest`] is its payload.
    pub(crate) fn begin_nest(&mut self, ty: u16) -> Nest {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        Nest(start)
    }

    /// Closes a nested attribute, writing its length.
    pub(crate) fn end_nest(&mut self, nest: Nest) -> &mut Self {
        let len = u16::try_from(self.buf.len() - nest.0).expect("netlink attribute too long");
        self.buf[nest.0..nest.0 + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// Finishes the message with sequence number `seq`.
    pub(crate) fn finish(&mut self, seq: u32) -> &[u8] {
        let len = u32::try_from(self.buf.len()).expect("netlink message too long");
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }

    fn pad(&mut self) {
        self.buf.resize(align(self.buf.len()), 0);
    }
}

/// One received netlink message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NlMsg<'a> {
    pub(crate) ty: u16,
    pub(crate) flags: u16,
    pub(crate) seq: u32,
    pub(crate) pid: u32,
    pub(crate) payload: &'a [u8],
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([buf[at], buf[at + 1]])
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Reads a `u32` attribute payload.
pub(crate) fn read_u32(payload: &[u8]) -> Result<u32, String> {
    if payload.len() < 4 {
        return Err(format!(
            "{}-byte payload for a u32 attribute",
            payload.len()
        ));
    }
    Ok(u32_at(payload, 0))
}

/// Reads a string attribute payload (NUL-terminated or not).
pub(crate) fn read_str(payload: &[u8]) -> String {
    let end = payload
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(payload.len());
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

/// Splits a datagram into netlink messages.
pub(crate) fn parse_messages(mut buf: &[u8]) -> Result<Vec<NlMsg<'_>>, String> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32_at(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(format!(
                "message length {len} with {} bytes left in the datagram",
                buf.len()
            ));
        }
        out.push(NlMsg {
            ty: u16_at(buf, 4),
            flags: u16_at(buf, 6),
            seq: u32_at(buf, 8),
            pid: u32_at(buf, 12),
            payload: &buf[NLMSG_HDRLEN..len],
        });
        buf = &buf[align(len).min(buf.len())..];
    }
    Ok(out)
}

/// Splits an attribute area into `(type, payload)` pairs; the nested and byte-order flag bits
/// are cleared from the type.
pub(crate) fn parse_attrs(mut buf: &[u8]) -> Result<Vec<(u16, &[u8])>, String> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16_at(buf, 0) as usize;
        if len < 4 || len > buf.len() {
            return Err(format!(
                "attribute length {len} with {} bytes left",
                buf.len()
            ));
        }
        out.push((u16_at(buf, 2) & 0x3fff, &buf[4..len]));
        buf = &buf[align(len).min(buf.len())..];
    }
    Ok(out)
}

/// The contents of an `NLMSG_ERROR` message (an ack when `errno` is 0) or of the payload of
/// an `NLMSG_DONE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ack {
    /// The positive errno, 0 for success.
    pub(crate) errno: i32,
    /// The extended-ack message, if the kernel sent one.
    pub(crate) message: Option<String>,
}

/// Parses the payload of an `NLMSG_ERROR` message whose header flags are `flags`.
pub(crate) fn parse_error(flags: u16, payload: &[u8]) -> Result<Ack, String> {
    if payload.len() < 4 + NLMSG_HDRLEN {
        return Err(format!("{}-byte error message", payload.len()));
    }
    let errno = (u32_at(payload, 0) as i32).saturating_neg();
    let mut message = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        // The echoed request is either only its header (capped) or the whole message.
        let echoed = if flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            align(u32_at(payload, 4) as usize)
        };
        if let Some(tlvs) = payload.get(4 + echoed..) {
            message = parse_attrs(tlvs)?
                .into_iter()
                .find(|(ty, _)| *ty == NLMSGERR_ATTR_MSG)
                .map(|(_, p)| read_str(p))
                .filter(|m| !m.is_empty());
        }
    }
    Ok(Ack { errno, message })
}

/// Parses the payload of an `NLMSG_DONE` message: the dump's error, if any.
pub(crate) fn parse_done(flags: u16, payload: &[u8]) -> Ack {
    let errno = if payload.len() >= 4 {
        (u32_at(payload, 0) as i32).saturating_neg()
    } else {
        0
    };
    let message = if flags & NLM_F_ACK_TLVS != 0 {
        payload.get(4..).and_then(|tlvs| {
            parse_attrs(tlvs)
                .ok()?
                .into_iter()
                .find(|(ty, _)| *ty == NLMSGERR_ATTR_MSG)
                .map(|(_, p)| read_str(p))
        })
    } else {
        None
    };
    Ack { errno, message }
}

/// Parses the payload of an `RTM_NEWLINK` message.
pub(crate) fn parse_link(payload: &[u8]) -> Result<crate::Link, String> {
    if payload.len() < IFINFOMSG_LEN {
        return Err(format!("{}-byte link message", payload.len()));
    }
    let index = u32_at(payload, 4);
    let flags = u32_at(payload, 8);
    let mut link = crate::Link {
        index,
        name: String::new(),
        kind: None,
        alias: None,
        master: None,
        up: flags & IFF_UP != 0,
        mtu: 0,
    };
    for (ty, p) in parse_attrs(&payload[IFINFOMSG_LEN..])? {
        match ty {
            IFLA_IFNAME => link.name = read_str(p),
            IFLA_MTU => link.mtu = read_u32(p)?,
            IFLA_MASTER => link.master = Some(read_u32(p)?).filter(|&m| m != 0),
            IFLA_IFALIAS => link.alias = Some(read_str(p)).filter(|a| !a.is_empty()),
            IFLA_LINKINFO => {
                link.kind = parse_attrs(p)?
                    .into_iter()
                    .find(|(ty, _)| *ty == IFLA_INFO_KIND)
                    .map(|(_, k)| read_str(k));
            }
            _ => {}
        }
    }
    if link.name.is_empty() {
        return Err(format!("link message for index {index} without a name"));
    }
    Ok(link)
}

/// `RTM_GETLINK` by name (`name = Some`) or a dump of all links.
pub(crate) fn get_link(name: Option<&str>) -> MsgBuilder {
    let flags = if name.is_some() {
        NLM_F_ACK
    } else {
        NLM_F_DUMP
    };
    let mut m = MsgBuilder::new(RTM_GETLINK, flags);
    m.ifinfomsg(0, 0, 0);
    if let Some(name) = name {
        m.attr_str(IFLA_IFNAME, name);
    }
    m.attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
    m
}

/// `RTM_NEWLINK` creating a bridge.
pub(crate) fn new_bridge(name: &str) -> MsgBuilder {
    let mut m = MsgBuilder::new(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
    m.ifinfomsg(0, 0, 0).attr_str(IFLA_IFNAME, name);
    let info = m.begin_nest(IFLA_LINKINFO);
    m.attr_str(IFLA_INFO_KIND, "bridge");
    m.end_nest(info);
    m
}

/// `RTM_NEWLINK` creating a veth pair whose peer is created in the netns of `peer_netns_fd`.
pub(crate) fn new_veth(host: &str, peer: &str, peer_netns_fd: u32, extra: VethExtra) -> MsgBuilder {
    let flags = if extra.up { IFF_UP } else { 0 };
    let mut m = MsgBuilder::new(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
    m.ifinfomsg(extra.index, flags, flags)
        .attr_str(IFLA_IFNAME, host);
    if let Some(master) = extra.master {
        m.attr_u32(IFLA_MASTER, master);
    }
    let info = m.begin_nest(IFLA_LINKINFO);
    m.attr_str(IFLA_INFO_KIND, "veth");
    let data = m.begin_nest(IFLA_INFO_DATA);
    let peer_info = m.begin_nest(VETH_INFO_PEER);
    // The peer cannot be created up: veth refuses to open an end before the pair is linked.
    m.ifinfomsg(0, 0, 0)
        .attr_str(IFLA_IFNAME, peer)
        .attr_u32(IFLA_NET_NS_FD, peer_netns_fd);
    m.end_nest(peer_info).end_nest(data).end_nest(info);
    m
}

/// What a veth creation request sets besides the names: the local end up, its master, and
/// its index (0: the kernel picks one).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct VethExtra {
    pub(crate) up: bool,
    pub(crate) master: Option<u32>,
    pub(crate) index: u32,
}

/// `RTM_SETLINK` on `index`; the caller adds attributes.
pub(crate) fn set_link(index: u32, flags: u32, change: u32) -> MsgBuilder {
    let mut m = MsgBuilder::new(RTM_SETLINK, NLM_F_ACK);
    m.ifinfomsg(index, flags, change);
    m
}

/// `RTM_DELLINK` by index (`name = None`) or by name.
pub(crate) fn del_link(index: u32, name: Option<&str>) -> MsgBuilder {
    let mut m = MsgBuilder::new(RTM_DELLINK, NLM_F_ACK);
    m.ifinfomsg(index, 0, 0);
    if let Some(name) = name {
        m.attr_str(IFLA_IFNAME, name);
    }
    m
}

/// `RTM_NEWADDR` adding an IPv4 address.
pub(crate) fn new_addr_v4(index: u32, addr: Ipv4Addr, prefix_len: u8) -> MsgBuilder {
    let mut m = MsgBuilder::new(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
    m.ifaddrmsg_v4(prefix_len, index)
        .attr(IFA_LOCAL, &addr.octets())
        .attr(IFA_ADDRESS, &addr.octets());
    m
}

/// `RTM_NEWROUTE` adding an IPv4 default route via `gateway` in the main table.
pub(crate) fn new_default_route_v4(gateway: Ipv4Addr) -> MsgBuilder {
    let mut m = MsgBuilder::new(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
    m.rtmsg_v4_unicast(0)
        .attr(RTA_GATEWAY, &gateway.octets())
        .attr_u32(RTA_TABLE, u32::from(RT_TABLE_MAIN));
    m
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn constants_match_libc() {
        assert_eq!(i32::from(NLMSG_ERROR), libc::NLMSG_ERROR);
        assert_eq!(i32::from(NLMSG_DONE), libc::NLMSG_DONE);
        assert_eq!(i32::from(NLMSG_NOOP), libc::NLMSG_NOOP);
        assert_eq!(i32::from(NLMSG_OVERRUN), libc::NLMSG_OVERRUN);
        assert_eq!(i32::from(NLM_F_ACK), libc::NLM_F_ACK);
        assert_eq!(i32::from(NLM_F_DUMP), libc::NLM_F_DUMP);
        assert_eq!(i32::from(NLM_F_DUMP_INTR), libc::NLM_F_DUMP_INTR);
        assert_eq!(i32::from(NLM_F_EXCL), libc::NLM_F_EXCL);
        assert_eq!(i32::from(NLM_F_CREATE), libc::NLM_F_CREATE);
        assert_eq!(i32::from(NLM_F_CAPPED), libc::NLM_F_CAPPED);
        assert_eq!(i32::from(NLM_F_ACK_TLVS), libc::NLM_F_ACK_TLVS);
        assert_eq!(RTM_NEWLINK, libc::RTM_NEWLINK);
        assert_eq!(RTM_DELLINK, libc::RTM_DELLINK);
        assert_eq!(RTM_GETLINK, libc::RTM_GETLINK);
        assert_eq!(RTM_SETLINK, libc::RTM_SETLINK);
        assert_eq!(RTM_NEWADDR, libc::RTM_NEWADDR);
        assert_eq!(RTM_NEWROUTE, libc::RTM_NEWROUTE);
        assert_eq!(IFLA_IFNAME, libc::IFLA_IFNAME);
        assert_eq!(IFLA_MTU, libc::IFLA_MTU);
        assert_eq!(IFLA_MASTER, libc::IFLA_MASTER);
        assert_eq!(IFLA_LINKINFO, libc::IFLA_LINKINFO);
        assert_eq!(IFLA_IFALIAS, libc::IFLA_IFALIAS);
        assert_eq!(IFLA_NET_NS_FD, libc::IFLA_NET_NS_FD);
        assert_eq!(IFLA_EXT_MASK, libc::IFLA_EXT_MASK);
        assert_eq!(IFLA_INFO_KIND, libc::IFLA_INFO_KIND);
        assert_eq!(IFLA_INFO_DATA, libc::IFLA_INFO_DATA);
        assert_eq!(
            RTEXT_FILTER_SKIP_STATS as i32,
            libc::RTEXT_FILTER_SKIP_STATS
        );
        assert_eq!(IFA_ADDRESS, libc::IFA_ADDRESS);
        assert_eq!(IFA_LOCAL, libc::IFA_LOCAL);
        assert_eq!(RTA_GATEWAY, libc::RTA_GATEWAY);
        assert_eq!(RTA_TABLE, libc::RTA_TABLE);
        assert_eq!(RT_TABLE_MAIN, libc::RT_TABLE_MAIN);
        assert_eq!(RTPROT_BOOT, libc::RTPROT_BOOT);
        assert_eq!(RT_SCOPE_UNIVERSE, libc::RT_SCOPE_UNIVERSE);
        assert_eq!(RTN_UNICAST, libc::RTN_UNICAST);
        assert_eq!(i32::from(AF_INET), libc::AF_INET);
        assert_eq!(IFF_UP as i32, libc::IFF_UP);
        assert_eq!(NLMSG_HDRLEN, std::mem::size_of::<libc::nlmsghdr>());
        assert_eq!(IFINFOMSG_LEN, std::mem::size_of::<libc::ifinfomsg>());
    }

    fn words(b: &[u8]) -> Vec<u32> {
        b.chunks(4)
            .map(|c| {
                let mut w = [0u8; 4];
                w[..c.len()].copy_from_slice(c);
                u32::from_ne_bytes(w)
            })
            .collect()
    }

    #[test]
    fn header_and_padding() {
        let mut m = MsgBuilder::new(RTM_SETLINK, NLM_F_ACK);
        m.ifinfomsg(7, IFF_UP, IFF_UP).attr_str(IFLA_IFALIAS, "abc");
        let bytes = m.finish(42).to_vec();
        // 16 header + 16 ifinfomsg + 4 attr header + "abc\0" = 40.
        assert_eq!(bytes.len(), 40);
        let msgs = parse_messages(&bytes).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].ty, RTM_SETLINK);
        assert_eq!(msgs[0].flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(msgs[0].seq, 42);
        let w = words(&bytes[16..32]);
        assert_eq!(&w[1..], &[7, IFF_UP, IFF_UP]);
        let attrs = parse_attrs(&bytes[32..]).unwrap();
        assert_eq!(attrs, vec![(IFLA_IFALIAS, &b"abc\0"[..])]);

        // A 5-byte payload is padded to 8, but its length says 9.
        let mut m = MsgBuilder::new(RTM_SETLINK, 0);
        m.attr_str(IFLA_IFNAME, "eth0").attr_u32(IFLA_MTU, 9000);
        let bytes = m.finish(1).to_vec();
        assert_eq!(bytes.len(), 16 + 12 + 8);
        assert_eq!(u16_at(&bytes, 16), 9);
        let attrs = parse_attrs(&bytes[16..]).unwrap();
        assert_eq!(read_str(attrs[0].1), "eth0");
        assert_eq!(read_u32(attrs[1].1).unwrap(), 9000);
    }

    #[test]
    fn veth_request_can_bring_the_host_end_up_on_a_master() {
        let extra = VethExtra {
            up: true,
            master: Some(5),
            index: 0,
        };
        let mut m = new_veth("dmsh7", "eth0", 9, extra);
        let bytes = m.finish(3).to_vec();
        let msg = parse_messages(&bytes).unwrap()[0];
        // Host end: IFF_UP in both flags and change; the peer's header stays zero.
        let flags = |at: usize| u32::from_ne_bytes(msg.payload[at..at + 4].try_into().unwrap());
        assert_eq!((flags(8), flags(12)), (IFF_UP, IFF_UP));
        let top = parse_attrs(&msg.payload[IFINFOMSG_LEN..]).unwrap();
        assert_eq!(top[1].0, IFLA_MASTER);
        assert_eq!(read_u32(top[1].1).unwrap(), 5);
        let info = parse_attrs(top[2].1).unwrap();
        let data = parse_attrs(info[1].1).unwrap();
        assert_eq!(&data[0].1[..IFINFOMSG_LEN], &[0u8; IFINFOMSG_LEN]);
    }

    #[test]
    fn veth_request_nests_the_peer() {
        let mut m = new_veth("dmsh7", "eth0", 9, VethExtra::default());
        let bytes = m.finish(3).to_vec();
        let msg = parse_messages(&bytes).unwrap()[0];
        assert_eq!(msg.ty, RTM_NEWLINK);
        assert_eq!(
            msg.flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        let top = parse_attrs(&msg.payload[IFINFOMSG_LEN..]).unwrap();
        assert_eq!(top[0], (IFLA_IFNAME, &b"dmsh7\0"[..]));
        assert_eq!(top[1].0, IFLA_LINKINFO);
        let info = parse_attrs(top[1].1).unwrap();
        assert_eq!(info[0], (IFLA_INFO_KIND, &b"veth\0"[..]));
        assert_eq!(info[1].0, IFLA_INFO_DATA);
        let data = parse_attrs(info[1].1).unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data[0].0, VETH_INFO_PEER);
        let peer = data[0].1;
        assert_eq!(&peer[..IFINFOMSG_LEN], &[0u8; IFINFOMSG_LEN]);
        let peer_attrs = parse_attrs(&peer[IFINFOMSG_LEN..]).unwrap();
        assert_eq!(peer_attrs[0], (IFLA_IFNAME, &b"eth0\0"[..]));
        assert_eq!(peer_attrs[1].0, IFLA_NET_NS_FD);
        assert_eq!(read_u32(peer_attrs[1].1).unwrap(), 9);
        // Nest lengths cover exactly their contents.
        assert_eq!(top[1].1.len() + 4, bytes.len() - 16 - 16 - 12);
    }

    #[test]
    fn address_and_route_requests() {
        let mut m = new_addr_v4(5, Ipv4Addr::new(198, 18, 0, 1), 24);
        let bytes = m.finish(1).to_vec();
        let msg = parse_messages(&bytes).unwrap()[0];
        assert_eq!(&msg.payload[..4], &[AF_INET, 24, 0, 0]);
        assert_eq!(u32_at(msg.payload, 4), 5);
        let attrs = parse_attrs(&msg.payload[IFADDRMSG_LEN..]).unwrap();
        assert_eq!(attrs[0], (IFA_LOCAL, &[198u8, 18, 0, 1][..]));
        assert_eq!(attrs[1], (IFA_ADDRESS, &[198u8, 18, 0, 1][..]));

        let mut m = new_default_route_v4(Ipv4Addr::new(198, 18, 0, 1));
        let bytes = m.finish(1).to_vec();
        let msg = parse_messages(&bytes).unwrap()[0];
        assert_eq!(msg.ty, RTM_NEWROUTE);
        assert_eq!(
            &msg.payload[..8],
            &[AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, 0, RTN_UNICAST]
        );
        let attrs = parse_attrs(&msg.payload[RTMSG_LEN..]).unwrap();
        assert_eq!(attrs[0], (RTA_GATEWAY, &[198u8, 18, 0, 1][..]));
        assert_eq!(read_u32(attrs[1].1).unwrap(), 254);
    }

    /// Builds an NLMSG_ERROR datagram as the kernel does with NETLINK_CAP_ACK and EXT_ACK.
    fn error_datagram(seq: u32, errno: i32, msg: Option<&str>) -> Vec<u8> {
        let mut flags = NLM_F_CAPPED;
        if msg.is_some() {
            flags |= NLM_F_ACK_TLVS;
        }
        let mut m = MsgBuilder::new(NLMSG_ERROR, 0);
        // Overwrite the request flag MsgBuilder adds.
        m.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        m.buf.extend_from_slice(&(-errno).to_ne_bytes());
        let mut echoed = MsgBuilder::new(RTM_NEWLINK, NLM_F_ACK);
        m.buf.extend_from_slice(&echoed.finish(seq)[..NLMSG_HDRLEN]);
        if let Some(text) = msg {
            m.attr_str(NLMSGERR_ATTR_MSG, text);
        }
        m.finish(seq).to_vec()
    }

    #[test]
    fn error_and_ack_parsing() {
        let d = error_datagram(9, libc::EEXIST, None);
        let msg = parse_messages(&d).unwrap()[0];
        assert_eq!((msg.ty, msg.seq), (NLMSG_ERROR, 9));
        assert_eq!(
            parse_error(msg.flags, msg.payload).unwrap(),
            Ack {
                errno: libc::EEXIST,
                message: None
            }
        );
        let d = error_datagram(9, libc::EINVAL, Some("Unknown device type"));
        let msg = parse_messages(&d).unwrap()[0];
        assert_eq!(
            parse_error(msg.flags, msg.payload).unwrap(),
            Ack {
                errno: libc::EINVAL,
                message: Some("Unknown device type".into())
            }
        );
        let d = error_datagram(9, 0, None);
        let msg = parse_messages(&d).unwrap()[0];
        assert_eq!(parse_error(msg.flags, msg.payload).unwrap().errno, 0);
        assert!(parse_error(0, &[0; 8]).is_err());
    }

    #[test]
    fn link_parsing() {
        let mut m = MsgBuilder::new(RTM_NEWLINK, 0);
        m.ifinfomsg(12, IFF_UP | 0x1000, 0)
            .attr_str(IFLA_IFNAME, "dmsbr0")
            .attr_u32(IFLA_MTU, 1400)
            .attr_u32(IFLA_MASTER, 3)
            .attr_str(IFLA_IFALIAS, "dms-bridge");
        let info = m.begin_nest(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, "bridge");
        m.end_nest(info);
        let bytes = m.finish(0).to_vec();
        let msg = parse_messages(&bytes).unwrap()[0];
        let link = parse_link(msg.payload).unwrap();
        assert_eq!(
            link,
            crate::Link {
                index: 12,
                name: "dmsbr0".into(),
                kind: Some("bridge".into()),
                alias: Some("dms-bridge".into()),
                master: Some(3),
                up: true,
                mtu: 1400,
            }
        );

        let mut m = MsgBuilder::new(RTM_NEWLINK, 0);
        m.ifinfomsg(1, 0, 0).attr_str(IFLA_IFNAME, "lo");
        let bytes = m.finish(0).to_vec();
        let link = parse_link(parse_messages(&bytes).unwrap()[0].payload).unwrap();
        assert_eq!(
            (link.kind, link.alias, link.master, link.up),
            (None, None, None, false)
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        // Message length larger than the datagram.
        let mut d = error_datagram(1, 0, None);
        d[0] = 200;
        assert!(parse_messages(&d).is_err());
        // Attribute length below 4.
        assert!(parse_attrs(&[2, 0, 1, 0]).is_err());
        // Attribute length beyond the buffer.
        assert!(parse_attrs(&[9, 0, 1, 0, 0]).is_err());
        assert!(parse_link(&[0; 8]).is_err());
        assert!(read_u32(&[1, 2]).is_err());
        // Trailing bytes shorter than a header are ignored.
        assert!(parse_messages(&[0; 3]).unwrap().is_empty());
    }
}
