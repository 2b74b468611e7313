//! The checks, each shown to pass on a well-formed driver image and to fail on an image that breaks
//! exactly that rule. Images are built in memory with `object::write::pe`.

use object::pe;
use object::write::pe::{NtHeaders, Writer};

use super::{Failure, Policy, checksum_offset, pe_checksum, tail_jumps, verify};

/// Everything the test images vary in.
#[derive(Clone)]
struct Spec {
    machine: pe::Machine,
    subsystem: pe::Subsystem,
    imports: Vec<(&'static str, Vec<&'static str>)>,
    /// Exports as (name, offset into `.text`).
    exports: Vec<(&'static str, u32)>,
    /// Entry point as an offset into `.text`.
    entry_offset: u32,
    /// Add a section that is readable, writable and executable.
    wx_section: bool,
    /// Point the TLS data directory somewhere.
    tls: bool,
    /// Store the correct checksum (otherwise leave it zero).
    checksum: bool,
    /// The `.text` section's bytes, given where it and the import address table entries are
    /// (default: `ret` instructions).
    code: fn(&Code) -> Vec<u8>,
}

/// Where things are when the test image's code is assembled.
struct Code {
    /// RVA of `.text`.
    text: u32,
    /// RVA of each import's address table entry, by function name.
    slots: std::collections::HashMap<&'static str, u32>,
}

impl Code {
    fn slot(&self, function: &str) -> u32 {
        self.slots[function]
    }
}

/// Size of the test images' `.text`.
const TEXT_SIZE: usize = 0x100;

fn rets(_: &Code) -> Vec<u8> {
    vec![0xc3; TEXT_SIZE]
}

impl Spec {
    /// A minimal, valid minifilter image.
    fn good() -> Self {
        Spec {
            machine: pe::IMAGE_FILE_MACHINE_AMD64,
            subsystem: pe::IMAGE_SUBSYSTEM_NATIVE,
            imports: vec![
                ("ntoskrnl.exe", vec!["ExAllocatePool2", "ExFreePoolWithTag"]),
                (
                    "fltmgr.sys",
                    vec![
                        "FltRegisterFilter",
                        "FltStartFiltering",
                        "FltUnregisterFilter",
                    ],
                ),
            ],
            exports: vec![("DriverEntry", 0x10)],
            entry_offset: 0x10,
            wx_section: false,
            tls: false,
            checksum: true,
            code: rets,
        }
    }
}

fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, value: u64) {
    buf[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn rva(base: u32, offset: usize) -> u32 {
    base + u32::try_from(offset).unwrap()
}

/// Builds `.rdata` for a section at RVA `base`: import directory (descriptors, lookup and address
/// tables, hint/name entries, module names) then export directory. Returns the bytes and the
/// (offset, size) of each directory.
/// The import directory's bytes, its and the export directory's (offset, size), and the RVA of each
/// import's address table entry.
type Rdata = (
    Vec<u8>,
    (usize, usize),
    (usize, usize),
    std::collections::HashMap<&'static str, u32>,
);

fn rdata(base: u32, text_rva: u32, spec: &Spec) -> Rdata {
    let mut slots = std::collections::HashMap::new();
    let mut out = vec![0u8; 20 * (spec.imports.len() + 1)];
    for (index, (module, functions)) in spec.imports.iter().enumerate() {
        let lookup = out.len();
        out.resize(lookup + 8 * (functions.len() + 1), 0);
        let address = out.len();
        out.resize(address + 8 * (functions.len() + 1), 0);
        for (slot, function) in functions.iter().enumerate() {
            let hint_name = out.len();
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(function.as_bytes());
            out.push(0);
            if !out.len().is_multiple_of(2) {
                out.push(0);
            }
            let target = u64::from(rva(base, hint_name));
            put_u64(&mut out, lookup + 8 * slot, target);
            put_u64(&mut out, address + 8 * slot, target);
            slots.insert(*function, rva(base, address + 8 * slot));
        }
        let name = out.len();
        out.extend_from_slice(module.as_bytes());
        out.push(0);
        let descriptor = 20 * index;
        put_u32(&mut out, descriptor, rva(base, lookup));
        put_u32(&mut out, descriptor + 12, rva(base, name));
        put_u32(&mut out, descriptor + 16, rva(base, address));
    }
    let import_dir = (0, out.len());
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }

    let export_start = out.len();
    let mut exports = spec.exports.clone();
    exports.sort_by_key(|&(name, _)| name);
    let count = exports.len();
    out.resize(export_start + 40, 0);
    let functions = out.len();
    out.resize(functions + 4 * count, 0);
    let names = out.len();
    out.resize(names + 4 * count, 0);
    let ordinals = out.len();
    out.resize(ordinals + 2 * count, 0);
    let dll_name = out.len();
    out.extend_from_slice(b"test.sys\0");
    for (index, (name, offset)) in exports.iter().enumerate() {
        put_u32(&mut out, functions + 4 * index, text_rva + offset);
        let name_at = out.len();
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        put_u32(&mut out, names + 4 * index, rva(base, name_at));
        let ordinal = u16::try_from(index).unwrap().to_le_bytes();
        out[ordinals + 2 * index..ordinals + 2 * index + 2].copy_from_slice(&ordinal);
    }
    let count = u32::try_from(count).unwrap();
    put_u32(&mut out, export_start + 12, rva(base, dll_name));
    put_u32(&mut out, export_start + 16, 1);
    put_u32(&mut out, export_start + 20, count);
    put_u32(&mut out, export_start + 24, count);
    put_u32(&mut out, export_start + 28, rva(base, functions));
    put_u32(&mut out, export_start + 32, rva(base, names));
    put_u32(&mut out, export_start + 36, rva(base, ordinals));
    let export_dir = (export_start, out.len() - export_start);
    (out, import_dir, export_dir, slots)
}

/// Builds a PE32+ image from `spec`.
fn build(spec: &Spec) -> Vec<u8> {
    let text_len = u32::try_from(TEXT_SIZE).unwrap();
    let mut image = Vec::new();
    let mut writer = Writer::new(true, 0x1000, 0x200, &mut image);
    writer.reserve_dos_header_and_stub();
    writer.reserve_nt_headers(pe::IMAGE_NUMBEROF_DIRECTORY_ENTRIES);
    writer.reserve_section_headers(if spec.wx_section { 3 } else { 2 });
    let text_range = writer.reserve_text_section(text_len);
    let rdata_len = rdata(0, 0, spec).0.len();
    let rdata_range = writer.reserve_rdata_section(u32::try_from(rdata_len).unwrap());
    let wx_range = spec.wx_section.then(|| {
        writer.reserve_section(
            *b".wx\0\0\0\0\0",
            pe::IMAGE_SCN_CNT_CODE
                | pe::IMAGE_SCN_MEM_READ
                | pe::IMAGE_SCN_MEM_WRITE
                | pe::IMAGE_SCN_MEM_EXECUTE,
            0x10,
            0x10,
        )
    });
    let (rdata_bytes, import_dir, export_dir, slots) = rdata(
        rdata_range.virtual_address,
        text_range.virtual_address,
        spec,
    );
    let mut text = (spec.code)(&Code {
        text: text_range.virtual_address,
        slots,
    });
    assert!(text.len() <= TEXT_SIZE, "test code is larger than .text");
    text.resize(TEXT_SIZE, 0xc3);
    let dir = |(offset, size): (usize, usize)| {
        (
            rva(rdata_range.virtual_address, offset),
            u32::try_from(size).unwrap(),
        )
    };
    if !spec.imports.is_empty() {
        let (address, size) = dir(import_dir);
        writer.set_data_directory(pe::IMAGE_DIRECTORY_ENTRY_IMPORT, address, size);
    }
    if !spec.exports.is_empty() {
        let (address, size) = dir(export_dir);
        writer.set_data_directory(pe::IMAGE_DIRECTORY_ENTRY_EXPORT, address, size);
    }
    if spec.tls {
        writer.set_data_directory(
            pe::IMAGE_DIRECTORY_ENTRY_TLS,
            rdata_range.virtual_address,
            0x28,
        );
    }
    writer.write_dos_header_and_stub().unwrap();
    writer.write_nt_headers(NtHeaders {
        machine: spec.machine,
        time_date_stamp: 0,
        characteristics: pe::IMAGE_FILE_EXECUTABLE_IMAGE
            | pe::IMAGE_FILE_LARGE_ADDRESS_AWARE
            | pe::IMAGE_FILE_DLL,
        major_linker_version: 14,
        minor_linker_version: 0,
        address_of_entry_point: text_range.virtual_address + spec.entry_offset,
        image_base: 0x1_4000_0000,
        major_operating_system_version: 10,
        minor_operating_system_version: 0,
        major_image_version: 0,
        minor_image_version: 0,
        major_subsystem_version: 10,
        minor_subsystem_version: 0,
        subsystem: spec.subsystem,
        dll_characteristics: pe::IMAGE_DLLCHARACTERISTICS_NX_COMPAT,
        size_of_stack_reserve: 0x4_0000,
        size_of_stack_commit: 0x1000,
        size_of_heap_reserve: 0x10_0000,
        size_of_heap_commit: 0x1000,
    });
    writer.write_section_headers();
    writer.write_section(text_range.file_offset, &text);
    writer.write_section(rdata_range.file_offset, &rdata_bytes);
    if let Some(range) = wx_range {
        writer.write_section(range.file_offset, &[0xc3; 0x10]);
    }
    if spec.checksum {
        fix_checksum(&mut image);
    }
    image
}

/// Stores the correct checksum in `image`.
fn fix_checksum(image: &mut [u8]) {
    let offset = checksum_offset(image).unwrap();
    let sum = pe_checksum(image, offset);
    put_u32(image, offset, sum);
}

fn failures(image: &[u8]) -> Vec<Failure> {
    verify(image, &Policy::IOTALLY).failures
}

#[test]
fn well_formed_image_passes_and_is_reported() {
    let image = build(&Spec::good());
    let verification = verify(&image, &Policy::IOTALLY);
    assert_eq!(verification.failures, []);
    let report = verification.report.unwrap();
    assert_eq!(report.size, image.len());
    let names: Vec<&str> = report.sections.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, [".text", ".rdata"]);
    assert_eq!(report.sections[0].flags(), "R-X code");
    assert_eq!(report.imports[1].module, "fltmgr.sys");
    assert_eq!(
        report.imports[1].functions,
        [
            "FltRegisterFilter",
            "FltStartFiltering",
            "FltUnregisterFilter"
        ]
    );
    assert_eq!(report.exports.len(), 1);
    let text = report.to_string();
    assert!(
        text.contains("ntoskrnl.exe (2): ExAllocatePool2, ExFreePoolWithTag"),
        "{text}"
    );
    assert!(
        text.contains("(AMD64)") && text.contains("(NATIVE)"),
        "{text}"
    );
}

