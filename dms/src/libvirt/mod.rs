//! Full-guest domains through libvirt (QEMU/KVM, Xen, LXC).
//!
//! The configuration, the guest templates, the domain XML and the domain repository (overlays,
//! contextualization ISOs, saved state) are plain code, always built and unit-tested. The
//! backend itself talks to libvirtd through the `virt` crate and is built with the cargo
//! feature `libvirt` (libvirt.so pulls ~55 shared libraries into the daemon).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[cfg(feature = "libvirt")]
mod backend;
#[cfg(feature = "libvirt")]
mod conn;
pub mod repo;
pub mod xml;

#[cfg(feature = "libvirt")]
pub use backend::LibvirtBackend;

/// The `[libvirt]` table of the daemon configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibvirtConfig {
    /// Connection for `kvm` and `qemu` templates.
    pub uri: String,
    /// Connection for `lxc` templates.
    pub lxc_uri: String,
    /// Connection for `xen` templates.
    pub xen_uri: String,
    /// The domain repository: per-domain overlays, contextualization ISOs, saved state.
    pub repository: PathBuf,
    /// A libvirt call that has not answered after this long fails (the daemon keeps serving).
    pub call_timeout_ms: u64,
    /// A guest with a heartbeat must report alive within this long after it starts...
    pub spawn_time_limit_secs: u64,
    /// ...and then at least this often, or it is a zombie: destroyed and cleaned.
    pub alive_time_limit_secs: u64,
    /// libvirtd's pid file, to report its memory (`dms_libvirtd_resident_memory_bytes`).
    pub libvirtd_pidfile: PathBuf,
    /// Guest templates by name; policies name them with `template = "..."`.
    #[serde(default)]
    pub templates: BTreeMap<String, Template>,
}

impl Default for LibvirtConfig {
    fn default() -> Self {
        LibvirtConfig {
            uri: "qemu:///system".into(),
            lxc_uri: "lxc:///system".into(),
            xen_uri: "xen:///system".into(),
            repository: "/var/lib/dms/repository".into(),
            call_timeout_ms: 30_000,
            spawn_time_limit_secs: 300,
            alive_time_limit_secs: 60,
            libvirtd_pidfile: "/run/libvirtd.pid".into(),
            templates: BTreeMap::new(),
        }
    }
}

/// The hypervisor (libvirt domain type) of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestType {
    /// QEMU with KVM acceleration (real sites).
    Kvm,
    /// QEMU with software emulation (TCG).
    Qemu,
    /// Xen (HVM with a disk image, PV with a kernel).
    Xen,
    /// libvirt's LXC driver: a container run by libvirt.
    Lxc,
}

impl GuestType {
    /// The libvirt `<domain type=...>` value.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestType::Kvm => "kvm",
            GuestType::Qemu => "qemu",
            GuestType::Xen => "xen",
            GuestType::Lxc => "lxc",
        }
    }

    /// Whether this is a virtual machine (has disks, a kernel, virtio channels).
    pub fn is_vm(self) -> bool {
        !matches!(self, GuestType::Lxc)
    }
}

/// A guest template: what every guest started from it looks like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// The hypervisor.
    #[serde(rename = "type")]
    pub guest_type: GuestType,
    /// Connection URI; default from `[libvirt]` by type.
    #[serde(default)]
    pub uri: Option<String>,
    /// Memory when the policy gives no memory limit (the limit wins when it is set).
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Virtual CPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Base disk image; each guest gets a copy-on-write qcow2 overlay of it.
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// Format of the base image: "qcow2" or "raw".
    #[serde(default = "default_image_format")]
    pub image_format: String,
    /// Kernel for direct boot.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Initrd for direct boot.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line for direct boot.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// LXC: the program libvirt starts as the container's init.
    #[serde(default)]
    pub init: Option<String>,
    /// LXC: its arguments.
    #[serde(default)]
    pub init_args: Vec<String>,
    /// The guest reports alive over a virtio-serial port named `org.dms.alive.0`.
    #[serde(default)]
    pub heartbeat: bool,
    /// The guest runs the QEMU guest agent (`dmsctl exec` into the guest uses it).
    #[serde(default)]
    pub agent: bool,
    /// Attach a contextualization CD-ROM (cloud-init NoCloud layout, label `cidata`).
    #[serde(default = "yes")]
    pub context: bool,
    /// A script the contextualization passes to the guest as its `user-data`.
    #[serde(default)]
    pub startup_script: Option<PathBuf>,
    /// Give the guest a network interface (a tap the daemon shapes).
    #[serde(default)]
    pub network: bool,
    /// Attach that interface to this existing host bridge instead of a bare tap.
    #[serde(default)]
    pub bridge: Option<String>,
    /// Overrides `[libvirt] spawn_time_limit_secs` for guests of this template.
    #[serde(default)]
    pub spawn_time_limit_secs: Option<u64>,
    /// Overrides `[libvirt] alive_time_limit_secs` for guests of this template.
    #[serde(default)]
    pub alive_time_limit_secs: Option<u64>,
    /// QEMU binary (default: libvirt's choice).
    #[serde(default)]
    pub emulator: Option<PathBuf>,
    /// Machine type (default "pc" for QEMU/KVM).
    #[serde(default)]
    pub machine: Option<String>,
}

