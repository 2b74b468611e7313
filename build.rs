//! Link configuration of the driver for its three builds (see README.md):
//!
//! - **WDK build** (Windows host, feature `wdk`): wdk-build reads the WDK and emits the driver's
//!   link arguments, exactly as windows-drivers-rs samples do.
//! - **Cross build** (Windows target, feature `wdk` off, e.g. `cargo xtask package` on Linux): emit
//!   the kernel-image link arguments ourselves, on the final cdylib link only, so that core and alloc
//!   are not rebuilt when they change.
//! - **Host build** (any other target): nothing; kernel imports resolve to `fltsim` in tests.

/// lld-link / link.exe arguments that make a cdylib a kernel-mode driver image.
const DRIVER_LINK_ARGS: [&str; 8] = [
    "/DRIVER",
    "/SUBSYSTEM:NATIVE,10.00",
    "/ENTRY:DriverEntry",
    // rustc otherwise asks for msvcrt.lib; a driver links against no C runtime.
    "/NODEFAULTLIB",
    "/INTEGRITYCHECK",
    // Writes the PE checksum, which the kernel loader checks for drivers.
    "/RELEASE",
    "/OPT:REF,ICF",
    "/MERGE:.edata=.rdata",
];

fn main() {
    // Only this file decides anything; features and target are tracked by cargo itself.
    println!("cargo:rerun-if-changed=build.rs");

    configure_wdk_build();

    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let wdk = std::env::var_os("CARGO_FEATURE_WDK").is_some();
    if target_os == "windows" && !wdk {
        for arg in DRIVER_LINK_ARGS {
            println!("cargo:rustc-cdylib-link-arg={arg}");
        }
    }
}

/// The WDK build: wdk-build's binary-driver configuration (link arguments, WDK library paths).
#[cfg(all(windows, feature = "wdk"))]
fn configure_wdk_build() {
    if let Err(error) = wdk_build::configure_wdk_binary_build() {
        panic!("wdk-build could not configure the driver build: {error}");
    }
}

/// Not a Windows host with feature `wdk`: wdk-build is not a dependency.
#[cfg(not(all(windows, feature = "wdk")))]
fn configure_wdk_build() {}
