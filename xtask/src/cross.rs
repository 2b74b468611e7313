//! The cross build of the driver with Debian's toolchain (the flags are explained in `invocation` and `build.rs`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::image::Image;
use crate::toolchain::{CARGO, LLD_LINK, MINGW_GCC, RUSTC};

/// The Rust target of the kernel image.
pub const TARGET: &str = "x86_64-pc-windows-msvc";
/// The driver package.
pub const PACKAGE: &str = "iotally";

/// A program, its arguments and how its environment differs from ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Program to run.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Variables to set.
    pub set: Vec<(String, OsString)>,
    /// Variables to remove.
    pub remove: Vec<String>,
}

/// Whether a variable from our environment must not reach Debian's cargo: rustup's, and cargo's own
/// that would redirect or alter the build (target dir, flags, wrappers, the running cargo's paths).
/// Network, registry, terminal settings and `CARGO_HOME` are kept.
#[must_use]
pub fn must_remove(name: &str) -> bool {
    const KEEP: [&str; 6] = [
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
    ];
    const REMOVE: [&str; 7] = [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ];
    if REMOVE.contains(&name) || name.starts_with("RUSTUP_") {
        return true;
    }
    name.starts_with("CARGO_") && !KEEP.iter().any(|keep| name.starts_with(keep))
}

/// What Debian's cargo is asked to do with the driver for [`TARGET`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Build and link `iotally.dll` (`cargo build`).
    Build,
    /// Lint the Windows-only code too (`cargo clippy ... -- -D warnings`, the workspace's lints).
    Clippy,
}

/// Debian's cargo running `task` on the driver's library for [`TARGET`] with `-Zbuild-std`, without
/// the `wdk` feature, in the profile and with the features of `image`, linked by `lld-link-22`, into
/// `target_dir`.
///
/// `env` is the current environment (names only matter) and `path` the current `PATH`.
#[must_use]
pub fn invocation(
    task: Task,
    image: Image,
    workspace: &Path,
    target_dir: &Path,
    env: impl IntoIterator<Item = String>,
    path: Option<OsString>,
) -> Invocation {
    let mut new_path = OsString::from("/usr/bin");
    if let Some(path) = path.filter(|p| !p.is_empty()) {
        new_path.push(":");
        new_path.push(path);
    }
    let subcommand = match task {
        Task::Build => "build",
        Task::Clippy => "clippy",
    };
    let mut args: Vec<OsString> = [
        subcommand.into(),
        "--manifest-path".into(),
        workspace.join("Cargo.toml").into_os_string(),
        "--package".into(),
        PACKAGE.into(),
        "--lib".into(),
        "--profile".into(),
        image.profile().into(),
        "--locked".into(),
        "--no-default-features".into(),
        "--target".into(),
        TARGET.into(),
        "-Zbuild-std=core,alloc".into(),
        "-Zbuild-std-features=compiler-builtins-mem".into(),
        "--config".into(),
        format!("target.{TARGET}.linker=\"{LLD_LINK}\"").into(),
        "--target-dir".into(),
        target_dir.as_os_str().to_owned(),
    ]
    .into();
    if !image.features().is_empty() {
        args.extend(["--features".into(), image.features().join(",").into()]);
    }
    if task == Task::Clippy {
        args.extend(["--".into(), "-D".into(), "warnings".into()]);
    }
    Invocation {
        program: PathBuf::from(CARGO),
        args,
        set: vec![
            ("PATH".into(), new_path),
            ("RUSTC".into(), RUSTC.into()),
            // Lets Debian's stable cargo accept -Z flags (build-std).
            ("RUSTC_BOOTSTRAP".into(), "1".into()),
        ],
        remove: env.into_iter().filter(|name| must_remove(name)).collect(),
    }
}

/// The Rust target of `iotallyctl.exe`.
pub const TOOL_TARGET: &str = "x86_64-pc-windows-gnu";
/// The tool's package (and binary).
pub const TOOL: &str = "iotallyctl";

/// Debian's cargo building `iotallyctl.exe` for [`TOOL_TARGET`] in release mode, with the standard
/// library rebuilt from Debian's sources (`-Zbuild-std=std,panic_abort`: rustup cannot add the
/// target here) and linked by mingw-w64's GCC, into `target_dir`.
#[must_use]
pub fn tool_invocation(
    workspace: &Path,
    target_dir: &Path,
    env: impl IntoIterator<Item = String>,
    path: Option<OsString>,
) -> Invocation {
    let mut inv = invocation(
        Task::Build,
        Image::Release,
        workspace,
        target_dir,
        env,
        path,
    );
    inv.args = [
        "build".into(),
        "--manifest-path".into(),
        workspace.join("Cargo.toml").into_os_string(),
        "--package".into(),
        TOOL.into(),
        "--bin".into(),
        TOOL.into(),
        "--release".into(),
        "--locked".into(),
        "--target".into(),
        TOOL_TARGET.into(),
        "-Zbuild-std=std,panic_abort".into(),
        "--config".into(),
        format!("target.{TOOL_TARGET}.linker=\"{MINGW_GCC}\"").into(),
        "--target-dir".into(),
        target_dir.as_os_str().to_owned(),
    ]
    .into();
    inv
}