#[test]
fn patched_machine_field_fails() {
    let mut image = build(&Spec::good());
    let machine_at = checksum_offset(&image).unwrap() - 64 - 20;
    image[machine_at..machine_at + 2].copy_from_slice(&0x014cu16.to_le_bytes());
    fix_checksum(&mut image);
    assert_eq!(failures(&image), [Failure::Machine(0x014c)]);
}

#[test]
fn built_with_wrong_machine_fails() {
    let spec = Spec {
        machine: pe::IMAGE_FILE_MACHINE_ARM64,
        ..Spec::good()
    };
    assert_eq!(failures(&build(&spec)), [Failure::Machine(0xaa64)]);
}

#[test]
fn user_mode_subsystem_fails() {
    let spec = Spec {
        subsystem: pe::IMAGE_SUBSYSTEM_WINDOWS_CUI,
        ..Spec::good()
    };
    assert_eq!(failures(&build(&spec)), [Failure::Subsystem(3)]);
}

#[test]
fn patched_subsystem_fails_and_breaks_the_checksum() {
    let mut image = build(&Spec::good());
    // Subsystem is 68 bytes into the optional header, four after CheckSum.
    let subsystem_at = checksum_offset(&image).unwrap() + 4;
    image[subsystem_at..subsystem_at + 2].copy_from_slice(&2u16.to_le_bytes());
    let found = failures(&image);
    assert!(found.contains(&Failure::Subsystem(2)), "{found:?}");
    assert!(
        found
            .iter()
            .any(|f| matches!(f, Failure::ChecksumMismatch { .. })),
        "{found:?}"
    );
}

