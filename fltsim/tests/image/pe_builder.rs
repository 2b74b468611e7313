//! A small x64 driver image, assembled by hand, for testing the loader without a cross toolchain.
//!
//! Layout (section alignment 0x1000, linked for base `0x1_4000_0000`, so the loader must relocate):
//!
//! | RVA    | section | contents |
//! |--------|---------|----------|
//! | 0x1000 | `.text` | the entry points and callbacks of [`Entry`] |
//! | 0x2000 | `.rdata`| import directory, lookup and address tables, names; [`FILE_NAME`]; [`FLAGS`] |
//! | 0x3000 | `.data` | a pointer to [`FLAGS`] (relocated), result and filter slots, an `FLT_REGISTRATION` |
//! | 0x4000 | `.reloc`| the `DIR64` relocations of the pointers in `.data` |
//!
//! Every instruction's encoding was checked with `llvm-mc -show-encoding`.

use object::pe;
use object::write::pe::{NtHeaders, Writer};

/// The address the image is linked for.
pub const IMAGE_BASE: u64 = 0x1_4000_0000;
const TEXT: u32 = 0x1000;
const RDATA: u32 = 0x2000;
const DATA: u32 = 0x3000;
/// Offset in `.rdata` of the panic file name.
const FILE_NAME_AT: u32 = 0x800;
/// Offset in `.rdata` of the pool flags constant.
const FLAGS_AT: u32 = 0x900;

/// The file name the bug check entry passes, as a Rust panic handler does.
pub const FILE_NAME: &str = "src/test.rs";
/// The value at the relocated pointer: `POOL_FLAG_NON_PAGED`.
pub const FLAGS: u32 = 0x40;
/// The pool tag the allocating entry uses (`Tst1`).
pub const TAG: u32 = u32::from_le_bytes(*b"Tst1");
/// Bytes the allocating entry asks for.
pub const SIZE: u32 = 0x30;
/// What the allocating entry leaves in XMM6 across the call, and returns.
pub const XMM6_CANARY: u32 = 0x1234_5678;
/// The bug check code the bug check entry raises.
pub const BUGCHECK_CODE: u32 = 0xE000_1234;

/// `.data` offsets.
const PTR_TO_FLAGS: u32 = 0x00;
const RESULT: u32 = 0x08;
const FILTER: u32 = 0x10;
const REGISTRATION: u32 = 0x20;

/// Which routine is the entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Loads `FLAGS` through the relocated pointer, allocates `SIZE` bytes of pool with `TAG`,
    /// stores zeroes into them with an aligned SSE store (faults unless pool is 16-byte aligned),
    /// and returns what it put in XMM6 before the call (`XMM6_CANARY`).
    Allocate,
    /// Returns CR8 (the IRQL).
    ReadCr8,
    /// Writes 1 to CR8, reads it back into R9, writes 0, returns R9.
    WriteCr8,
    /// Calls `KeBugCheckEx(BUGCHECK_CODE, FILE_NAME, len, 42, 7)`.
    BugCheck,
    /// Reads CR3, which fltsim does not emulate.
    ReadCr3,
    /// Registers a filter whose `InstanceSetup` refuses every volume and whose `FilterUnload`
    /// unregisters, starts filtering, returns `STATUS_SUCCESS`.
    Filter,
    /// The same, but returns `STATUS_UNSUCCESSFUL` without unregistering (a driver bug).
    FilterThenFail,
}

/// What to build.
pub struct Spec {
    /// The entry point.
    pub entry: Entry,
    /// An extra import from FLTMGR.SYS, if any.
    pub extra_import: Option<&'static str>,
}

/// A tiny assembler: bytes at a known RVA, with RIP-relative operands.
struct Asm {
    start: u32,
    bytes: Vec<u8>,
}

