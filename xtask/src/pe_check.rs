//! Checks that a PE32+ image is a loadable x64 kernel-mode driver, and describes it.
//!
//! [`verify`] parses the image with the `object` crate and collects every rule it breaks (see
//! [`Failure`]) together with a [`Report`] of what it found: sizes, sections, imports, exports.
//! The rules: machine AMD64, subsystem NATIVE, entry point at the `DriverEntry` export, imports only
//! from kernel modules, no `__chkstk`, no writable and executable section, no TLS, a non-zero PE
//! checksum that matches the file, and no tail jump to a `FLTMGR.SYS` import ([`tail_jumps`]).

use std::fmt;

use object::LittleEndian as LE;
use object::pe;
use object::read::pe::{ExportTarget, ImageNtHeaders, ImageOptionalHeader, Import, PeFile64};

pub mod tail_jumps;

use tail_jumps::TailJump;

/// Offset of `CheckSum` in the optional header (the same for PE32 and PE32+).
const CHECKSUM_OFFSET_IN_OPTIONAL_HEADER: usize = 64;
/// Size of the `PE\0\0` signature plus the COFF file header that precede the optional header.
const SIGNATURE_AND_FILE_HEADER: usize = 4 + pe::IMAGE_SIZEOF_FILE_HEADER;

/// What a driver image is allowed and required to contain.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// Modules imports may come from, compared without regard to ASCII case.
    pub allowed_modules: &'a [&'a str],
    /// Name of the export the entry point must be.
    pub entry_export: &'a str,
    /// `(module, function)` pairs that must be imported; modules compared without regard to case.
    pub required_imports: &'a [(&'a str, &'a str)],
    /// Modules whose imports must never be the target of a tail jump.
    pub no_tail_jumps_to: &'a [&'a str],
}

/// The kernel modules a file-system minifilter may import from.
pub const KERNEL_MODULES: [&str; 3] = ["ntoskrnl.exe", "HAL.dll", "FLTMGR.SYS"];

impl Policy<'static> {
    /// Any x64 kernel-mode driver: imports from kernel modules only, entry point `DriverEntry`,
    /// nothing required.
    pub const KERNEL_DRIVER: Self = Policy {
        allowed_modules: &KERNEL_MODULES,
        entry_export: "DriverEntry",
        required_imports: &[],
        no_tail_jumps_to: &["FLTMGR.SYS"],
    };

    /// iotally itself: a kernel driver that registers, starts and unregisters a minifilter.
    pub const IOTALLY: Self = Policy {
        required_imports: &[
            ("FLTMGR.SYS", "FltRegisterFilter"),
            ("FLTMGR.SYS", "FltStartFiltering"),
            ("FLTMGR.SYS", "FltUnregisterFilter"),
        ],
        ..Self::KERNEL_DRIVER
    };
}

/// One section header of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Section name (up to eight bytes, lossily decoded).
    pub name: String,
    /// Size in memory.
    pub virtual_size: u32,
    /// Size in the file.
    pub raw_size: u32,
    /// `IMAGE_SCN_*` characteristics.
    pub characteristics: u32,
}

impl Section {
    /// Whether the section is mapped both writable and executable.
    #[must_use]
    pub fn is_writable_and_executable(&self) -> bool {
        let wx = pe::IMAGE_SCN_MEM_WRITE.0 | pe::IMAGE_SCN_MEM_EXECUTE.0;
        self.characteristics & wx == wx
    }