#[test]
fn entry_point_elsewhere_fails() {
    let spec = Spec {
        entry_offset: 0x20,
        ..Spec::good()
    };
    let found = failures(&build(&spec));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        matches!(found[0], Failure::EntryPoint { entry_rva, export_rva } if entry_rva == export_rva + 0x10)
    );
}

#[test]
fn missing_driver_entry_export_fails() {
    let spec = Spec {
        exports: vec![("NotTheEntry", 0x10)],
        ..Spec::good()
    };
    assert_eq!(
        failures(&build(&spec)),
        [Failure::EntryExportMissing("DriverEntry".into())]
    );
}

#[test]
fn user_mode_import_fails() {
    let mut spec = Spec::good();
    spec.imports.push(("ntdll.dll", vec!["DbgPrint"]));
    assert_eq!(
        failures(&build(&spec)),
        [Failure::ForbiddenModule {
            module: "ntdll.dll".into(),
            function: "DbgPrint".into()
        }]
    );
}

#[test]
fn module_names_compare_without_case() {
    let mut spec = Spec::good();
    spec.imports = vec![
        ("NTOSKRNL.EXE", vec!["ExAllocatePool2"]),
        ("hal.DLL", vec!["KeQueryPerformanceCounter"]),
        (
            "FltMgr.Sys",
            vec![
                "FltRegisterFilter",
                "FltStartFiltering",
                "FltUnregisterFilter",
            ],
        ),
    ];
    assert_eq!(failures(&build(&spec)), []);
}

