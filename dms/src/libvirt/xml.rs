//! The libvirt domain XML of a guest: template + quotas + the repository's files. Pure, so
//! every hypervisor's XML (Xen too, which this platform cannot run) is unit-tested.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{GuestType, Template};

/// The namespace of DMS's `<metadata>` element: a libvirt domain carrying it was created by
/// DMS; no other domain is ever touched.
pub const METADATA_NS: &str = "https://dms.invalid/xmlns/domain/1";
/// The element prefix used in that metadata.
pub const METADATA_KEY: &str = "dms";
/// The virtio-serial port a heartbeat-capable guest writes `alive ...` lines to.
pub const ALIVE_PORT: &str = "org.dms.alive.0";
/// The QEMU guest agent's port.
pub const AGENT_PORT: &str = "org.qemu.guest_agent.0";

/// Block I/O limits for the guest's disk (libvirt `<iotune>`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoTune {
    /// Read bytes per second.
    pub read_bps: Option<u64>,
    /// Write bytes per second.
    pub write_bps: Option<u64>,
    /// Read operations per second.
    pub read_iops: Option<u64>,
    /// Write operations per second.
    pub write_iops: Option<u64>,
}

/// Everything the XML of one guest is made from.
#[derive(Debug, Clone)]
pub struct GuestSpec<'a> {
    /// The DMS domain name.
    pub domain: &'a str,
    /// Owner account, VO and template name, recorded in the metadata.
    pub owner: &'a str,
    /// The VO.
    pub vo: &'a str,
    /// Template name.
    pub template_name: &'a str,
    /// The template.
    pub template: &'a Template,
    /// Guest memory in KiB.
    pub memory_kib: u64,
    /// Memory soft limit in KiB (memtune).
    pub memory_soft_kib: Option<u64>,
    /// CPU limit in millicores (1000 = one host core) for the whole guest.
    pub cpu_millicores: Option<u32>,
    /// CPU weight (1..=10000, 100 = default).
    pub cpu_weight: Option<u32>,
    /// Disk limits.
    pub io: IoTune,
    /// The copy-on-write overlay (when the template has an image).
    pub overlay: Option<PathBuf>,
    /// The contextualization ISO.
    pub context_iso: Option<PathBuf>,
    /// The heartbeat channel's socket (QEMU binds it; the daemon connects).
    pub alive_socket: Option<PathBuf>,
    /// Serial console log.
    pub console_log: Option<PathBuf>,
    /// The tap's name.
    pub tap: Option<String>,
}

/// XML-escapes text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

fn path(p: &Path) -> String {
    escape(&p.to_string_lossy())
}

/// libvirt's CFS period and quota (µs) for a CPU limit, whole guest.
pub fn cpu_quota_us(millicores: u32) -> (u64, i64) {
    (100_000, i64::from(millicores) * 100)
}

/// CPU weight (cgroup v2 scale, 100 default) to libvirt `shares` (1024 default).
pub fn shares(weight: u32) -> u64 {
    (u64::from(weight) * 1024 / 100).clamp(2, 262_144)
}

