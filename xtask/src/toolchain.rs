//! The Debian toolchain the cross build needs, how to tell whether it is installed, and the command
//! that installs it (the README, "On a fresh Linux machine").

use std::path::Path;

/// A Debian package and a file whose presence shows it is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    /// Debian package name.
    pub package: &'static str,
    /// A file the package installs.
    pub path: &'static str,
    /// For `cargo`/`rustc`: the program must report at least [`MIN_RUST`].
    pub versioned: bool,
}

/// Oldest Debian Rust (`major`, `minor`) the cross build is verified with.
pub const MIN_RUST: (u32, u32) = (1, 96);

/// Debian's cargo, which the cross build runs instead of rustup's.
pub const CARGO: &str = "/usr/bin/cargo";
/// Debian's rustc; `rustc --print sysroot` is `/usr`, where `rust-web-src` puts the library sources.
pub const RUSTC: &str = "/usr/bin/rustc";
/// LLVM's MSVC-compatible linker.
pub const LLD_LINK: &str = "/usr/bin/lld-link-22";
/// mingw-w64's GCC, the linker of `iotallyctl.exe` (`x86_64-pc-windows-gnu`: its C runtime and
/// import libraries come with it, where the MSVC target would need the Windows SDK's).
pub const MINGW_GCC: &str = "/usr/bin/x86_64-w64-mingw32-gcc";

/// Everything `cargo xtask package` and `cargo xtask clippy` need, in the order `apt-get` is given
/// them.
pub const REQUIREMENTS: [Requirement; 7] = [
    Requirement {
        package: "rustc-web",
        path: RUSTC,
        versioned: true,
    },
    Requirement {
        package: "cargo-web",
        path: CARGO,
        versioned: true,
    },
    Requirement {
        package: "rust-web-src",
        path: "/usr/lib/rustlib/src/rust/library/core/Cargo.toml",
        versioned: false,
    },
    Requirement {
        package: "lld-22",
        path: LLD_LINK,
        versioned: false,
    },
    Requirement {
        package: "llvm-22",
        path: "/usr/bin/llvm-objdump-22",
        versioned: false,
    },
    Requirement {
        package: "rust-web-clippy",
        path: "/usr/bin/cargo-clippy",
        versioned: false,
    },
    Requirement {
        package: "gcc-mingw-w64-x86-64",
        path: MINGW_GCC,
        versioned: false,
    },
];

/// `(major, minor)` from the first line of `cargo --version` or `rustc --version`
/// (`cargo 1.96.0 (30a34c682 2026-05-25)`).
#[must_use]
pub fn parse_version(output: &str) -> Option<(u32, u32)> {
    let version = output.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The packages to install: those whose file is missing, or whose program is older than
/// [`MIN_RUST`]. `exists` tells whether a path exists; `version_of` runs `<path> --version`.
pub fn missing_packages(
    exists: impl Fn(&Path) -> bool,
    version_of: impl Fn(&Path) -> Option<String>,
) -> Vec<&'static str> {
    REQUIREMENTS
        .iter()
        .filter(|req| {
            let path = Path::new(req.path);
            if !exists(path) {
                return true;
            }
            req.versioned
                && version_of(path)
                    .as_deref()
                    .and_then(parse_version)
                    .is_none_or(|version| version < MIN_RUST)
        })
        .map(|req| req.package)
        .collect()
}

/// The command line that installs `packages`, as printed for a user who is not root.
#[must_use]
pub fn apt_command(packages: &[&str]) -> String {
    format!(
        "apt-get update && apt-get install -y {}",
        packages.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{REQUIREMENTS, apt_command, missing_packages, parse_version};

    #[test]
    fn versions_parse_from_cargo_and_rustc_output() {
        assert_eq!(
            parse_version("cargo 1.96.0 (30a34c682 2026-05-25) (built from a source tarball)"),
            Some((1, 96))
        );
        assert_eq!(parse_version("rustc 1.100.2"), Some((1, 100)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn nothing_missing_when_all_present_and_new_enough() {
        let found = missing_packages(|_| true, |_| Some("cargo 1.96.0 (x)".into()));
        assert_eq!(found, Vec::<&str>::new());
    }

    #[test]
    fn absent_files_and_old_compilers_are_missing() {
        let found = missing_packages(
            |path| path != Path::new("/usr/bin/lld-link-22"),
            |path| {
                Some(
                    if path.ends_with("cargo") {
                        "cargo 0.66.0"
                    } else {
                        "rustc 1.96.1"
                    }
                    .into(),
                )
            },
        );
        assert_eq!(found, ["cargo-web", "lld-22"]);
        let all = missing_packages(|_| false, |_| None);
        assert_eq!(all.len(), REQUIREMENTS.len());
        assert_eq!(
            apt_command(&all),
            "apt-get update && apt-get install -y rustc-web cargo-web rust-web-src lld-22 llvm-22 rust-web-clippy gcc-mingw-w64-x86-64"
        );
    }

    #[test]
    fn a_compiler_that_cannot_report_its_version_is_missing() {
        let found = missing_packages(|_| true, |_| None);
        assert_eq!(found, ["rustc-web", "cargo-web"]);
    }
}