    /// Short flag summary such as `R-X code` or `RW- data discardable`.
    #[must_use]
    pub fn flags(&self) -> String {
        let c = self.characteristics;
        let bit = |flag: pe::SectionFlags, ch: char| if c & flag.0 != 0 { ch } else { '-' };
        let mut flags = format!(
            "{}{}{}",
            bit(pe::IMAGE_SCN_MEM_READ, 'R'),
            bit(pe::IMAGE_SCN_MEM_WRITE, 'W'),
            bit(pe::IMAGE_SCN_MEM_EXECUTE, 'X')
        );
        for (flag, word) in [
            (pe::IMAGE_SCN_CNT_CODE, " code"),
            (pe::IMAGE_SCN_CNT_INITIALIZED_DATA, " data"),
            (pe::IMAGE_SCN_CNT_UNINITIALIZED_DATA, " bss"),
            (pe::IMAGE_SCN_MEM_DISCARDABLE, " discardable"),
            (pe::IMAGE_SCN_MEM_NOT_PAGED, " nonpaged"),
        ] {
            if c & flag.0 != 0 {
                flags.push_str(word);
            }
        }
        flags
    }
}

/// The functions imported from one module, in import-table order (`#n` for an ordinal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleImports {
    /// Module name as written in the image.
    pub module: String,
    /// Imported function names.
    pub functions: Vec<String>,
}

/// What the verifier found in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// File size in bytes.
    pub size: usize,
    /// COFF machine field.
    pub machine: u16,
    /// Optional-header subsystem.
    pub subsystem: u16,
    /// Entry point RVA.
    pub entry_rva: u32,
    /// RVA of the entry export (e.g. `DriverEntry`), if the image exports it.
    pub entry_export_rva: Option<u32>,
    /// Checksum stored in the optional header.
    pub stored_checksum: u32,
    /// Checksum computed from the file.
    pub computed_checksum: u32,
    /// `IMAGE_DLLCHARACTERISTICS_*` flags.
    pub dll_characteristics: u16,
    /// Section headers.
    pub sections: Vec<Section>,
    /// Imports grouped by module.
    pub imports: Vec<ModuleImports>,
    /// Named exports and their RVAs.
    pub exports: Vec<(String, u32)>,
    /// Calls of the imports from the policy's `no_tail_jumps_to` modules, and the tail jumps to them.
    pub import_branches: tail_jumps::Scan,
}

/// A rule of [`Policy`] or of kernel images in general that the image breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The file is not a PE32+ image the parser understands.
    Parse(String),
    /// The machine is not `IMAGE_FILE_MACHINE_AMD64`.
    Machine(u16),
    /// The subsystem is not `IMAGE_SUBSYSTEM_NATIVE`.
    Subsystem(u16),
    /// The entry export does not exist.
    EntryExportMissing(String),
    /// The entry point is not the entry export.
    EntryPoint {
        /// Entry point RVA from the optional header.
        entry_rva: u32,
        /// RVA of the entry export.
        export_rva: u32,
    },
    /// An import from a module the policy does not allow.
    ForbiddenModule {
        /// The module.
        module: String,
        /// The function imported from it.
        function: String,
    },
    /// `__chkstk` is imported (a stack frame over 4 KiB somewhere).
    Chkstk(String),
    /// A required import is missing.
    MissingImport {
        /// The module it must come from.
        module: String,
        /// The function.
        function: String,
    },
    /// A section is writable and executable.
    WritableExecutable(String),
    /// The image has a TLS directory.
    Tls,
    /// The stored checksum is zero.
    ZeroChecksum,
    /// A tail jump to an import of a module in `no_tail_jumps_to`.
    TailJump(TailJump),
    /// The stored checksum does not match the file.
    ChecksumMismatch {
        /// Value in the optional header.
        stored: u32,
        /// Value computed from the file.
        computed: u32,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Parse(e) => write!(f, "not a PE32+ image: {e}"),
            Self::Machine(m) => write!(f, "machine is {m:#06x}, expected AMD64 (0x8664)"),
            Self::Subsystem(s) => write!(f, "subsystem is {s}, expected NATIVE (1)"),
            Self::EntryExportMissing(name) => write!(f, "no export named {name}"),
            Self::EntryPoint {
                entry_rva,
                export_rva,
            } => write!(
                f,
                "entry point is RVA {entry_rva:#x}, but the entry export is at {export_rva:#x}"
            ),
            Self::ForbiddenModule { module, function } => {
                write!(
                    f,
                    "imports {function} from {module}, which is not a kernel module"
                )
            }
            Self::Chkstk(module) => write!(
                f,
                "imports __chkstk from {module}: some stack frame is over 4 KiB"
            ),
            Self::MissingImport { module, function } => {
                write!(f, "does not import {function} from {module}")
            }
            Self::WritableExecutable(name) => {
                write!(f, "section {name} is both writable and executable")
            }
            Self::Tls => write!(f, "has a TLS directory (kernel images cannot use TLS)"),
            Self::ZeroChecksum => write!(f, "PE checksum is zero (link with /RELEASE)"),
            Self::TailJump(jump) => write!(
                f,
                "{jump}: Filter Verifier cannot tell the caller of a Filter Manager routine reached \
                 by a jump and reports leaked references (call it through iotally's `flt` module)"
            ),
            Self::ChecksumMismatch { stored, computed } => write!(
                f,
                "PE checksum is {stored:#010x}, but the file sums to {computed:#010x}"
            ),
        }
    }
}

