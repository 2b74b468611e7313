//! Running a driver's shipped image (its cross-built `.sys`) in fltsim, on x86-64 Linux.
//!
//! [`crate::Sim::load_image`] does what the Windows loader does for a driver, then what the I/O
//! manager does: it parses the PE32+ image (with the `object` crate), maps its headers and
//! sections at their RVAs, applies the base relocations, binds every import to a win64 shim over
//! fltsim's own routine (`shims.rs`: an image names a routine fltsim does not provide, and loading
//! fails, naming it), protects each section as its characteristics say, and calls `DriverEntry`
//! with the Windows x64 calling convention. Every callback the image hands to fltsim lies in the
//! image's registered code range, so `abi.rs` calls it as win64 code.
//!
//! Image code may read and write CR8 (the IRQL on x64: the WDK's `KeGetCurrentIrql` and a debug
//! build's IRQL assertions); `cr8.rs` traps and emulates those accesses against the thread's
//! simulated IRQL. A bug check the image raises names its code and parameters, and, for the code
//! its panic handler uses ([`ImageOptions::panic_bugcheck`]), the panic's source location. Once the
//! driver unloads, its pages become inaccessible: a later call into it stops the process with
//! `DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS`, as it would bugcheck Windows.
//!
//! On other hosts [`SUPPORTED`] is false and loading fails with [`ImageError::Unsupported`].
#![cfg_attr(
    not(all(target_os = "linux", target_arch = "x86_64")),
    allow(dead_code, reason = "images are mapped on x86-64 Linux only")
)]

mod bugcheck;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod cr8;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod map;
mod pe;
mod shims;

use std::fmt;
use std::path::{Path, PathBuf};

/// Whether this host can run driver images (x86-64 Linux).
pub const SUPPORTED: bool = cfg!(all(target_os = "linux", target_arch = "x86_64"));

/// How to load an image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageOptions {
    panic_bugcheck: Option<u32>,
}

impl ImageOptions {
    /// Default options: no panic bug check code known.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            panic_bugcheck: None,
        }
    }

    /// The bug check code the driver's panic handler raises with `KeBugCheckEx(code, file, length,
    /// line, column)` (parameter 1 the address of the UTF-8 file name in the image, 2 its length):
    /// fltsim then prints the panic's location with the bug check.
    #[must_use]
    pub const fn panic_bugcheck(mut self, code: u32) -> Self {
        self.panic_bugcheck = Some(code);
        self
    }
}

/// Why an image could not be loaded.
#[derive(Debug)]
pub enum ImageError {
    /// This host cannot run x64 Windows code (only x86-64 Linux can).
    Unsupported,
    /// The file could not be read.
    Io(PathBuf, std::io::Error),
    /// Not a well-formed x64 PE32+ image (what is wrong).
    Malformed(String),
    /// An import by ordinal: kernel modules are imported by name.
    OrdinalImport {
        /// The module.
        module: String,
        /// The ordinal.
        ordinal: u16,
    },
    /// The image imports a routine fltsim does not provide.
    UnknownImport {
        /// The module the image names.
        module: String,
        /// The routine.
        name: String,
    },
    /// The host refused to map or protect the image.
    Map(String),
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported => write!(
                f,
                "fltsim: driver images run only on x86-64 Linux hosts (this one is {} {})",
                std::env::consts::OS,
                std::env::consts::ARCH
            ),
            Self::Io(path, error) => write!(f, "fltsim: cannot read {}: {error}", path.display()),
            Self::Malformed(what) => write!(f, "fltsim: not a loadable x64 driver image: {what}"),
            Self::OrdinalImport { module, ordinal } => write!(
                f,
                "fltsim: the image imports ordinal {ordinal} from {module}; only imports by name are \
                 supported"
            ),
            Self::UnknownImport { module, name } => write!(
                f,
                "fltsim: the image imports {module}!{name}, which fltsim does not provide (either \
                 Windows does not export it from {module}, or fltsim lacks the routine and its \
                 shim in src/image/shims.rs); the image cannot be loaded"
            ),
            Self::Map(what) => write!(f, "fltsim: cannot map the image: {what}"),
        }
    }
}

impl std::error::Error for ImageError {}

/// Every routine an image may import, as `(module, routine)`, in the order of the shim list.
#[must_use]
pub fn importable_routines() -> Vec<(&'static str, &'static str)> {
    shims::table()
        .into_iter()
        .map(|shim| (shim.module, shim.name))
        .collect()
}

/// An image mapped into the process for the session that loaded it.
pub(crate) struct LoadedImage {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    mapping: map::Mapping,
    entry: usize,
}

impl LoadedImage {
    /// Reads, maps, relocates, binds and protects the image at `path` for the driver `name`.
    ///
    /// # Errors
    /// See [`ImageError`].
    pub(crate) fn load(name: &str, path: &Path, options: ImageOptions) -> Result<Self, ImageError> {
        if !SUPPORTED {
            return Err(ImageError::Unsupported);
        }
        let bytes = std::fs::read(path).map_err(|e| ImageError::Io(path.to_owned(), e))?;
        let layout = pe::parse(&bytes)?;
        Self::map(name, &layout, options)
    }

    /// Maps a parsed image.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    fn map(name: &str, layout: &pe::Layout<'_>, options: ImageOptions) -> Result<Self, ImageError> {
        let table = shims::table();
        let mapping = map::Mapping::new(layout, |module, routine| {
            shims::resolve(&table, module, routine)
        })?;
        let base = mapping.base();
        cr8::install();
        for (start, end) in layout.code_ranges() {
            cr8::register(base + start as usize, base + end as usize, false);
        }
        crate::abi::register_image_code(base, base + mapping.size());
        bugcheck::set(Some(bugcheck::Decoder {
            name: name.to_owned(),
            readable: layout
                .sections
                .iter()
                .filter(|s| s.protection.read && !s.protection.write)
                .map(|s| (base + s.rva as usize, base + (s.rva + s.size) as usize))
                .collect(),
            panic_code: options.panic_bugcheck,
        }));
        Ok(Self {
            entry: base + layout.entry as usize,
            mapping,
        })
    }

    /// Other hosts never get here ([`SUPPORTED`] is false).
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    fn map(_: &str, _: &pe::Layout<'_>, _: ImageOptions) -> Result<Self, ImageError> {
        Err(ImageError::Unsupported)
    }

    /// The address of the image's entry point (`DriverEntry`).
    pub(crate) fn entry(&self) -> usize {
        self.entry
    }

    /// The driver is unloaded: makes the image inaccessible, so that any later call into it is
    /// reported as a call into an unloaded driver.
    pub(crate) fn retire(&self) {
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        {
            let (base, end) = (
                self.mapping.base(),
                self.mapping.base() + self.mapping.size(),
            );
            cr8::unregister(base, end);
            cr8::register(base, end, true);
            self.mapping.retire();
        }
    }
}

impl Drop for LoadedImage {
    fn drop(&mut self) {
        bugcheck::set(None);
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        {
            let base = self.mapping.base();
            crate::abi::unregister_image_code(base);
            cr8::unregister(base, base + self.mapping.size());
        }
    }
}
