//! Network interface counters from `/sys/class/net/<ifname>/statistics/`, kept open and re-read
//! with `pread` like the cgroup files.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{map_err, parse_single, KeptFile, UsageError};

/// One domain's network counters, from the domain's point of view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetUsage {
    /// Bytes received by the domain.
    pub receive_bytes: u64,
    /// Bytes sent by the domain.
    pub transmit_bytes: u64,
    /// Packets received by the domain.
    pub receive_packets: u64,
    /// Packets sent by the domain.
    pub transmit_packets: u64,
    /// Packets towards the domain that the interface dropped.
    pub receive_dropped: u64,
    /// Packets from the domain that the interface dropped.
    pub transmit_dropped: u64,
}

/// Which end of the domain's link the read interface is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkSide {
    /// The host-side end of the domain's veth pair: its rx is the domain's transmit and its tx
    /// the domain's receive, so the counters are swapped.
    HostPeer,
    /// An interface seen from inside the domain: counters are taken as they are.
    Domain,
}

/// The statistics files read, in [`NetReader::files`] order.
const STAT_FILES: [&str; 6] = [
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "rx_dropped",
    "tx_dropped",
];

/// Reads one network interface's counters from sysfs files opened once.
pub struct NetReader {
    ifname: String,
    side: LinkSide,
    files: [KeptFile; 6],
    buf: Vec<u8>,
}

impl std::fmt::Debug for NetReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetReader")
            .field("ifname", &self.ifname)
            .field("side", &self.side)
            .finish()
    }
}

impl NetReader {
    /// Opens the statistics files of `ifname` under `sys_class_net_root` (normally
    /// `/sys/class/net`, which shows the interfaces of the namespace sysfs was mounted in).
    /// A missing interface is [`UsageError::Vanished`].
    pub fn open(
        sys_class_net_root: &Path,
        ifname: &str,
        side: LinkSide,
    ) -> Result<Self, UsageError> {
        let dir = sys_class_net_root.join(ifname).join("statistics");
        if ifname.is_empty() || ifname == "." || ifname == ".." || ifname.contains('/') {
            return Err(UsageError::Io {
                op: "open",
                path: dir,
                source: io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"),
            });
        }
        let open = |name: &str| KeptFile::open(dir.join(name));
        let files = [
            open(STAT_FILES[0])?,
            open(STAT_FILES[1])?,
            open(STAT_FILES[2])?,
            open(STAT_FILES[3])?,
            open(STAT_FILES[4])?,
            open(STAT_FILES[5])?,
        ];
        Ok(Self {
            ifname: ifname.to_string(),
            side,
            files,
            buf: Vec::with_capacity(64),
        })
    }

    /// The interface name given to [`NetReader::open`].
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Which end of the link this reader reads.
    pub fn side(&self) -> LinkSide {
        self.side
    }

    /// Reads fresh counters. A deleted interface is [`UsageError::Vanished`].
    pub fn read(&mut self) -> Result<NetUsage, UsageError> {
        let mut v = [0u64; 6];
        for (slot, f) in v.iter_mut().zip(&self.files) {
            *slot = read_counter(f, &mut self.buf)?;
        }
        let [rx_bytes, tx_bytes, rx_packets, tx_packets, rx_dropped, tx_dropped] = v;
        Ok(match self.side {
            LinkSide::Domain => NetUsage {
                receive_bytes: rx_bytes,
                transmit_bytes: tx_bytes,
                receive_packets: rx_packets,
                transmit_packets: tx_packets,
                receive_dropped: rx_dropped,
                transmit_dropped: tx_dropped,
            },
            LinkSide::HostPeer => NetUsage {
                receive_bytes: tx_bytes,
                transmit_bytes: rx_bytes,
                receive_packets: tx_packets,
                transmit_packets: rx_packets,
                receive_dropped: tx_dropped,
                transmit_dropped: rx_dropped,
            },
        })
    }
}

