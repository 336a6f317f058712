//! Fixes the Slurm release the plugin is built for (see src/version.rs) and writes it to
//! `$OUT_DIR/slurm_version.rs`.

use std::path::Path;
use std::process::Command;

#[path = "src/version.rs"]
#[allow(dead_code)]
mod version;

const HEADERS: [&str; 2] = [
    "/usr/include/slurm/slurm_version.h",
    "/usr/local/include/slurm/slurm_version.h",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/version.rs");
    println!("cargo:rerun-if-env-changed=DMS_SLURM_VERSION");
    let (number, from) = find();
    if number == 0 {
        println!(
            "cargo:warning=spank_dms.so: no Slurm found (no DMS_SLURM_VERSION, no {}, no slurmd); \
             Slurm will refuse to load this build of the plugin; set DMS_SLURM_VERSION=22.05 \
             or install libslurm-dev and rebuild",
            HEADERS[0]
        );
    }
    let out =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("slurm_version.rs");
    std::fs::write(
        &out,
        format!(
            "/// `SLURM_VERSION_NUMBER` of the Slurm this plugin is built for (0: none found).\n\
             pub const SLURM_VERSION_NUMBER: u32 = {number:#08x};\n\
             /// Where [`SLURM_VERSION_NUMBER`] was found.\n\
             pub const SLURM_VERSION_FROM: &str = {from:?};\n"
        ),
    )
    .expect("writing slurm_version.rs");
}

fn find() -> (u32, String) {
    if let Ok(v) = std::env::var("DMS_SLURM_VERSION") {
        match version::from_release(&v) {
            Some(n) => return (n, "DMS_SLURM_VERSION".into()),
            None => panic!(
                "DMS_SLURM_VERSION={v:?} is not a Slurm release (expected e.g. 22.05, 22.05.8 or 0x160508)"
            ),
        }
    }
    for h in HEADERS {
        if let Ok(text) = std::fs::read_to_string(h) {
            println!("cargo:rerun-if-changed={h}");
            if let Some(n) = version::from_header(&text) {
                return (n, h.into());
            }
        }
    }
    for dir in ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"] {
        let slurmd = Path::new(dir).join("slurmd");
        if !slurmd.exists() {
            continue;
        }
        println!("cargo:rerun-if-changed={}", slurmd.display());
        if let Ok(o) = Command::new(&slurmd).arg("-V").output() {
            if let Some(n) = version::from_release(&String::from_utf8_lossy(&o.stdout)) {
                return (n, format!("{} -V", slurmd.display()));
            }
        }
    }
    (0, "nowhere".into())
}