/// The outcome of [`verify`]: everything found, and every rule broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// What the image contains; `None` if it could not be parsed.
    pub report: Option<Report>,
    /// Rules broken; empty when the image passes.
    pub failures: Vec<Failure>,
}

impl Verification {
    /// Whether the image passed every check.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Offset in the file of the optional header's `CheckSum` field, if the headers are there.
#[must_use]
pub fn checksum_offset(image: &[u8]) -> Option<usize> {
    let e_lfanew = image.get(0x3c..0x40)?;
    let e_lfanew = u32::from_le_bytes(e_lfanew.try_into().ok()?);
    let offset = usize::try_from(e_lfanew).ok()?
        + SIGNATURE_AND_FILE_HEADER
        + CHECKSUM_OFFSET_IN_OPTIONAL_HEADER;
    (offset + 4 <= image.len()).then_some(offset)
}

/// The PE image checksum (as `CheckSumMappedFile` computes it) of `image`, treating the four bytes
/// at `checksum_offset` as zero: a ones'-complement-style sum of 16-bit little-endian words with
/// carries folded back, plus the file length.
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the folded sum fits 16 bits, and the checksum adds the length modulo 2^32 by definition"
)]
pub fn pe_checksum(image: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u64 = 0;
    for (index, chunk) in image.chunks(2).enumerate() {
        let offset = index * 2;
        if (checksum_offset..checksum_offset + 4).contains(&offset) {
            continue;
        }
        let word = u16::from_le_bytes([chunk[0], chunk.get(1).copied().unwrap_or(0)]);
        sum += u64::from(word);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    // The file length is added modulo 2^32, as the Windows routine does.
    (sum as u32).wrapping_add(image.len() as u32)
}

/// Verifies `image` against `policy`, collecting a report and every failed check.
#[must_use]
pub fn verify(image: &[u8], policy: &Policy<'_>) -> Verification {
    match inspect(image, policy) {
        Ok(report) => {
            let failures = check(&report, image, policy);
            Verification {
                report: Some(report),
                failures,
            }
        }
        Err(e) => Verification {
            report: None,
            failures: vec![Failure::Parse(e)],
        },
    }
}

/// Parses the image into a [`Report`] without judging it.
fn inspect(image: &[u8], policy: &Policy<'_>) -> Result<Report, String> {
    let entry_export = policy.entry_export;
    let file = PeFile64::parse(image).map_err(|e| e.to_string())?;
    let nt = file.nt_headers();
    let optional = nt.optional_header();

    let sections = file
        .section_table()
        .iter()
        .map(|header| Section {
            name: String::from_utf8_lossy(trim_nul(&header.name)).into_owned(),
            virtual_size: header.virtual_size.get(LE),
            raw_size: header.size_of_raw_data.get(LE),
            characteristics: header.characteristics.get(LE).0,
        })
        .collect();

    let exports = match file.export_table().map_err(|e| e.to_string())? {
        Some(table) => table
            .exports()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter_map(|export| match (export.name, export.target) {
                (Some(name), ExportTarget::Address(rva)) => {
                    Some((String::from_utf8_lossy(name).into_owned(), rva))
                }
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    let entry_export_rva: Option<u32> = exports
        .iter()
        .find(|(name, _)| name == entry_export)
        .map(|&(_, rva)| rva);

    let offset = checksum_offset(image).ok_or("headers end before the checksum field")?;
    Ok(Report {
        size: image.len(),
        machine: nt.file_header().machine.get(LE).0,
        subsystem: optional.subsystem().0,
        entry_rva: optional.address_of_entry_point(),
        entry_export_rva,
        stored_checksum: optional.check_sum(),
        computed_checksum: pe_checksum(image, offset),
        dll_characteristics: optional.dll_characteristics().0,
        sections,
        imports: imports(&file)?,
        exports,
        import_branches: tail_jumps::scan(image, policy.no_tail_jumps_to)?,
    })
}

/// The `(module, function)` imports of a 64-bit console program (`iotallyctl.exe`).
///
/// # Errors
/// If `image` is not a PE32+ image of the Windows console subsystem for AMD64.
pub fn tool_imports(image: &[u8]) -> Result<Vec<(String, String)>, String> {
    let file = PeFile64::parse(image).map_err(|e| e.to_string())?;
    let headers = file.nt_headers();
    if headers.file_header.machine.get(LE) != pe::IMAGE_FILE_MACHINE_AMD64 {
        return Err("not an AMD64 image".into());
    }
    if headers.optional_header().subsystem() != pe::IMAGE_SUBSYSTEM_WINDOWS_CUI {
        return Err("not a console program".into());
    }
    Ok(imports(&file)?
        .into_iter()
        .flat_map(|m| {
            let module = m.module;
            m.functions.into_iter().map(move |f| (module.clone(), f))
        })
        .collect())
}

/// Reads the import table, grouped by module.
fn imports(file: &PeFile64<'_>) -> Result<Vec<ModuleImports>, String> {
    let mut modules = Vec::new();
    let Some(table) = file.import_table().map_err(|e| e.to_string())? else {
        return Ok(modules);
    };
    let mut descriptors = table.descriptors().map_err(|e| e.to_string())?;
    while let Some(descriptor) = descriptors.next().map_err(|e| e.to_string())? {
        let module = table
            .name(descriptor.name.get(LE))
            .map_err(|e| e.to_string())?;
        let lookup = match descriptor.original_first_thunk.get(LE) {
            0 => descriptor.first_thunk.get(LE),
            rva => rva,
        };
        let mut thunks = table.thunks(lookup).map_err(|e| e.to_string())?;
        let mut functions = Vec::new();
        while let Some(thunk) = thunks
            .next::<pe::ImageNtHeaders64>()
            .map_err(|e| e.to_string())?
        {
            let import = table
                .import::<pe::ImageNtHeaders64>(thunk)
                .map_err(|e| e.to_string())?;
            functions.push(match import {
                Import::Name(_hint, name) => String::from_utf8_lossy(name).into_owned(),
                Import::Ordinal(ordinal) => format!("#{ordinal}"),
            });
        }
        modules.push(ModuleImports {
            module: String::from_utf8_lossy(module).into_owned(),
            functions,
        });
    }
    Ok(modules)
}

/// Applies the policy and the kernel-image rules to a parsed report.
fn check(report: &Report, image: &[u8], policy: &Policy<'_>) -> Vec<Failure> {
    let mut failures = Vec::new();
    if report.machine != pe::IMAGE_FILE_MACHINE_AMD64.0 {
        failures.push(Failure::Machine(report.machine));
    }
    if report.subsystem != pe::IMAGE_SUBSYSTEM_NATIVE.0 {
        failures.push(Failure::Subsystem(report.subsystem));
    }
    match report.entry_export_rva {
        None => failures.push(Failure::EntryExportMissing(policy.entry_export.to_owned())),
        Some(export_rva) if export_rva != report.entry_rva => {
            failures.push(Failure::EntryPoint {
                entry_rva: report.entry_rva,
                export_rva,
            });
        }
        Some(_) => {}
    }
    for imported in &report.imports {
        let allowed = policy
            .allowed_modules
            .iter()
            .any(|module| module.eq_ignore_ascii_case(&imported.module));
        for function in &imported.functions {
            if !allowed {
                failures.push(Failure::ForbiddenModule {
                    module: imported.module.clone(),
                    function: function.clone(),
                });
            }
            if function == "__chkstk" {
                failures.push(Failure::Chkstk(imported.module.clone()));
            }
        }
    }
    for &(module, function) in policy.required_imports {
        let present = report.imports.iter().any(|imported| {
            imported.module.eq_ignore_ascii_case(module)
                && imported.functions.iter().any(|f| f == function)
        });
        if !present {
            failures.push(Failure::MissingImport {
                module: module.to_owned(),
                function: function.to_owned(),
            });
        }
    }
    for section in &report.sections {
        if section.is_writable_and_executable() {
            failures.push(Failure::WritableExecutable(section.name.clone()));
        }
    }
    if has_tls(image) {
        failures.push(Failure::Tls);
    }
    failures.extend(
        report
            .import_branches
            .tail_jumps
            .iter()
            .cloned()
            .map(Failure::TailJump),
    );
    if report.stored_checksum == 0 {
        failures.push(Failure::ZeroChecksum);
    } else if report.stored_checksum != report.computed_checksum {
        failures.push(Failure::ChecksumMismatch {
            stored: report.stored_checksum,
            computed: report.computed_checksum,
        });
    }
    failures
}

/// Whether the TLS data directory is present (non-zero address or size).
fn has_tls(image: &[u8]) -> bool {
    PeFile64::parse(image).is_ok_and(|file| {
        file.data_directory(pe::IMAGE_DIRECTORY_ENTRY_TLS)
            .is_some_and(|dir| dir.virtual_address.get(LE) != 0 || dir.size.get(LE) != 0)
    })
}

fn trim_nul(name: &[u8]) -> &[u8] {
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    &name[..end]
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let checksum = if self.stored_checksum == self.computed_checksum {
            "matches the file"
        } else {
            "DOES NOT match the file"
        };
        writeln!(f, "size:      {} bytes", self.size)?;
        writeln!(
            f,
            "machine:   {:#06x}{}",
            self.machine,
            if self.machine == pe::IMAGE_FILE_MACHINE_AMD64.0 {
                " (AMD64)"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "subsystem: {}{}",
            self.subsystem,
            if self.subsystem == pe::IMAGE_SUBSYSTEM_NATIVE.0 {
                " (NATIVE)"
            } else {
                ""
            }
        )?;
        let entry_name = match self.entry_export_rva {
            Some(rva) if rva == self.entry_rva => " (the entry export)",
            _ => "",
        };
        writeln!(f, "entry:     RVA {:#x}{entry_name}", self.entry_rva)?;
        writeln!(f, "checksum:  {:#010x}, {checksum}", self.stored_checksum)?;
        writeln!(f, "dll flags: {:#06x}", self.dll_characteristics)?;
        writeln!(f, "sections:")?;
        for s in &self.sections {
            writeln!(
                f,
                "  {:<8} {:>8} bytes in memory {:>8} in file  {}",
                s.name,
                s.virtual_size,
                s.raw_size,
                s.flags()
            )?;
        }
        writeln!(f, "imports:")?;
        for m in &self.imports {
            writeln!(
                f,
                "  {} ({}): {}",
                m.module,
                m.functions.len(),
                m.functions.join(", ")
            )?;
        }
        let exports: Vec<&str> = self.exports.iter().map(|(name, _)| name.as_str()).collect();
        writeln!(f, "exports:   {}", exports.join(", "))?;
        write!(
            f,
            "branches: {} call site(s) of {} imports, {} tail jump(s)",
            self.import_branches.calls,
            self.import_branches.modules.join(", "),
            self.import_branches.tail_jumps.len()
        )
    }
}

#[cfg(test)]
mod tests;
