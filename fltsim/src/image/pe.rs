//! What the loader needs from a PE32+ driver image, read with the `object` crate: where each part
//! goes in memory, which 64-bit addresses to relocate, and which imports to bind.
//!
//! Parsing is separate from mapping so that it runs (and is tested) on every host; mapping is
//! x86-64 Linux only (`map.rs`). The layout rules followed are those of Microsoft's "PE Format"
//! page: sections are placed at their RVA inside `SizeOfImage` bytes, the headers at offset 0,
//! base relocations of type `IMAGE_REL_BASED_DIR64` add the load delta to a 64-bit address, and
//! each import descriptor's lookup table names the routine whose address goes into the matching
//! slot of its import address table.

use object::LittleEndian as LE;
use object::pe;
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, Import, PeFile64};

use super::ImageError;

/// Memory protection of one section, from its `IMAGE_SCN_MEM_*` characteristics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Protection {
    /// `IMAGE_SCN_MEM_READ`.
    pub read: bool,
    /// `IMAGE_SCN_MEM_WRITE`.
    pub write: bool,
    /// `IMAGE_SCN_MEM_EXECUTE`.
    pub execute: bool,
}

impl Protection {
    /// The protection a section's characteristics ask for.
    fn of(characteristics: u32) -> Self {
        Self {
            read: characteristics & pe::IMAGE_SCN_MEM_READ.0 != 0,
            write: characteristics & pe::IMAGE_SCN_MEM_WRITE.0 != 0,
            execute: characteristics & pe::IMAGE_SCN_MEM_EXECUTE.0 != 0,
        }
    }
}

/// One section: its place in memory, the bytes the file gives it (the rest is zero) and its
/// protection.
#[derive(Clone, Debug)]
pub(crate) struct Section<'a> {
    /// Section name, e.g. `.text`.
    pub name: String,
    /// RVA of the first byte.
    pub rva: u32,
    /// Size in memory (`VirtualSize`).
    pub size: u32,
    /// Initialized data: the first `min(SizeOfRawData, VirtualSize)` bytes.
    pub data: &'a [u8],
    /// How the section is protected once the image is loaded.
    pub protection: Protection,
}

/// One import: the routine `name` of `module`, whose address goes into the 8-byte slot at `slot`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ImportSlot {
    /// The module the image names, as written (e.g. `fltmgr.sys`).
    pub module: String,
    /// The routine.
    pub name: String,
    /// RVA of its import address table entry.
    pub slot: u32,
}

/// Everything needed to map one image.
#[derive(Clone, Debug)]
pub(crate) struct Layout<'a> {
    /// `SizeOfImage`: bytes of address space the image occupies.
    pub size: usize,
    /// `ImageBase`: the address the image was linked for.
    pub preferred_base: u64,
    /// `AddressOfEntryPoint` (RVA of `DriverEntry`).
    pub entry: u32,
    /// The headers (`SizeOfHeaders` bytes), mapped read-only at RVA 0.
    pub headers: &'a [u8],
    /// The sections, in table order.
    pub sections: Vec<Section<'a>>,
    /// RVAs of the 64-bit addresses to relocate (`IMAGE_REL_BASED_DIR64`).
    pub relocations: Vec<u32>,
    /// The imports to bind.
    pub imports: Vec<ImportSlot>,
}

impl Layout<'_> {
    /// The executable sections' `[start, end)` RVA ranges.
    pub(crate) fn code_ranges(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.sections
            .iter()
            .filter(|s| s.protection.execute)
            .map(|s| (s.rva, s.rva + s.size))
    }
}

/// A parse failure as an [`ImageError::Malformed`].
fn malformed(what: impl std::fmt::Display) -> ImageError {
    ImageError::Malformed(what.to_string())
}

/// Reads the layout of an x64 PE32+ image.
///
/// # Errors
/// [`ImageError::Malformed`] for anything that is not a well-formed AMD64 PE32+ image (including
/// sections, relocations or import slots outside `SizeOfImage`, and relocation types other than
/// `DIR64` and padding), [`ImageError::OrdinalImport`] for an import by ordinal.
pub(crate) fn parse(data: &[u8]) -> Result<Layout<'_>, ImageError> {
    let file = PeFile64::parse(data).map_err(malformed)?;
    let nt = file.nt_headers();
    let machine = nt.file_header().machine.get(LE);
    if machine != pe::IMAGE_FILE_MACHINE_AMD64 {
        return Err(malformed(format!(
            "machine {:#06x}, not AMD64 (0x8664)",
            machine.0
        )));
    }
    let optional = nt.optional_header();
    let size = usize::try_from(optional.size_of_image()).map_err(malformed)?;
    let header_size = usize::try_from(optional.size_of_headers()).map_err(malformed)?;
    let headers = data
        .get(..header_size)
        .filter(|_| header_size <= size)
        .ok_or_else(|| malformed("SizeOfHeaders exceeds the file or the image"))?;
    let sections = sections(&file, data, size)?;
    let entry = optional.address_of_entry_point();
    if usize::try_from(entry).map_err(malformed)? >= size {
        return Err(malformed(format!(
            "entry point RVA {entry:#x} is outside the image"
        )));
    }
    Ok(Layout {
        size,
        preferred_base: optional.image_base(),
        entry,
        headers,
        relocations: relocations(&file, data, size)?,
        imports: imports(&file, size)?,
        sections,
    })
}

