//! Finds tail jumps to an image's imports from given modules (`FLTMGR.SYS`): a branch that leaves a
//! function for an imported routine instead of calling it.
//!
//! Filter Verifier attributes each Filter Manager call to its caller by the return address; a routine
//! whose last action is a Filter Manager call, compiled as a jump, leaves the wrong return address
//! and Filter Verifier reports leaked references and out-of-sync tracking ("File System Filter
//! Verification"; `docs/kernel-rules.md`, "Verifier and HLK").
//!
//! The image's code sections are decoded linearly with `iced-x86` (LLVM keeps jump tables out of
//! `.text`). Three shapes reach an import:
//! - `jmp qword ptr [rip+slot]`, where `slot` is the import's address-table entry. Called through
//!   `call`, `jmp` or `lea` by the rest of the code, it is the linker's **import thunk** (what a
//!   call to a non-`dllimport` declaration goes through); otherwise it ends a function: a tail jump.
//! - a `jmp` or conditional jump to an import thunk: a tail jump.
//! - `mov reg, [rip+slot]` followed, with `reg` unchanged and no branch in between, by `jmp reg`:
//!   a tail jump through a register.

use std::collections::{HashMap, HashSet};
use std::fmt;

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess,
    OpKind, Register,
};
use object::LittleEndian as LE;
use object::pe;
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, Import, PeFile64};

/// How a tail jump reaches the import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// `jmp [rip+slot]` at the end of a function.
    ThroughAddressTable,
    /// `jmp`/`jcc` to the import thunk at this RVA.
    ToThunk(u32),
    /// `mov reg, [rip+slot]` then `jmp reg`.
    ThroughRegister(String),
}

/// One tail jump to an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailJump {
    /// RVA of the jump instruction.
    pub rva: u32,
    /// The imported routine, `MODULE!Name`.
    pub target: String,
    /// How it gets there.
    pub shape: Shape,
}

impl fmt::Display for TailJump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match &self.shape {
            Shape::ThroughAddressTable => "jmp through its import address table entry".to_owned(),
            Shape::ToThunk(thunk) => format!("jump to its import thunk at RVA {thunk:#x}"),
            Shape::ThroughRegister(register) => {
                format!("jmp {register} loaded from its import address table entry")
            }
        };
        write!(
            f,
            "RVA {:#x}: tail jump to {} ({how})",
            self.rva, self.target
        )
    }
}

/// What the scan found: the calls to the modules' imports and the tail jumps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// The modules whose imports were looked for.
    pub modules: Vec<String>,
    /// Calls of the imports (through the table, a thunk or a register).
    pub calls: usize,
    /// Tail jumps to the imports.
    pub tail_jumps: Vec<TailJump>,
}

/// A decoded instruction of a code section.
struct Decoded {
    rva: u32,
    instruction: Instruction,
}

/// The import address table slots (RVA → `MODULE!Name`) of imports from `modules`.
fn slots(file: &PeFile64<'_>, modules: &[&str]) -> Result<HashMap<u32, String>, String> {
    let mut slots = HashMap::new();
    let Some(table) = file.import_table().map_err(|e| e.to_string())? else {
        return Ok(slots);
    };
    let mut descriptors = table.descriptors().map_err(|e| e.to_string())?;
    while let Some(descriptor) = descriptors.next().map_err(|e| e.to_string())? {
        let module = table
            .name(descriptor.name.get(LE))
            .map_err(|e| e.to_string())?;
        let module = String::from_utf8_lossy(module).into_owned();
        if !modules.iter().any(|m| m.eq_ignore_ascii_case(&module)) {
            continue;
        }
        let first = descriptor.first_thunk.get(LE);
        let lookup = match descriptor.original_first_thunk.get(LE) {
            0 => first,
            rva => rva,
        };
        let mut thunks = table.thunks(lookup).map_err(|e| e.to_string())?;
        let mut index = 0_u32;
        while let Some(thunk) = thunks
            .next::<pe::ImageNtHeaders64>()
            .map_err(|e| e.to_string())?
        {
            let name = match table
                .import::<pe::ImageNtHeaders64>(thunk)
                .map_err(|e| e.to_string())?
            {
                Import::Name(_, name) => String::from_utf8_lossy(name).into_owned(),
                Import::Ordinal(ordinal) => format!("#{ordinal}"),
            };
            slots.insert(first + 8 * index, format!("{module}!{name}"));
            index += 1;
        }
    }
    Ok(slots)
}

/// Every instruction of the image's executable sections, in address order.
fn decode(file: &PeFile64<'_>) -> Vec<Decoded> {
    let base = file.nt_headers().optional_header().image_base();
    let mut code = Vec::new();
    for section in file.section_table().iter() {
        let characteristics = section.characteristics.get(LE).0;
        if characteristics & pe::IMAGE_SCN_MEM_EXECUTE.0 == 0 {
            continue;
        }
        let Ok(bytes) = section.pe_data(file.data()) else {
            continue;
        };
        let size = usize::try_from(section.virtual_size.get(LE)).unwrap_or(usize::MAX);
        let bytes = &bytes[..bytes.len().min(size)];
        let rva = section.virtual_address.get(LE);
        let mut decoder = Decoder::with_ip(64, bytes, base + u64::from(rva), DecoderOptions::NONE);
        for instruction in &mut decoder {
            let offset = u32::try_from(instruction.ip() - base).unwrap_or(u32::MAX);
            code.push(Decoded {
                rva: offset,
                instruction,
            });
        }
    }
    code
}

