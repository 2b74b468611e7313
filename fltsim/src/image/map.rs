//! Mapping an image into the process (x86-64 Linux): reserve `SizeOfImage` bytes, copy the headers
//! and sections to their RVAs, apply the base relocations, fill the import address table, then
//! protect every section as its characteristics say. What the Windows loader does for a driver
//! ("PE Format": "Base Relocations", "The Import Address Table"), minus everything a kernel image
//! cannot use (TLS, delay loads, forwarders).

use std::ffi::c_void;
use std::ptr::NonNull;

use super::ImageError;
use super::pe::{Layout, Protection};

/// The page size the image's sections must be aligned to for per-section protection.
const PAGE: usize = 4096;

/// Rounds `size` up to whole pages.
const fn pages(size: usize) -> usize {
    size.div_ceil(PAGE) * PAGE
}

/// A mapped image; unmapped on drop.
pub(crate) struct Mapping {
    base: NonNull<u8>,
    size: usize,
}

// SAFETY: the mapping is plain memory owned by this value; the image code in it runs on whatever
// thread calls it, as driver code does.
unsafe impl Send for Mapping {}

/// The `PROT_*` bits of a section's protection.
fn prot(protection: Protection) -> i32 {
    let mut prot = libc::PROT_NONE;
    if protection.read {
        prot |= libc::PROT_READ;
    }
    if protection.write {
        prot |= libc::PROT_WRITE;
    }
    if protection.execute {
        prot |= libc::PROT_EXEC;
    }
    prot
}

/// The last OS error, for a failed system call named `call`.
fn os_error(call: &str) -> ImageError {
    ImageError::Map(format!("{call}: {}", std::io::Error::last_os_error()))
}

impl Mapping {
    /// Maps `layout`, binding each import with `resolve(module, routine)`.
    ///
    /// # Errors
    /// [`ImageError::UnknownImport`] for an import `resolve` does not know (naming it),
    /// [`ImageError::Malformed`] for sections not aligned to pages, [`ImageError::Map`] when the
    /// OS refuses the mapping.
    pub(crate) fn new(
        layout: &Layout<'_>,
        resolve: impl Fn(&str, &str) -> Option<usize>,
    ) -> Result<Self, ImageError> {
        if let Some(section) = layout
            .sections
            .iter()
            .find(|s| !(s.rva as usize).is_multiple_of(PAGE))
        {
            return Err(ImageError::Malformed(format!(
                "section {} starts at RVA {:#x}, not on a page boundary",
                section.name, section.rva
            )));
        }
        let size = pages(layout.size);
        // SAFETY: an anonymous private mapping at an address the kernel chooses; no file, no
        // existing memory is affected.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(os_error("mmap"));
        }
        let base = NonNull::new(address.cast::<u8>()).ok_or_else(|| os_error("mmap"))?;
        let mapping = Self { base, size };
        mapping.copy(0, layout.headers);
        for section in &layout.sections {
            mapping.copy(section.rva, section.data);
        }
        let delta = (base.as_ptr().addr() as u64).wrapping_sub(layout.preferred_base);
        for &rva in &layout.relocations {
            let value = mapping.read_u64(rva);
            mapping.write_u64(rva, value.wrapping_add(delta));
        }
        for import in &layout.imports {
            let Some(address) = resolve(&import.module, &import.name) else {
                return Err(ImageError::UnknownImport {
                    module: import.module.clone(),
                    name: import.name.clone(),
                });
            };
            mapping.write_u64(import.slot, address as u64);
        }
        mapping.protect(0, layout.headers.len(), libc::PROT_READ)?;
        for section in &layout.sections {
            mapping.protect(section.rva, section.size as usize, prot(section.protection))?;
        }
        Ok(mapping)
    }

    /// The address the image is mapped at.
    pub(crate) fn base(&self) -> usize {
        self.base.as_ptr().addr()
    }

    /// Bytes of address space the mapping spans.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Makes every page inaccessible: the driver is unloaded, so any later call into it faults
    /// (as a call into an unloaded driver bugchecks on Windows).
    pub(crate) fn retire(&self) {
        // Nothing to report if this fails: the image then stays callable, which only loses a check.
        let _ = self.protect(0, self.size, libc::PROT_NONE);
    }

    /// A pointer to the byte at `rva`.
    fn at(&self, rva: u32) -> *mut u8 {
        self.base.as_ptr().wrapping_add(rva as usize)
    }

    /// Copies `bytes` to `rva`; the layout keeps them inside the mapping.
    fn copy(&self, rva: u32, bytes: &[u8]) {
        assert!(
            rva as usize + bytes.len() <= self.size,
            "fltsim: image loader: {} bytes at RVA {rva:#x} exceed the image",
            bytes.len()
        );
        // SAFETY: the destination lies inside the writable mapping (checked above) and cannot
        // overlap `bytes`, which is the caller's file buffer.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.at(rva), bytes.len()) };
    }

    /// The 8 bytes at `rva` (inside the mapping: the layout checked relocations and slots).
    fn read_u64(&self, rva: u32) -> u64 {
        assert!(rva as usize + 8 <= self.size);
        // SAFETY: inside the readable mapping (checked above); unaligned reads are allowed.
        unsafe { self.at(rva).cast::<u64>().read_unaligned() }
    }

    /// Writes 8 bytes at `rva` (inside the mapping, still writable while the image is built).
    fn write_u64(&self, rva: u32, value: u64) {
        assert!(rva as usize + 8 <= self.size);
        // SAFETY: inside the mapping (checked above), which is writable until `protect` runs.
        unsafe { self.at(rva).cast::<u64>().write_unaligned(value) };
    }

    /// Sets the protection of the pages covering `[rva, rva + length)`.
    fn protect(&self, rva: u32, length: usize, prot: i32) -> Result<(), ImageError> {
        let length = pages(length).min(self.size - rva as usize);
        if length == 0 {
            return Ok(());
        }
        // SAFETY: page-aligned range inside this mapping (RVAs of sections are page-aligned,
        // checked in `new`); changing its protection affects no other memory.
        let status = unsafe { libc::mprotect(self.at(rva).cast::<c_void>(), length, prot) };
        if status == 0 {
            Ok(())
        } else {
            Err(os_error("mprotect"))
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping this value made, unmapped once; nothing refers to it any more (the
        // session that ran its code has ended).
        unsafe { libc::munmap(self.base.as_ptr().cast::<c_void>(), self.size) };
    }
}