#[test]
fn chkstk_import_fails_even_from_the_kernel() {
    let mut spec = Spec::good();
    spec.imports[0].1.push("__chkstk");
    assert_eq!(
        failures(&build(&spec)),
        [Failure::Chkstk("ntoskrnl.exe".into())]
    );
}

#[test]
fn missing_filter_registration_import_fails() {
    let mut spec = Spec::good();
    spec.imports[1].1.retain(|&f| f != "FltUnregisterFilter");
    assert_eq!(
        failures(&build(&spec)),
        [Failure::MissingImport {
            module: "FLTMGR.SYS".into(),
            function: "FltUnregisterFilter".into()
        }]
    );
    // The generic kernel-driver policy requires nothing.
    assert!(verify(&build(&spec), &Policy::KERNEL_DRIVER).passed());
}

#[test]
fn writable_executable_section_fails() {
    let spec = Spec {
        wx_section: true,
        ..Spec::good()
    };
    assert_eq!(
        failures(&build(&spec)),
        [Failure::WritableExecutable(".wx".into())]
    );
}

#[test]
fn tls_directory_fails() {
    let spec = Spec {
        tls: true,
        ..Spec::good()
    };
    assert_eq!(failures(&build(&spec)), [Failure::Tls]);
}

#[test]
fn zero_checksum_fails() {
    let spec = Spec {
        checksum: false,
        ..Spec::good()
    };
    assert_eq!(failures(&build(&spec)), [Failure::ZeroChecksum]);
}

#[test]
fn wrong_checksum_fails() {
    let mut image = build(&Spec::good());
    let offset = checksum_offset(&image).unwrap();
    let stored = u32::from_le_bytes(image[offset..offset + 4].try_into().unwrap());
    put_u32(&mut image, offset, stored ^ 1);
    assert_eq!(
        failures(&image),
        [Failure::ChecksumMismatch {
            stored: stored ^ 1,
            computed: stored
        }]
    );
}