/// Where cargo leaves `iotallyctl.exe`.
#[must_use]
pub fn built_tool(target_dir: &Path) -> PathBuf {
    target_dir
        .join(TOOL_TARGET)
        .join("release")
        .join(format!("{TOOL}.exe"))
}

/// The `version` of the `[package]` table of a `Cargo.toml`.
#[must_use]
pub fn package_version(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "version"
        {
            return Some(value.trim().trim_matches('"').to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::path::Path;

    use super::{Task, invocation, must_remove, package_version};
    use crate::image::Image;

    #[test]
    fn rustup_and_redirecting_cargo_variables_are_removed() {
        for name in [
            "RUSTUP_TOOLCHAIN",
            "RUSTUP_HOME",
            "CARGO",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTFLAGS",
            "RUSTC_WRAPPER",
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
        ] {
            assert!(must_remove(name), "{name}");
        }
        for name in [
            "CARGO_HOME",
            "CARGO_NET_OFFLINE",
            "CARGO_TERM_COLOR",
            "PATH",
            "HOME",
            "CI",
        ] {
            assert!(!must_remove(name), "{name}");
        }
    }

    #[test]
    fn the_invocation_is_the_documented_recipe() {
        let env = [
            "RUSTUP_TOOLCHAIN".to_owned(),
            "HOME".to_owned(),
            "CARGO_TARGET_DIR".to_owned(),
        ];
        let inv = invocation(
            Task::Build,
            Image::Release,
            Path::new("/w"),
            Path::new("/w/target/cross"),
            env,
            Some(OsString::from("/root/.cargo/bin:/usr/bin")),
        );
        assert_eq!(inv.program, Path::new("/usr/bin/cargo"));
        let args: Vec<String> = inv
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = args.join(" ");
        for needle in [
            "build --manifest-path /w/Cargo.toml --package iotally --lib --profile release",
            "--no-default-features --target x86_64-pc-windows-msvc",
            "-Zbuild-std=core,alloc -Zbuild-std-features=compiler-builtins-mem",
            "--config target.x86_64-pc-windows-msvc.linker=\"/usr/bin/lld-link-22\"",
            "--target-dir /w/target/cross",
        ] {
            assert!(line.contains(needle), "{needle} not in {line}");
        }
        assert!(
            inv.set
                .contains(&("PATH".into(), "/usr/bin:/root/.cargo/bin:/usr/bin".into()))
        );
        assert!(inv.set.contains(&("RUSTC".into(), "/usr/bin/rustc".into())));
        assert!(inv.set.contains(&("RUSTC_BOOTSTRAP".into(), "1".into())));
        assert_eq!(inv.remove, ["RUSTUP_TOOLCHAIN", "CARGO_TARGET_DIR"]);
        assert!(!line.contains("--features"));
    }

    #[test]
    fn clippy_denies_warnings_with_the_same_recipe() {
        let build = invocation(
            Task::Build,
            Image::Release,
            Path::new("/w"),
            Path::new("/t"),
            [],
            None,
        );
        let clippy = invocation(
            Task::Clippy,
            Image::Release,
            Path::new("/w"),
            Path::new("/t"),
            [],
            None,
        );
        assert_eq!(build.args[0], "build");
        assert_eq!(clippy.args[0], "clippy");
        assert_eq!(clippy.args[1..build.args.len()], build.args[1..]);
        assert_eq!(clippy.args[build.args.len()..], ["--", "-D", "warnings"]);
        assert_eq!(clippy.set, build.set);
    }

    #[test]
    fn the_other_images_differ_in_profile_and_features_only() {
        let line = |image| {
            let inv = invocation(
                Task::Build,
                image,
                Path::new("/w"),
                Path::new("/t"),
                [],
                None,
            );
            inv.args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let release = line(Image::Release);
        assert_eq!(
            line(Image::DebugAssertions),
            release.replace("--profile release", "--profile release-debug-assertions")
        );
        assert_eq!(
            line(Image::Broken),
            format!("{release} --features broken-leak-context,broken-hold-push-lock")
        );
    }

    #[test]
    fn the_tool_is_built_for_windows_gnu_with_the_same_environment() {
        let driver = invocation(
            Task::Build,
            Image::Release,
            Path::new("/w"),
            Path::new("/t"),
            [],
            None,
        );
        let tool = super::tool_invocation(Path::new("/w"), Path::new("/t2"), [], None);
        let line: Vec<String> = tool
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = line.join(" ");
        for needle in [
            "build --manifest-path /w/Cargo.toml --package iotallyctl --bin iotallyctl --release",
            "--target x86_64-pc-windows-gnu -Zbuild-std=std,panic_abort",
            "linker=\"/usr/bin/x86_64-w64-mingw32-gcc\"",
            "--target-dir /t2",
        ] {
            assert!(line.contains(needle), "{needle} not in {line}");
        }
        assert_eq!(tool.set, driver.set);
        assert_eq!(
            super::built_tool(Path::new("/t2")),
            Path::new("/t2/x86_64-pc-windows-gnu/release/iotallyctl.exe")
        );
    }

    #[test]
    fn the_package_version_is_read_from_the_package_table() {
        let manifest = "[workspace.package]\nversion = \"9.9.9\"\n\n[package]\nname = \"iotally\"\nversion = \"0.1.0\"\n";
        assert_eq!(package_version(manifest).as_deref(), Some("0.1.0"));
        assert_eq!(package_version("[workspace]\nmembers = []\n"), None);
    }
}