/// Scans `image` for calls and tail jumps to the imports from `modules`.
///
/// # Errors
/// When the image or its import table cannot be parsed.
pub fn scan(image: &[u8], modules: &[&str]) -> Result<Scan, String> {
    let file = PeFile64::parse(image).map_err(|e| e.to_string())?;
    let base = file.nt_headers().optional_header().image_base();
    let slots = slots(&file, modules)?;
    let code = decode(&file);
    let slot_of = |instruction: &Instruction| -> Option<&String> {
        if !instruction.is_ip_rel_memory_operand() {
            return None;
        }
        let rva = u32::try_from(instruction.ip_rel_memory_address().checked_sub(base)?).ok()?;
        slots.get(&rva)
    };
    // `jmp [rip+slot]`: thunks if the code refers to them, else tail jumps.
    let through_table: Vec<(&Decoded, &String)> = code
        .iter()
        .filter(|d| d.instruction.mnemonic() == Mnemonic::Jmp)
        .filter_map(|d| slot_of(&d.instruction).map(|target| (d, target)))
        .collect();
    let referenced: HashSet<u64> = code
        .iter()
        .filter_map(|d| {
            let i = &d.instruction;
            match i.flow_control() {
                FlowControl::Call
                | FlowControl::UnconditionalBranch
                | FlowControl::ConditionalBranch => Some(i.near_branch_target()),
                _ if i.mnemonic() == Mnemonic::Lea && i.is_ip_rel_memory_operand() => {
                    Some(i.ip_rel_memory_address())
                }
                _ => None,
            }
        })
        .collect();
    let mut scan = Scan {
        modules: modules.iter().map(|&m| m.to_owned()).collect(),
        ..Scan::default()
    };
    let mut thunks: HashMap<u64, (u32, &String)> = HashMap::new();
    for (decoded, target) in through_table {
        let address = decoded.instruction.ip();
        if referenced.contains(&address) {
            thunks.insert(address, (decoded.rva, target));
        } else {
            scan.tail_jumps.push(TailJump {
                rva: decoded.rva,
                target: target.clone(),
                shape: Shape::ThroughAddressTable,
            });
        }
    }
    let mut info = InstructionInfoFactory::new();
    for (index, decoded) in code.iter().enumerate() {
        let instruction = &decoded.instruction;
        match instruction.flow_control() {
            FlowControl::IndirectCall if slot_of(instruction).is_some() => scan.calls += 1,
            FlowControl::Call if thunks.contains_key(&instruction.near_branch_target()) => {
                scan.calls += 1;
            }
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
                if let Some(&(thunk, target)) = thunks.get(&instruction.near_branch_target()) {
                    scan.tail_jumps.push(TailJump {
                        rva: decoded.rva,
                        target: target.clone(),
                        shape: Shape::ToThunk(thunk),
                    });
                }
            }
            _ => {}
        }
        let loads_slot = instruction.mnemonic() == Mnemonic::Mov
            && instruction.op0_kind() == OpKind::Register
            && instruction.op1_kind() == OpKind::Memory;
        if let Some(target) = slot_of(instruction).filter(|_| loads_slot) {
            let register = instruction.op0_register().full_register();
            match branch_through(&code[index + 1..], register, &mut info) {
                Some(true) => scan.tail_jumps.push(TailJump {
                    rva: decoded.rva,
                    target: target.clone(),
                    shape: Shape::ThroughRegister(format!("{register:?}").to_lowercase()),
                }),
                Some(false) => scan.calls += 1,
                None => {}
            }
        }
    }
    scan.tail_jumps.sort_by_key(|jump| jump.rva);
    Ok(scan)
}

/// Instructions looked at after a `mov reg, [slot]` for the branch through `reg`.
const REGISTER_WINDOW: usize = 32;

/// After a load of `register`: `Some(true)` if the straight-line code jumps through it, `Some(false)`
/// if it calls through it, `None` if the register changes or control flow moves first.
fn branch_through(
    code: &[Decoded],
    register: Register,
    info: &mut InstructionInfoFactory,
) -> Option<bool> {
    for decoded in code.iter().take(REGISTER_WINDOW) {
        let instruction = &decoded.instruction;
        let through = instruction.op0_kind() == OpKind::Register
            && instruction.op0_register().full_register() == register;
        match instruction.flow_control() {
            FlowControl::IndirectBranch => return through.then_some(true),
            FlowControl::IndirectCall => return through.then_some(false),
            FlowControl::Next => {}
            _ => return None,
        }
        let writes = info.info(instruction).used_registers().iter().any(|used| {
            used.register().full_register() == register
                && matches!(
                    used.access(),
                    OpAccess::Write
                        | OpAccess::CondWrite
                        | OpAccess::ReadWrite
                        | OpAccess::ReadCondWrite
                )
        });
        if writes {
            return None;
        }
    }
    None
}