fn read_counter(f: &KeptFile, buf: &mut Vec<u8>) -> Result<u64, UsageError> {
    let n = match f.read_raw(buf) {
        Ok(n) => n,
        // sysfs answers EINVAL while the device is being unregistered (not alive any more),
        // then ENODEV once the attribute is removed under the open fd.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            return Err(UsageError::Vanished(f.path.clone()));
        }
        Err(e) => return Err(map_err("read", f.path.clone(), e)),
    };
    parse_single(f.text(&buf[..n])?).ok_or_else(|| UsageError::Io {
        op: "parse",
        path: f.path.clone(),
        source: io::Error::new(io::ErrorKind::InvalidData, "not a counter"),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use super::*;

    fn stats_dir(root: &Path, ifname: &str) -> PathBuf {
        root.join(ifname).join("statistics")
    }

    fn fixture(root: &Path, ifname: &str, values: [u64; 6]) {
        let d = stats_dir(root, ifname);
        fs::create_dir_all(&d).unwrap();
        for (name, v) in STAT_FILES.iter().zip(values) {
            fs::write(d.join(name), format!("{v}\n")).unwrap();
        }
    }

    #[test]
    fn host_peer_swaps_and_domain_does_not() {
        let t = tempfile::tempdir().unwrap();
        // rx_bytes, tx_bytes, rx_packets, tx_packets, rx_dropped, tx_dropped
        fixture(t.path(), "veth0", [100, 200, 1, 2, 3, 4]);
        let mut host = NetReader::open(t.path(), "veth0", LinkSide::HostPeer).unwrap();
        assert_eq!(
            host.read().unwrap(),
            NetUsage {
                receive_bytes: 200,
                transmit_bytes: 100,
                receive_packets: 2,
                transmit_packets: 1,
                receive_dropped: 4,
                transmit_dropped: 3,
            }
        );
        let mut dom = NetReader::open(t.path(), "veth0", LinkSide::Domain).unwrap();
        assert_eq!(
            dom.read().unwrap(),
            NetUsage {
                receive_bytes: 100,
                transmit_bytes: 200,
                receive_packets: 1,
                transmit_packets: 2,
                receive_dropped: 3,
                transmit_dropped: 4,
            }
        );
        assert_eq!(host.ifname(), "veth0");
        assert_eq!(host.side(), LinkSide::HostPeer);
        // Kept-open files see new contents.
        fs::write(stats_dir(t.path(), "veth0").join("tx_bytes"), "12345\n").unwrap();
        assert_eq!(host.read().unwrap().receive_bytes, 12345);
        assert_eq!(dom.read().unwrap().transmit_bytes, 12345);
    }

    #[test]
    fn missing_interface_is_vanished() {
        let t = tempfile::tempdir().unwrap();
        match NetReader::open(t.path(), "gone0", LinkSide::HostPeer) {
            Err(UsageError::Vanished(p)) => assert!(p.ends_with("gone0/statistics/rx_bytes")),
            other => panic!("expected Vanished, got {other:?}"),
        }
        // One counter file missing (interface half torn down) is Vanished as well.
        fixture(t.path(), "half0", [0; 6]);
        fs::remove_file(stats_dir(t.path(), "half0").join("tx_dropped")).unwrap();
        assert!(matches!(
            NetReader::open(t.path(), "half0", LinkSide::Domain),
            Err(UsageError::Vanished(_))
        ));
    }

    #[test]
    fn bad_names_and_contents_are_errors() {
        let t = tempfile::tempdir().unwrap();
        for bad in ["", ".", "..", "a/b"] {
            assert!(matches!(
                NetReader::open(t.path(), bad, LinkSide::Domain),
                Err(UsageError::Io { op: "open", .. })
            ));
        }
        fixture(t.path(), "eth0", [0; 6]);
        let mut r = NetReader::open(t.path(), "eth0", LinkSide::Domain).unwrap();
        fs::write(stats_dir(t.path(), "eth0").join("rx_packets"), "x\n").unwrap();
        let e = r.read().unwrap_err();
        assert!(matches!(e, UsageError::Io { op: "parse", .. }), "{e}");
    }
}
