//! The driver images `cargo xtask` builds: which cargo profile and features each uses, and where
//! its build and its package go.
//!
//! - [`Image::Release`] (`cargo xtask package`): what users install.
//! - [`Image::DebugAssertions`] (`cargo xtask package --debug-assertions`): the same code with
//!   debug assertions (the driver's IRQL and push-lock checks) and overflow checks, for Driver
//!   Verifier runs. It is the release profile with those two switched on (profile
//!   `release-debug-assertions` in `Cargo.toml`): a dev-profile cross build does not link, because
//!   unoptimized code has stack frames over 4 KiB, which need `__chkstk`, and a kernel image has none.
//! - [`Image::Broken`] (`cargo xtask broken-image`): the release image with the deliberate bugs of
//!   the features `broken-leak-context` and `broken-hold-push-lock`, for the test that shows the
//!   end-to-end suite failing on them. Never shipped.

use std::path::{Path, PathBuf};

use crate::cross::{PACKAGE, TARGET};

/// One kind of driver image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image {
    /// The release image.
    Release,
    /// The release image with debug assertions and overflow checks.
    DebugAssertions,
    /// The release image with deliberate bugs.
    Broken,
}

impl Image {
    /// The cargo profile it is built with.
    #[must_use]
    pub const fn profile(self) -> &'static str {
        match self {
            Self::Release | Self::Broken => "release",
            Self::DebugAssertions => "release-debug-assertions",
        }
    }

    /// The crate features it is built with (on top of `--no-default-features`).
    #[must_use]
    pub const fn features(self) -> &'static [&'static str] {
        match self {
            Self::Release | Self::DebugAssertions => &[],
            Self::Broken => &["broken-leak-context", "broken-hold-push-lock"],
        }
    }

    /// Cargo's target directory for it, under the workspace's `target/`. The two shipped images
    /// share one (their profiles keep their outputs apart); the broken one has its own, so that its
    /// features never make cargo rebuild or overwrite the shipped image.
    #[must_use]
    pub fn target_dir(self, workspace: &Path) -> PathBuf {
        workspace.join("target").join(match self {
            Self::Release | Self::DebugAssertions => "cross",
            Self::Broken => "cross-broken",
        })
    }

    /// Where its package (`iotally.sys`, `iotally.inf`) is written.
    #[must_use]
    pub fn package_dir(self, workspace: &Path) -> PathBuf {
        workspace.join("target").join(match self {
            Self::Release => "package",
            Self::DebugAssertions => "package-debug-assertions",
            Self::Broken => "broken-image",
        })
    }

    /// The packaged driver file.
    #[must_use]
    pub fn sys(self, workspace: &Path) -> PathBuf {
        self.package_dir(workspace).join(format!("{PACKAGE}.sys"))
    }

    /// Where cargo leaves the linked driver in `target_dir` (cargo names a cdylib `.dll`).
    #[must_use]
    pub fn built_dll(self, target_dir: &Path) -> PathBuf {
        target_dir
            .join(TARGET)
            .join(self.profile())
            .join(format!("{PACKAGE}.dll"))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::Image;

    #[test]
    fn each_image_has_its_own_output_and_the_shipped_ones_share_a_build_dir() {
        let root = Path::new("/w");
        assert_eq!(
            Image::Release.sys(root),
            Path::new("/w/target/package/iotally.sys")
        );
        assert_eq!(
            Image::DebugAssertions.sys(root),
            Path::new("/w/target/package-debug-assertions/iotally.sys")
        );
        assert_eq!(
            Image::Broken.sys(root),
            Path::new("/w/target/broken-image/iotally.sys")
        );
        assert_eq!(
            Image::Release.target_dir(root),
            Image::DebugAssertions.target_dir(root)
        );
        assert_ne!(
            Image::Release.target_dir(root),
            Image::Broken.target_dir(root)
        );
        assert_eq!(
            Image::DebugAssertions.built_dll(Path::new("/t")),
            Path::new("/t/x86_64-pc-windows-msvc/release-debug-assertions/iotally.dll")
        );
        assert!(Image::Release.features().is_empty());
        assert_eq!(
            Image::Broken.features(),
            ["broken-leak-context", "broken-hold-push-lock"]
        );
    }
}