/// The domain XML.
pub fn domain_xml(g: &GuestSpec<'_>) -> String {
    let t = g.template;
    let mut x = String::new();
    let ty = t.guest_type;
    let _ = writeln!(x, "<domain type='{}'>", ty.as_str());
    let _ = writeln!(
        x,
        "  <name>{}</name>",
        escape(&super::libvirt_name(g.domain))
    );
    let _ = writeln!(
        x,
        "  <metadata><{k}:domain xmlns:{k}='{ns}'><{k}:name>{}</{k}:name><{k}:owner>{}</{k}:owner><{k}:vo>{}</{k}:vo><{k}:template>{}</{k}:template></{k}:domain></metadata>",
        escape(g.domain),
        escape(g.owner),
        escape(g.vo),
        escape(g.template_name),
        k = METADATA_KEY,
        ns = METADATA_NS,
    );
    let _ = writeln!(x, "  <memory unit='KiB'>{}</memory>", g.memory_kib);
    let _ = writeln!(
        x,
        "  <currentMemory unit='KiB'>{}</currentMemory>",
        g.memory_kib
    );
    let _ = writeln!(x, "  <vcpu placement='static'>{}</vcpu>", t.vcpus);
    // CPU: QEMU/KVM and LXC take a CFS quota for the whole domain; Xen's credit scheduler
    // has only a weight in the XML (its cap is a scheduler parameter set after start).
    let mut cputune = String::new();
    if let Some(w) = g.cpu_weight {
        let _ = write!(cputune, "<shares>{}</shares>", shares(w));
    }
    if let Some(m) = g.cpu_millicores {
        let (period, quota) = cpu_quota_us(m);
        match ty {
            GuestType::Kvm | GuestType::Qemu => {
                let _ = write!(
                    cputune,
                    "<global_period>{period}</global_period><global_quota>{quota}</global_quota>"
                );
            }
            GuestType::Lxc => {
                let _ = write!(cputune, "<period>{period}</period><quota>{quota}</quota>");
            }
            GuestType::Xen => {}
        }
    }
    if !cputune.is_empty() {
        let _ = writeln!(x, "  <cputune>{cputune}</cputune>");
    }
    // Memory: for a VM the guest size is the limit (a host-side hard limit on the QEMU process
    // would kill the whole guest); for LXC it is the container's memory cgroup limit.
    let mut memtune = String::new();
    if ty == GuestType::Lxc {
        let _ = write!(
            memtune,
            "<hard_limit unit='KiB'>{}</hard_limit>",
            g.memory_kib
        );
    }
    if let Some(s) = g.memory_soft_kib {
        let _ = write!(memtune, "<soft_limit unit='KiB'>{s}</soft_limit>");
    }
    if !memtune.is_empty() {
        let _ = writeln!(x, "  <memtune>{memtune}</memtune>");
    }
    x.push_str("  <os>\n");
    match ty {
        GuestType::Lxc => {
            x.push_str("    <type>exe</type>\n");
            if let Some(init) = &t.init {
                let _ = writeln!(x, "    <init>{}</init>", escape(init));
            }
            for a in &t.init_args {
                let _ = writeln!(x, "    <initarg>{}</initarg>", escape(a));
            }
        }
        GuestType::Xen if t.kernel.is_some() => x.push_str("    <type>linux</type>\n"),
        GuestType::Xen => x.push_str("    <type arch='x86_64' machine='xenfv'>hvm</type>\n"),
        GuestType::Kvm | GuestType::Qemu => {
            let _ = writeln!(
                x,
                "    <type arch='x86_64' machine='{}'>hvm</type>",
                escape(t.machine.as_deref().unwrap_or("pc"))
            );
        }
    }
    if ty.is_vm() {
        if let Some(k) = &t.kernel {
            let _ = writeln!(x, "    <kernel>{}</kernel>", path(k));
            if let Some(i) = &t.initrd {
                let _ = writeln!(x, "    <initrd>{}</initrd>", path(i));
            }
            if let Some(c) = &t.cmdline {
                let _ = writeln!(x, "    <cmdline>{}</cmdline>", escape(c));
            }
        } else {
            x.push_str("    <boot dev='hd'/>\n");
        }
    }
    x.push_str("  </os>\n");
    match ty {
        GuestType::Lxc => x.push_str("  <features><privnet/></features>\n"),
        _ => x.push_str("  <features><acpi/></features>\n"),
    }
    x.push_str("  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n");
    x.push_str("  <devices>\n");
    if let Some(e) = &t.emulator {
        let _ = writeln!(x, "    <emulator>{}</emulator>", path(e));
    }
    if ty == GuestType::Lxc {
        // No <filesystem>: the container shares the host's root (a read-only re-mount of it
        // fails on nsfs mounts such as /run/netns).
        x.push_str("    <console type='pty'/>\n");
    }
    let (disk_bus, disk_dev, cd_bus, cd_dev) = match ty {
        GuestType::Xen => ("xen", "xvda", "xen", "xvdc"),
        _ => ("virtio", "vda", "ide", "hdc"),
    };
    if let Some(o) = &g.overlay {
        let _ = write!(
            x,
            "    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='{disk_dev}' bus='{disk_bus}'/>",
            path(o)
        );
        let io = &g.io;
        if io != &IoTune::default() {
            x.push_str("<iotune>");
            for (tag, v) in [
                ("read_bytes_sec", io.read_bps),
                ("write_bytes_sec", io.write_bps),
                ("read_iops_sec", io.read_iops),
                ("write_iops_sec", io.write_iops),
            ] {
                if let Some(v) = v {
                    let _ = write!(x, "<{tag}>{v}</{tag}>");
                }
            }
            x.push_str("</iotune>");
        }
        x.push_str("</disk>\n");
    }
    if let Some(iso) = &g.context_iso {
        let _ = writeln!(
            x,
            "    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='{}'/><target dev='{cd_dev}' bus='{cd_bus}'/><readonly/></disk>",
            path(iso)
        );
    }
    if ty.is_vm() {
        if let Some(log) = &g.console_log {
            let _ = writeln!(
                x,
                "    <serial type='file'><source path='{0}' append='on'/><target port='0'/></serial>\n    <console type='file'><source path='{0}' append='on'/><target type='serial' port='0'/></console>",
                path(log)
            );
        }
        if let Some(sock) = &g.alive_socket {
            let _ = writeln!(
                x,
                "    <channel type='unix'><source mode='bind' path='{}'/><target type='virtio' name='{ALIVE_PORT}'/></channel>",
                path(sock)
            );
        }
        if t.agent {
            let _ = writeln!(
                x,
                "    <channel type='unix'><target type='virtio' name='{AGENT_PORT}'/></channel>"
            );
        }
        x.push_str("    <memballoon model='virtio'><stats period='2'/></memballoon>\n");
    }
    if let Some(tap) = &g.tap {
        // libvirt's own <bandwidth> needs sfq and police, which not every kernel has: the
        // daemon shapes the tap with htb itself.
        let model = if ty == GuestType::Xen {
            ""
        } else {
            "<model type='virtio'/>"
        };
        match &t.bridge {
            Some(br) => {
                let _ = writeln!(
                    x,
                    "    <interface type='bridge'><source bridge='{}'/><target dev='{}'/>{model}</interface>",
                    escape(br),
                    escape(tap)
                );
            }
            None => {
                let _ = writeln!(
                    x,
                    "    <interface type='ethernet'><target dev='{}' managed='yes'/>{model}</interface>",
                    escape(tap)
                );
            }
        }
    }
    x.push_str("  </devices>\n</domain>\n");
    x
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn template(src: &str) -> Template {
        let t: Template = toml::from_str(src).unwrap();
        t.validate("t").unwrap();
        t
    }

    fn spec<'a>(t: &'a Template) -> GuestSpec<'a> {
        GuestSpec {
            domain: "atlas.alice",
            owner: "alice",
            vo: "atlas",
            template_name: "t",
            template: t,
            memory_kib: 262_144,
            memory_soft_kib: None,
            cpu_millicores: Some(500),
            cpu_weight: None,
            io: IoTune::default(),
            overlay: Some("/repo/domains/atlas.alice/disk.qcow2".into()),
            context_iso: Some("/repo/domains/atlas.alice/context.iso".into()),
            alive_socket: Some("/repo/domains/atlas.alice/alive.sock".into()),
            console_log: Some("/repo/domains/atlas.alice/console.log".into()),
            tap: Some("dmst0011223344".into()),
        }
    }

    #[test]
    fn qemu_guest() {
        let t = template(
            "type='qemu'\nimage='/img/base.qcow2'\nheartbeat=true\nagent=true\nnetwork=true",
        );
        let mut s = spec(&t);
        s.io.read_bps = Some(1_000_000);
        let x = domain_xml(&s);
        for want in [
            "<domain type='qemu'>",
            "<name>dms-atlas.alice</name>",
            "<dms:domain xmlns:dms='https://dms.invalid/xmlns/domain/1'><dms:name>atlas.alice</dms:name>",
            "<memory unit='KiB'>262144</memory>",
            "<global_period>100000</global_period><global_quota>50000</global_quota>",
            "machine='pc'>hvm</type>",
            "<boot dev='hd'/>",
            "<source file='/repo/domains/atlas.alice/disk.qcow2'/><target dev='vda' bus='virtio'/><iotune><read_bytes_sec>1000000</read_bytes_sec></iotune>",
            "device='cdrom'",
            "name='org.dms.alive.0'",
            "name='org.qemu.guest_agent.0'",
            "<interface type='ethernet'><target dev='dmst0011223344' managed='yes'/><model type='virtio'/>",
        ] {
            assert!(x.contains(want), "missing {want:?} in\n{x}");
        }
        assert!(!x.contains("<memtune>"));
    }

    #[test]
    fn kvm_direct_kernel_boot_escapes() {
        let t = template("type='kvm'\nkernel='/k/vmlinux'\ninitrd='/k/initrd'\ncmdline=\"console=ttyS0 a='<b>'&\"");
        let x = domain_xml(&spec(&t));
        assert!(x.contains("<domain type='kvm'>"));
        assert!(x.contains("<kernel>/k/vmlinux</kernel>"));
        assert!(x.contains("<cmdline>console=ttyS0 a=&apos;&lt;b&gt;&apos;&amp;</cmdline>"));
        assert!(!x.contains("<boot dev="));
        assert!(!x.contains("guest_agent"));
    }

    #[test]
    fn xen_pv_and_hvm() {
        let pv = template("type='xen'\nkernel='/boot/vmlinuz'\ninitrd='/boot/initrd'\nnetwork=true\nbridge='xenbr0'");
        let x = domain_xml(&spec(&pv));
        assert!(x.contains("<domain type='xen'>"));
        assert!(x.contains("<type>linux</type>"));
        assert!(x.contains("<target dev='xvda' bus='xen'/>"));
        assert!(x.contains("<target dev='xvdc' bus='xen'/>"));
        assert!(x.contains("<interface type='bridge'><source bridge='xenbr0'/><target dev='dmst0011223344'/></interface>"));
        // The credit scheduler's cap is not XML: only a weight may appear.
        assert!(!x.contains("quota"));
        let hvm = template("type='xen'\nimage='/img/base.raw'\nimage_format='raw'");
        let x = domain_xml(&spec(&hvm));
        assert!(x.contains("machine='xenfv'>hvm</type>"));
        assert!(x.contains("<boot dev='hd'/>"));
        assert!(well_formed(&x));
    }

    #[test]
    fn lxc_container() {
        let t =
            template("type='lxc'\ninit='/bin/sh'\ninit_args=['-c', 'echo started; sleep 1000']");
        let mut s = spec(&t);
        s.overlay = None;
        s.context_iso = None;
        s.alive_socket = None;
        s.tap = None;
        s.cpu_weight = Some(200);
        let x = domain_xml(&s);
        for want in [
            "<domain type='lxc'>",
            "<type>exe</type>",
            "<init>/bin/sh</init>",
            "<initarg>echo started; sleep 1000</initarg>",
            "<shares>2048</shares><period>100000</period><quota>50000</quota>",
            "<memtune><hard_limit unit='KiB'>262144</hard_limit></memtune>",
            "<features><privnet/></features>",
        ] {
            assert!(x.contains(want), "missing {want:?} in\n{x}");
        }
        assert!(!x.contains("memballoon"));
        assert!(well_formed(&x));
    }

    #[test]
    fn hostile_names_are_escaped() {
        let t = template("type='qemu'\nkernel='/k'");
        let mut s = spec(&t);
        s.owner = "a'><x";
        let x = domain_xml(&s);
        assert!(x.contains("<dms:owner>a&apos;&gt;&lt;x</dms:owner>"));
        assert!(well_formed(&x));
    }

    /// Every opened element is closed in order (enough to catch a broken template string).
    fn well_formed(x: &str) -> bool {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = x;
        while let Some(i) = rest.find('<') {
            rest = &rest[i + 1..];
            let end = rest.find('>').unwrap();
            let tag = &rest[..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                if stack.pop().as_deref() != Some(name) {
                    return false;
                }
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap().to_string());
            }
        }
        stack.is_empty()
    }

    #[test]
    fn all_well_formed() {
        let t = template("type='qemu'\nimage='/i'\nheartbeat=true\nagent=true\nnetwork=true");
        let mut s = spec(&t);
        s.memory_soft_kib = Some(1000);
        s.cpu_weight = Some(50);
        s.io = IoTune {
            read_bps: Some(1),
            write_bps: Some(2),
            read_iops: Some(3),
            write_iops: Some(4),
        };
        assert!(well_formed(&domain_xml(&s)));
    }
}