fn default_memory_mib() -> u64 {
    512
}
fn default_vcpus() -> u32 {
    1
}
fn default_image_format() -> String {
    "qcow2".into()
}
fn yes() -> bool {
    true
}

impl Template {
    /// Checks the template's own consistency (not the files: they are checked when a guest
    /// starts, so a missing image fails that guest only). Errors name the key.
    pub fn validate(&self, name: &str) -> Result<(), String> {
        let key = |k: &str| format!("libvirt.templates.{name}.{k}");
        dms_policies::identity::validate_name("template name", name).map_err(|e| e.to_string())?;
        if self.vcpus == 0 || self.vcpus > 256 {
            return Err(format!(
                "{} = {}: must be 1..=256",
                key("vcpus"),
                self.vcpus
            ));
        }
        if self.memory_mib < 16 {
            return Err(format!(
                "{} = {}: must be at least 16",
                key("memory_mib"),
                self.memory_mib
            ));
        }
        if !matches!(self.image_format.as_str(), "qcow2" | "raw") {
            return Err(format!(
                "{} = {:?}: must be \"qcow2\" or \"raw\"",
                key("image_format"),
                self.image_format
            ));
        }
        for (k, p) in [
            ("image", &self.image),
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
            ("startup_script", &self.startup_script),
            ("emulator", &self.emulator),
        ] {
            if let Some(p) = p {
                if !p.is_absolute() {
                    return Err(format!("{} = {:?}: must be an absolute path", key(k), p));
                }
            }
        }
        if let Some(c) = &self.cmdline {
            if c.contains(['\n', '\0']) {
                return Err(format!("{} = {c:?}: no newlines or NULs", key("cmdline")));
            }
        }
        if let Some(b) = &self.bridge {
            dms_net::validate_ifname(b).map_err(|e| format!("{} = {b:?}: {e}", key("bridge")))?;
        }
        match self.guest_type {
            GuestType::Lxc => {
                if self.init.is_none() {
                    return Err(format!(
                        "{}: an lxc template needs init = \"/path/to/program\"",
                        key("init")
                    ));
                }
                for (k, set) in [
                    ("image", self.image.is_some()),
                    ("kernel", self.kernel.is_some()),
                    ("heartbeat", self.heartbeat),
                    ("agent", self.agent),
                ] {
                    if set {
                        return Err(format!(
                            "{}: not available for type \"lxc\" (it runs on the host kernel without virtio channels)",
                            key(k)
                        ));
                    }
                }
            }
            _ => {
                if self.image.is_none() && self.kernel.is_none() {
                    return Err(format!(
                        "libvirt.templates.{name}: a {} template needs image = \"...\" or kernel = \"...\"",
                        self.guest_type.as_str()
                    ));
                }
                if self.initrd.is_some() && self.kernel.is_none() {
                    return Err(format!("{}: initrd without kernel", key("initrd")));
                }
                if self.init.is_some() {
                    return Err(format!("{}: only for type \"lxc\"", key("init")));
                }
            }
        }
        Ok(())
    }

    /// The connection this template's guests live on.
    pub fn uri<'a>(&'a self, cfg: &'a LibvirtConfig) -> &'a str {
        self.uri.as_deref().unwrap_or(match self.guest_type {
            GuestType::Kvm | GuestType::Qemu => &cfg.uri,
            GuestType::Xen => &cfg.xen_uri,
            GuestType::Lxc => &cfg.lxc_uri,
        })
    }
}