/// Whether `[rva, rva + length)` lies inside an image of `size` bytes.
fn inside(rva: u32, length: u32, size: usize) -> bool {
    u64::from(rva) + u64::from(length) <= size as u64
}

/// The section table.
fn sections<'a>(
    file: &PeFile64<'a>,
    data: &'a [u8],
    size: usize,
) -> Result<Vec<Section<'a>>, ImageError> {
    let mut sections = Vec::new();
    for header in file.section_table().iter() {
        let name = String::from_utf8_lossy(header.raw_name())
            .trim_end_matches('\0')
            .to_owned();
        let (rva, virtual_size) = header.pe_address_range();
        if !inside(rva, virtual_size, size) {
            return Err(malformed(format!(
                "section {name} ({virtual_size:#x} bytes at RVA {rva:#x}) lies outside SizeOfImage \
                 {size:#x}"
            )));
        }
        let bytes = header
            .pe_data(data)
            .map_err(|e| malformed(format!("section {name}: {e}")))?;
        sections.push(Section {
            name,
            rva,
            size: virtual_size,
            data: bytes,
            protection: Protection::of(header.characteristics.get(LE).0),
        });
    }
    Ok(sections)
}

/// The RVAs of the base relocations.
fn relocations(file: &PeFile64<'_>, data: &[u8], size: usize) -> Result<Vec<u32>, ImageError> {
    let mut found = Vec::new();
    let Some(blocks) = file
        .data_directories()
        .relocation_blocks(data, &file.section_table())
        .map_err(malformed)?
    else {
        return Ok(found);
    };
    for block in blocks {
        for relocation in block.map_err(malformed)? {
            match relocation.typ {
                pe::IMAGE_REL_BASED_ABSOLUTE => {}
                pe::IMAGE_REL_BASED_DIR64 if inside(relocation.virtual_address, 8, size) => {
                    found.push(relocation.virtual_address);
                }
                other => {
                    return Err(malformed(format!(
                        "base relocation of type {} at RVA {:#x} (only DIR64 inside the image is \
                         valid in an x64 image)",
                        other.0, relocation.virtual_address
                    )));
                }
            }
        }
    }
    Ok(found)
}

/// The imports, one slot per routine.
fn imports(file: &PeFile64<'_>, size: usize) -> Result<Vec<ImportSlot>, ImageError> {
    let mut found = Vec::new();
    let Some(table) = file.import_table().map_err(malformed)? else {
        return Ok(found);
    };
    let mut descriptors = table.descriptors().map_err(malformed)?;
    while let Some(descriptor) = descriptors.next().map_err(malformed)? {
        let module = table.name(descriptor.name.get(LE)).map_err(malformed)?;
        let module = String::from_utf8_lossy(module).into_owned();
        let address_table = descriptor.first_thunk.get(LE);
        let lookup = match descriptor.original_first_thunk.get(LE) {
            0 => address_table,
            rva => rva,
        };
        let mut thunks = table.thunks(lookup).map_err(malformed)?;
        let mut index = 0u32;
        while let Some(thunk) = thunks.next::<pe::ImageNtHeaders64>().map_err(malformed)? {
            let name = match table
                .import::<pe::ImageNtHeaders64>(thunk)
                .map_err(malformed)?
            {
                Import::Name(_hint, name) => String::from_utf8_lossy(name).into_owned(),
                Import::Ordinal(ordinal) => {
                    return Err(ImageError::OrdinalImport { module, ordinal });
                }
            };
            let slot = index
                .checked_mul(8)
                .and_then(|offset| address_table.checked_add(offset))
                .filter(|&slot| inside(slot, 8, size))
                .ok_or_else(|| {
                    malformed(format!(
                        "import address table slot of {module}!{name} lies outside the image"
                    ))
                })?;
            found.push(ImportSlot {
                module: module.clone(),
                name,
                slot,
            });
            index += 1;
        }
    }
    Ok(found)
}