impl Asm {
    fn here(&self) -> u32 {
        self.start + u32::try_from(self.bytes.len()).unwrap()
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// `opcode disp32 tail`, the displacement relative to the end of the instruction.
    fn rip(&mut self, opcode: &[u8], target: u32, tail: &[u8]) {
        let end = self.here() + u32::try_from(opcode.len() + 4 + tail.len()).unwrap();
        let displacement = i32::try_from(i64::from(target) - i64::from(end)).unwrap();
        self.raw(opcode);
        self.raw(&displacement.to_le_bytes());
        self.raw(tail);
    }

    fn imm32(&mut self, opcode: &[u8], value: u32) {
        self.raw(opcode);
        self.raw(&value.to_le_bytes());
    }
}

/// The import directory, laid out in `.rdata`: the bytes and each routine's address-table slot.
struct Imports {
    bytes: Vec<u8>,
    slots: Vec<(&'static str, u32)>,
}

fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn imports(modules: &[(&'static str, Vec<&'static str>)]) -> Imports {
    let mut out = vec![0u8; 20 * (modules.len() + 1)];
    let mut slots = Vec::new();
    let rva = |offset: usize| RDATA + u32::try_from(offset).unwrap();
    for (index, (module, routines)) in modules.iter().enumerate() {
        let lookup = out.len();
        out.resize(lookup + 8 * (routines.len() + 1), 0);
        let address = out.len();
        out.resize(address + 8 * (routines.len() + 1), 0);
        for (slot, routine) in routines.iter().enumerate() {
            let hint_name = out.len();
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(routine.as_bytes());
            out.push(0);
            if out.len() % 2 == 1 {
                out.push(0);
            }
            let entry = u64::from(rva(hint_name)).to_le_bytes();
            out[lookup + 8 * slot..lookup + 8 * slot + 8].copy_from_slice(&entry);
            out[address + 8 * slot..address + 8 * slot + 8].copy_from_slice(&entry);
            slots.push((*routine, rva(address + 8 * slot)));
        }
        let name = out.len();
        out.extend_from_slice(module.as_bytes());
        out.push(0);
        put_u32(&mut out, 20 * index, rva(lookup));
        put_u32(&mut out, 20 * index + 12, rva(name));
        put_u32(&mut out, 20 * index + 16, rva(address));
    }
    assert!(out.len() <= FILE_NAME_AT as usize);
    Imports { bytes: out, slots }
}

/// The code: every routine, each at the RVA returned for it.
fn text(slot: &dyn Fn(&str) -> u32) -> (Vec<u8>, Vec<(Entry, u32)>, u32, u32) {
    let mut asm = Asm {
        start: TEXT,
        bytes: Vec::new(),
    };
    let mut entries = Vec::new();

    entries.push((Entry::Allocate, asm.here()));
    asm.raw(&[0x48, 0x83, 0xEC, 0x28]); // sub rsp, 0x28
    asm.rip(&[0x48, 0x8B, 0x05], DATA + PTR_TO_FLAGS, &[]); // mov rax, [rip+PTR_TO_FLAGS]
    asm.raw(&[0x8B, 0x08]); // mov ecx, [rax]
    asm.imm32(&[0xBA], SIZE); // mov edx, SIZE
    asm.imm32(&[0x41, 0xB8], TAG); // mov r8d, TAG
    asm.imm32(&[0xB8], XMM6_CANARY); // mov eax, XMM6_CANARY
    asm.raw(&[0x66, 0x0F, 0x6E, 0xF0]); // movd xmm6, eax
    asm.rip(&[0xFF, 0x15], slot("ExAllocatePool2"), &[]); // call [ExAllocatePool2]
    asm.rip(&[0x48, 0x89, 0x05], DATA + RESULT, &[]); // mov [rip+RESULT], rax
    asm.raw(&[0x0F, 0x57, 0xC0]); // xorps xmm0, xmm0
    asm.raw(&[0x0F, 0x29, 0x00]); // movaps [rax], xmm0
    asm.raw(&[0x66, 0x0F, 0x7E, 0xF0]); // movd eax, xmm6
    asm.raw(&[0x48, 0x83, 0xC4, 0x28, 0xC3]); // add rsp, 0x28; ret

    entries.push((Entry::ReadCr8, asm.here()));
    asm.raw(&[0x44, 0x0F, 0x20, 0xC0, 0xC3]); // mov rax, cr8; ret

    entries.push((Entry::WriteCr8, asm.here()));
    asm.imm32(&[0xB9], 1); // mov ecx, 1
    asm.raw(&[0x44, 0x0F, 0x22, 0xC1]); // mov cr8, rcx
    asm.raw(&[0x45, 0x0F, 0x20, 0xC1]); // mov r9, cr8
    asm.raw(&[0x31, 0xC9]); // xor ecx, ecx
    asm.raw(&[0x44, 0x0F, 0x22, 0xC1]); // mov cr8, rcx
    asm.raw(&[0x4C, 0x89, 0xC8, 0xC3]); // mov rax, r9; ret

    entries.push((Entry::BugCheck, asm.here()));
    asm.raw(&[0x48, 0x83, 0xEC, 0x38]); // sub rsp, 0x38
    asm.imm32(&[0xB9], BUGCHECK_CODE); // mov ecx, BUGCHECK_CODE
    asm.rip(&[0x48, 0x8D, 0x15], RDATA + FILE_NAME_AT, &[]); // lea rdx, [rip+FILE_NAME]
    asm.imm32(&[0x41, 0xB8], u32::try_from(FILE_NAME.len()).unwrap()); // mov r8d, len
    asm.imm32(&[0x41, 0xB9], 42); // mov r9d, 42
    asm.imm32(&[0x48, 0xC7, 0x44, 0x24, 0x20], 7); // mov qword [rsp+0x20], 7
    asm.rip(&[0xFF, 0x15], slot("KeBugCheckEx"), &[]); // call [KeBugCheckEx]
    asm.raw(&[0x0F, 0x0B]); // ud2

    entries.push((Entry::ReadCr3, asm.here()));
    asm.raw(&[0x0F, 0x20, 0xD8, 0xC3]); // mov rax, cr3; ret

    let setup = asm.here();
    asm.imm32(&[0xB8], 0xC01C_000F); // mov eax, STATUS_FLT_DO_NOT_ATTACH
    asm.raw(&[0xC3]); // ret

    let unload = asm.here();
    asm.raw(&[0x48, 0x83, 0xEC, 0x28]); // sub rsp, 0x28
    asm.rip(&[0x48, 0x8B, 0x0D], DATA + FILTER, &[]); // mov rcx, [rip+FILTER]
    asm.rip(&[0xFF, 0x15], slot("FltUnregisterFilter"), &[]); // call [FltUnregisterFilter]
    asm.raw(&[0x31, 0xC0]); // xor eax, eax
    asm.raw(&[0x48, 0x83, 0xC4, 0x28, 0xC3]); // add rsp, 0x28; ret

    for (entry, status) in [(Entry::Filter, 0), (Entry::FilterThenFail, 0xC000_0001)] {
        entries.push((entry, asm.here()));
        asm.raw(&[0x48, 0x83, 0xEC, 0x28]); // sub rsp, 0x28 (rcx: the driver object, as passed)
        asm.rip(&[0x48, 0x8D, 0x15], DATA + REGISTRATION, &[]); // lea rdx, [rip+REGISTRATION]
        asm.rip(&[0x4C, 0x8D, 0x05], DATA + FILTER, &[]); // lea r8, [rip+FILTER]
        asm.rip(&[0xFF, 0x15], slot("FltRegisterFilter"), &[]); // call [FltRegisterFilter]
        asm.rip(&[0x48, 0x8B, 0x0D], DATA + FILTER, &[]); // mov rcx, [rip+FILTER]
        asm.rip(&[0xFF, 0x15], slot("FltStartFiltering"), &[]); // call [FltStartFiltering]
        asm.imm32(&[0xB8], status); // mov eax, status
        asm.raw(&[0x48, 0x83, 0xC4, 0x28, 0xC3]); // add rsp, 0x28; ret
    }
    (asm.bytes, entries, setup, unload)
}

/// Builds the image.
pub fn build(spec: &Spec) -> Vec<u8> {
    let mut fltmgr = vec![
        "FltRegisterFilter",
        "FltStartFiltering",
        "FltUnregisterFilter",
    ];
    fltmgr.extend(spec.extra_import);
    let imports = imports(&[
        ("ntoskrnl.exe", vec!["ExAllocatePool2", "KeBugCheckEx"]),
        ("fltmgr.sys", fltmgr),
    ]);
    let slot = |name: &str| {
        imports
            .slots
            .iter()
            .find(|(routine, _)| *routine == name)
            .map(|&(_, rva)| rva)
            .unwrap()
    };
    let (code, entries, setup, unload) = text(&slot);
    let entry = entries
        .iter()
        .find(|(e, _)| *e == spec.entry)
        .map(|&(_, rva)| rva)
        .unwrap();

    let mut rdata = imports.bytes.clone();
    rdata.resize(FILE_NAME_AT as usize, 0);
    rdata.extend_from_slice(FILE_NAME.as_bytes());
    rdata.resize(FLAGS_AT as usize, 0);
    rdata.extend_from_slice(&FLAGS.to_le_bytes());

    let mut data = vec![0u8; 0x100];
    let address = |rva: u32| (IMAGE_BASE + u64::from(rva)).to_le_bytes();
    data[PTR_TO_FLAGS as usize..][..8].copy_from_slice(&address(RDATA + FLAGS_AT));
    let registration = REGISTRATION as usize;
    data[registration..][..2].copy_from_slice(&112u16.to_le_bytes()); // Size
    data[registration + 2..][..2].copy_from_slice(&0x0203u16.to_le_bytes()); // Version
    data[registration + 24..][..8].copy_from_slice(&address(unload)); // FilterUnloadCallback
    data[registration + 32..][..8].copy_from_slice(&address(setup)); // InstanceSetupCallback
    let relocated = [
        DATA + PTR_TO_FLAGS,
        DATA + REGISTRATION + 24,
        DATA + REGISTRATION + 32,
    ];

    let mut image = Vec::new();
    let mut writer = Writer::new(true, 0x1000, 0x200, &mut image);
    writer.reserve_dos_header_and_stub();
    writer.reserve_nt_headers(pe::IMAGE_NUMBEROF_DIRECTORY_ENTRIES);
    writer.reserve_section_headers(4);
    let text_range = writer.reserve_text_section(u32::try_from(code.len()).unwrap());
    let rdata_range = writer.reserve_rdata_section(u32::try_from(rdata.len()).unwrap());
    let data_len = u32::try_from(data.len()).unwrap();
    let data_range = writer.reserve_data_section(data_len, data_len);
    assert_eq!(
        (
            text_range.virtual_address,
            rdata_range.virtual_address,
            data_range.virtual_address
        ),
        (TEXT, RDATA, DATA)
    );
    writer.set_data_directory(
        pe::IMAGE_DIRECTORY_ENTRY_IMPORT,
        RDATA,
        u32::try_from(imports.bytes.len()).unwrap(),
    );
    for rva in relocated {
        writer.add_reloc(rva, pe::IMAGE_REL_BASED_DIR64);
    }
    writer.reserve_reloc_section();
    writer.write_dos_header_and_stub().unwrap();
    writer.write_nt_headers(NtHeaders {
        machine: pe::IMAGE_FILE_MACHINE_AMD64,
        time_date_stamp: 0,
        characteristics: pe::IMAGE_FILE_EXECUTABLE_IMAGE
            | pe::IMAGE_FILE_LARGE_ADDRESS_AWARE
            | pe::IMAGE_FILE_DLL,
        major_linker_version: 14,
        minor_linker_version: 0,
        address_of_entry_point: entry,
        image_base: IMAGE_BASE,
        major_operating_system_version: 10,
        minor_operating_system_version: 0,
        major_image_version: 0,
        minor_image_version: 0,
        major_subsystem_version: 10,
        minor_subsystem_version: 0,
        subsystem: pe::IMAGE_SUBSYSTEM_NATIVE,
        dll_characteristics: pe::IMAGE_DLLCHARACTERISTICS_NX_COMPAT
            | pe::IMAGE_DLLCHARACTERISTICS_DYNAMIC_BASE
            | pe::IMAGE_DLLCHARACTERISTICS_HIGH_ENTROPY_VA,
        size_of_stack_reserve: 0x4_0000,
        size_of_stack_commit: 0x1000,
        size_of_heap_reserve: 0x10_0000,
        size_of_heap_commit: 0x1000,
    });
    writer.write_section_headers();
    writer.write_section(text_range.file_offset, &code);
    writer.write_section(rdata_range.file_offset, &rdata);
    writer.write_section(data_range.file_offset, &data);
    writer.write_reloc_section();
    image
}