impl LibvirtConfig {
    /// Checks every template and the numbers.
    pub fn validate(&self) -> Result<(), String> {
        if !self.repository.is_absolute() {
            return Err(format!(
                "libvirt.repository = {:?}: must be an absolute path",
                self.repository
            ));
        }
        if self.call_timeout_ms < 100 {
            return Err(format!(
                "libvirt.call_timeout_ms = {}: must be at least 100",
                self.call_timeout_ms
            ));
        }
        if self.alive_time_limit_secs == 0 || self.spawn_time_limit_secs == 0 {
            return Err(
                "libvirt.spawn_time_limit_secs and alive_time_limit_secs must be at least 1".into(),
            );
        }
        for (name, t) in &self.templates {
            t.validate(name)?;
        }
        Ok(())
    }

    /// The template a policy names, or an error naming the policy's key.
    pub fn template(&self, name: &str) -> Result<&Template, String> {
        self.templates.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.templates.keys().map(String::as_str).collect();
            format!(
                "template = {name:?}: no such template in the daemon's [libvirt.templates] (defined: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )
        })
    }
}

/// The libvirt name of a DMS domain; the prefix tells admins (and `virsh list`) whose it is.
/// Ownership itself is decided by the DMS metadata element, never by the name alone.
pub fn libvirt_name(domain: &str) -> String {
    format!("dms-{domain}")
}

/// The DMS domain a libvirt name belongs to, if it has the DMS prefix.
pub fn domain_name(libvirt: &str) -> Option<&str> {
    libvirt.strip_prefix("dms-")
}

/// Interface names derived from a domain name: the guest's tap (`dmst...`) and the ifb that
/// shapes what the guest sends (`dmsi...`), 14 characters with a hash, so any domain name fits
/// the kernel's 15.
pub fn link_names(domain: &str) -> (String, String) {
    let h = fnv1a(domain.as_bytes());
    (
        format!("dmst{:010x}", h & 0xff_ffff_ffff),
        format!("dmsi{:010x}", h & 0xff_ffff_ffff),
    )
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A unix socket path must fit `sun_path` (108 bytes with the NUL).
pub fn check_socket_path(p: &Path) -> Result<(), String> {
    let n = p.as_os_str().len();
    if n > 107 {
        return Err(format!(
            "socket path {} is {n} bytes, longer than the 107 a unix socket allows: choose a shorter libvirt.repository",
            p.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn vm() -> Template {
        toml::from_str("type = \"qemu\"\nkernel = \"/k\"\n").unwrap()
    }

    #[test]
    fn defaults_and_validation() {
        let t = vm();
        assert_eq!((t.memory_mib, t.vcpus, t.context), (512, 1, true));
        assert!(t.validate("tiny").is_ok());
        let mut bad = vm();
        bad.vcpus = 0;
        assert!(bad
            .validate("tiny")
            .unwrap_err()
            .contains("libvirt.templates.tiny.vcpus = 0"));
        let mut bad = vm();
        bad.image = Some("rel/img".into());
        assert!(bad.validate("tiny").unwrap_err().contains("absolute"));
        let mut bad = vm();
        bad.kernel = None;
        assert!(bad.validate("t").unwrap_err().contains("needs image"));
        let lxc: Template =
            toml::from_str("type = \"lxc\"\ninit = \"/bin/sh\"\nheartbeat = true").unwrap();
        assert!(lxc
            .validate("c")
            .unwrap_err()
            .contains("heartbeat: not available"));
        assert!(toml::from_str::<Template>("type = \"vmware\"").is_err());
        assert!(toml::from_str::<Template>("type = \"qemu\"\nbogus = 1").is_err());
        let mut bad = vm();
        bad.image_format = "vmdk".into();
        assert!(bad.validate("t").unwrap_err().contains("image_format"));
    }

    #[test]
    fn uris_by_type() {
        let cfg = LibvirtConfig::default();
        assert_eq!(vm().uri(&cfg), "qemu:///system");
        let mut t = vm();
        t.guest_type = GuestType::Xen;
        assert_eq!(t.uri(&cfg), "xen:///system");
        t.uri = Some("qemu+ssh://x/system".into());
        assert_eq!(t.uri(&cfg), "qemu+ssh://x/system");
        assert!(cfg.template("nope").unwrap_err().contains("defined: none"));
    }

    #[test]
    fn names() {
        assert_eq!(libvirt_name("atlas.alice"), "dms-atlas.alice");
        assert_eq!(domain_name("dms-atlas.alice"), Some("atlas.alice"));
        assert_eq!(domain_name("other"), None);
        let (tap, ifb) = link_names("a-very-long-domain-name.with.job123456789");
        assert_eq!((tap.len(), ifb.len()), (14, 14));
        assert_ne!(link_names("a").0, link_names("b").0);
        assert!(check_socket_path(Path::new(&"/x".repeat(60))).is_err());
    }
}