#[test]
fn one_flipped_byte_changes_the_checksum() {
    let mut image = build(&Spec::good());
    let offset = checksum_offset(&image).unwrap();
    let before = pe_checksum(&image, offset);
    let last = image.len() - 1;
    image[last] ^= 0x80;
    assert_ne!(pe_checksum(&image, offset), before);
}

#[test]
fn checksum_folds_carries_skips_its_field_and_adds_the_length() {
    // Words 0xffff and 0x0002 sum to 0x1_0001, which folds to 0x0002. The four bytes at offset 4
    // are the checksum field and do not count. A trailing odd byte is padded with zero. Length 9.
    let image = [0xff, 0xff, 0x02, 0x00, 0xaa, 0xbb, 0xcc, 0xdd, 0x05];
    assert_eq!(pe_checksum(&image, 4), 0x0002 + 0x0005 + 9);
}

#[test]
fn garbage_is_a_parse_failure_not_a_panic() {
    let verification = verify(b"MZ but not really a PE image", &Policy::IOTALLY);
    assert!(verification.report.is_none());
    assert!(matches!(
        verification.failures.as_slice(),
        [Failure::Parse(_)]
    ));
    let mut truncated = build(&Spec::good());
    truncated.truncate(0x100);
    assert!(!verify(&truncated, &Policy::IOTALLY).passed());
}

#[test]
fn every_rule_broken_at_once_is_reported_at_once() {
    let mut spec = Spec {
        machine: pe::IMAGE_FILE_MACHINE_I386,
        subsystem: pe::IMAGE_SUBSYSTEM_WINDOWS_CUI,
        entry_offset: 0,
        wx_section: true,
        tls: true,
        checksum: false,
        ..Spec::good()
    };
    spec.imports.push(("KERNEL32.dll", vec!["__chkstk"]));
    assert_eq!(failures(&build(&spec)).len(), 8);
}

/// A tiny x64 assembler for the tail-jump tests: appends instructions at the end of `.text`'s code.
struct Asm<'a> {
    code: &'a Code,
    bytes: Vec<u8>,
}

impl<'a> Asm<'a> {
    fn new(code: &'a Code) -> Self {
        Self {
            code,
            bytes: Vec::new(),
        }
    }

    /// RVA of the next instruction.
    fn here(&self) -> u32 {
        self.code.text + u32::try_from(self.bytes.len()).unwrap()
    }

    /// Pads with `int3` up to offset `offset` of `.text`.
    fn at(&mut self, offset: usize) -> &mut Self {
        self.bytes.resize(offset, 0xcc);
        self
    }

    /// `opcode` followed by a 32-bit displacement to `target`, relative to the instruction's end.
    fn rel32(&mut self, opcode: &[u8], target: u32) -> &mut Self {
        let end = i64::from(self.here()) + i64::try_from(opcode.len()).unwrap() + 4;
        let displacement = i32::try_from(i64::from(target) - end).unwrap();
        self.bytes.extend_from_slice(opcode);
        self.bytes.extend_from_slice(&displacement.to_le_bytes());
        self
    }

    fn jmp_import(&mut self, function: &str) -> &mut Self {
        let slot = self.code.slot(function);
        self.rel32(&[0xff, 0x25], slot)
    }

    fn call_import(&mut self, function: &str) -> &mut Self {
        let slot = self.code.slot(function);
        self.rel32(&[0xff, 0x15], slot)
    }

    fn mov_rax_import(&mut self, function: &str) -> &mut Self {
        let slot = self.code.slot(function);
        self.rel32(&[0x48, 0x8b, 0x05], slot)
    }

    fn call(&mut self, offset: u32) -> &mut Self {
        let target = self.code.text + offset;
        self.rel32(&[0xe8], target)
    }

    fn jmp(&mut self, offset: u32) -> &mut Self {
        let target = self.code.text + offset;
        self.rel32(&[0xe9], target)
    }

    fn je(&mut self, offset: u32) -> &mut Self {
        let target = self.code.text + offset;
        self.rel32(&[0x0f, 0x84], target)
    }

    fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    fn ret(&mut self) -> &mut Self {
        self.bytes(&[0xc3])
    }

    fn done(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }
}

/// Offset of the import thunk in the thunk tests.
const THUNK: u32 = 0x80;

fn tail_jumps(code: fn(&Code) -> Vec<u8>) -> Vec<Failure> {
    failures(&build(&Spec {
        code,
        ..Spec::good()
    }))
}

#[test]
fn calls_to_filter_manager_are_not_tail_jumps() {
    let spec = Spec {
        code: |c| {
            let mut asm = Asm::new(c);
            asm.at(0x10).call_import("FltStartFiltering").ret();
            asm.mov_rax_import("FltUnregisterFilter")
                .bytes(&[0xff, 0xd0])
                .ret();
            asm.call(THUNK).ret();
            asm.at(usize::try_from(THUNK).unwrap())
                .jmp_import("FltRegisterFilter");
            asm.done()
        },
        ..Spec::good()
    };
    let verification = verify(&build(&spec), &Policy::IOTALLY);
    assert_eq!(verification.failures, []);
    let report = verification.report.unwrap();
    assert_eq!(
        report.import_branches.calls, 3,
        "through the table, a register, a thunk"
    );
    assert!(
        report
            .to_string()
            .contains("branches: 3 call site(s) of FLTMGR.SYS imports, 0 tail jump(s)"),
        "{report}"
    );
}

#[test]
fn a_jump_through_the_import_table_is_caught() {
    let found = tail_jumps(|c| {
        Asm::new(c)
            .at(0x10)
            .jmp_import("FltUnregisterFilter")
            .done()
    });
    let [Failure::TailJump(jump)] = found.as_slice() else {
        panic!("{found:?}");
    };
    assert_eq!(jump.target, "fltmgr.sys!FltUnregisterFilter");
    assert_eq!(jump.shape, tail_jumps::Shape::ThroughAddressTable);
    assert!(
        Failure::TailJump(jump.clone())
            .to_string()
            .contains("Filter Verifier")
    );
}

#[test]
fn jumps_to_an_import_thunk_are_caught() {
    let found = tail_jumps(|c| {
        let mut asm = Asm::new(c);
        asm.at(0x10).call(THUNK).jmp(THUNK);
        asm.bytes(&[0x85, 0xc0]).je(THUNK).ret();
        asm.at(usize::try_from(THUNK).unwrap())
            .jmp_import("FltStartFiltering");
        asm.done()
    });
    let shapes: Vec<_> = found
        .iter()
        .map(|f| match f {
            Failure::TailJump(jump) => (jump.rva & 0xff, jump.shape.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    let thunk = tail_jumps::Shape::ToThunk(0x1000 + THUNK);
    assert_eq!(
        shapes,
        [(0x15, thunk.clone()), (0x1c, thunk)],
        "the jmp and the je"
    );
}

#[test]
fn a_jump_through_a_register_loaded_from_the_import_table_is_caught() {
    let found = tail_jumps(|c| {
        let mut asm = Asm::new(c);
        // mov rax, [FltRegisterFilter]; mov ecx, 1; jmp rax
        asm.at(0x10)
            .mov_rax_import("FltRegisterFilter")
            .bytes(&[0xb9, 1, 0, 0, 0]);
        asm.bytes(&[0xff, 0xe0]);
        // mov rax, [FltStartFiltering]; xor eax, eax; jmp rax: rax changed, not the import
        asm.mov_rax_import("FltStartFiltering")
            .bytes(&[0x31, 0xc0, 0xff, 0xe0]);
        asm.done()
    });
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        matches!(&found[0], Failure::TailJump(j) if j.target.ends_with("!FltRegisterFilter")
            && j.shape == tail_jumps::Shape::ThroughRegister("rax".into())),
        "{found:?}"
    );
}

#[test]
fn tail_jumps_to_other_modules_are_allowed() {
    let found = tail_jumps(|c| Asm::new(c).at(0x10).jmp_import("ExFreePoolWithTag").done());
    assert_eq!(found, []);
}
