//! Gives the cdylib the soname glibc's NSS loader asks for (`libnss_dms.so.2`).

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnss_dms.so.2");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DMS_NSS_DIR");
}
