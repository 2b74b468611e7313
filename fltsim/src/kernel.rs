//! Simulated ntoskrnl odds and ends: `KeBugCheckEx`, `vDbgPrintEx` (with a per-session capture of the
//! debug output) and `KeQuerySystemTimePrecise`.

use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use windows_sys::Wdk::Foundation::IRP;
use windows_sys::Win32::Foundation::UNICODE_STRING;
use windows_sys::Win32::System::Diagnostics::Debug::BUGCHECK_ERROR;
use windows_sys::core::PCSTR;

use crate::irql::{self, PASSIVE_LEVEL};

/// Bytes of text one `vDbgPrintEx` call transmits at most (Microsoft's `DbgPrint` page: "any single
/// call ... will only transmit 512 bytes of information").
pub const MAX_DEBUG_LINE: usize = 512;

/// 100-ns intervals between 1601-01-01 (the Windows system-time epoch) and 1970-01-01.
const EPOCH_DIFFERENCE_100NS: i64 = 116_444_736_000_000_000;

/// One `vDbgPrintEx` call as the debugger would receive it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebugLine {
    /// `ComponentId` (a `DPFLTR_*_ID`).
    pub component: u32,
    /// `Level` (0–31: a `DPFLTR_*_LEVEL` bit number; larger: a mask).
    pub level: u32,
    /// The formatted text, cut at [`MAX_DEBUG_LINE`] bytes.
    pub text: String,
}

/// The session's debug output, in call order.
static LOG: Mutex<Vec<DebugLine>> = Mutex::new(Vec::new());

fn log() -> MutexGuard<'static, Vec<DebugLine>> {
    LOG.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Forgets the debug output: called when a new [`crate::Sim`] starts.
pub(crate) fn reset() {
    log().clear();
}

/// Every line sent with `vDbgPrintEx` since the session started, whatever its component and level
/// (the simulator applies no Debug Print Filter mask). Set `FLTSIM_LOG=1` to also echo them to stderr.
#[must_use]
pub fn debug_log() -> Vec<DebugLine> {
    log().clone()
}

/// `FSRTL_FSP_TOP_LEVEL_IRP` (ntifs.h): the thread is in a recursive call of a file system.
pub const FSRTL_FSP_TOP_LEVEL_IRP: usize = 0x01;
/// `FSRTL_CACHE_TOP_LEVEL_IRP` (ntifs.h): the cache manager is the top-level component (the lazy
/// writer, read-ahead).
pub const FSRTL_CACHE_TOP_LEVEL_IRP: usize = 0x02;

thread_local! {
    /// The thread's `TopLevelIrp` (`IoGetTopLevelIrp`): 0, or one of the `FSRTL_*_TOP_LEVEL_IRP`.
    static TOP_LEVEL_IRP: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `f` with the calling thread's top-level IRP set to `FSRTL_FSP_TOP_LEVEL_IRP`, as when the
/// I/O is issued from inside a file system: file-system recursion is then unsafe, and
/// `FltGetFileNameInformation` (unless the name is cached) and `FltQueryInformationFile` refuse
/// ("`IoGetTopLevelIrp` function (ntifs.h)").
pub fn with_top_level_irp<R>(f: impl FnOnce() -> R) -> R {
    with_top_level(FSRTL_FSP_TOP_LEVEL_IRP, f)
}

/// Runs `f` with the calling thread's top-level IRP set to `value`.
pub(crate) fn with_top_level<R>(value: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            TOP_LEVEL_IRP.with(|set| set.set(self.0));
        }
    }
    let _restore = Restore(TOP_LEVEL_IRP.with(|set| set.replace(value)));
    f()
}

/// Whether the calling thread's top-level IRP is set ([`with_top_level_irp`]).
pub(crate) fn top_level_irp_set() -> bool {
    TOP_LEVEL_IRP.with(std::cell::Cell::get) != 0
}

/// `IoGetTopLevelIrp` ("`IoGetTopLevelIrp` function (ntifs.h)"): the thread's `TopLevelIrp`, NULL
/// unless the I/O runs inside a file system ([`with_top_level_irp`]) or for the cache manager (the
/// lazy writer's paging writes: `FSRTL_CACHE_TOP_LEVEL_IRP`). IRQL <= `DISPATCH_LEVEL`.
#[unsafe(no_mangle)]
pub extern "system" fn IoGetTopLevelIrp() -> *mut IRP {
    irql::check_max("IoGetTopLevelIrp", irql::DISPATCH_LEVEL);
    std::ptr::with_exposed_provenance_mut(TOP_LEVEL_IRP.with(std::cell::Cell::get))
}

/// `KeBugCheckEx`: stops the machine. Here: panics with the code and the four parameters in hex,
/// which aborts the process (the panic cannot leave this `extern "system"` function).
/// Any IRQL.
#[unsafe(no_mangle)]
pub extern "system" fn KeBugCheckEx(
    bugcheckcode: BUGCHECK_ERROR,
    bugcheckparameter1: usize,
    bugcheckparameter2: usize,
    bugcheckparameter3: usize,
    bugcheckparameter4: usize,
) {
    panic!(
        "fltsim: KeBugCheckEx({bugcheckcode:#010X}, {bugcheckparameter1:#018X}, \
         {bugcheckparameter2:#018X}, {bugcheckparameter3:#018X}, {bugcheckparameter4:#018X})"
    );
}

/// `KeQuerySystemTimePrecise`: the current system time, in 100-ns intervals since 1601-01-01 (UTC).
/// Any IRQL.
///
/// # Safety
/// `currenttime` must be valid for an 8-byte write.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn KeQuerySystemTimePrecise(currenttime: *mut i64) {
    assert!(
        !currenttime.is_null(),
        "fltsim: KeQuerySystemTimePrecise: CurrentTime is NULL (an access violation in kernel mode: bugcheck)"
    );
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let intervals =
        i64::try_from(since_unix.as_nanos() / 100).unwrap_or(i64::MAX - EPOCH_DIFFERENCE_100NS);
    // SAFETY: non-null (checked); the caller's contract makes it valid for an 8-byte write.
    unsafe { currenttime.write_unaligned(intervals + EPOCH_DIFFERENCE_100NS) };
}

/// `vDbgPrintEx`: formats `format` with the x64 `va_list` `arglist` (consecutive 8-byte argument
/// slots) and records the line with its component and level. Returns `STATUS_SUCCESS` (0).
/// IRQL <= DIRQL; the Unicode format codes only at `PASSIVE_LEVEL`.
///
/// Supported: `%%`, `%c`, `%s`/`%hs`, `%ws`/`%ls`/`%S` (wide strings), `%wZ` (`UNICODE_STRING*`),
/// `%d %i %u %x %X` with the size prefixes `h`, `l` (32 bits, as on Windows), `ll`, `I64`, `I32`, `I`
/// (pointer size), and `%p`; flags `- 0 # + space`, a width and a precision given as digits.
/// Anything else panics naming the code, rather than printing garbage.
///
/// # Safety
/// `format` must be a NUL-terminated string and `arglist` must hold one 8-byte slot per argument the
/// format consumes, each of the type its code expects (pointers valid for reading).
#[unsafe(no_mangle)]
pub unsafe extern "system" fn vDbgPrintEx(
    componentid: u32,
    level: u32,
    format: PCSTR,
    arglist: *const i8,
) -> u32 {
    assert!(!format.is_null(), "fltsim: vDbgPrintEx: Format is NULL");
    // SAFETY: the caller's contract: a NUL-terminated format string.
    let format = unsafe { std::ffi::CStr::from_ptr(format.cast()) }.to_bytes();
    let mut slots = Slots {
        next: arglist.cast(),
    };
    // SAFETY: the caller's contract: one slot of the right type per argument the format consumes.
    let mut text = match unsafe { printf(format, &mut slots) } {
        Ok(text) => text,
        Err(message) => panic!("fltsim: vDbgPrintEx: {message}"),
    };
    if text.len() > MAX_DEBUG_LINE {
        let mut end = MAX_DEBUG_LINE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    if std::env::var_os("FLTSIM_LOG").is_some_and(|v| v == "1") {
        eprintln!(
            "[dbgprint {componentid}:{level}] {}",
            text.trim_end_matches('\n')
        );
    }
    log().push(DebugLine {
        component: componentid,
        level,
        text,
    });
    0
}

const _: [unsafe extern "system" fn() -> *mut IRP; 2] = [
    IoGetTopLevelIrp,
    windows_sys::Wdk::System::SystemServices::IoGetTopLevelIrp,
];
const _: [unsafe extern "system" fn(BUGCHECK_ERROR, usize, usize, usize, usize); 2] = [
    KeBugCheckEx,
    windows_sys::Wdk::System::SystemServices::KeBugCheckEx,
];
const _: [unsafe extern "system" fn(*mut i64); 2] = [
    KeQuerySystemTimePrecise,
    windows_sys::Wdk::System::SystemServices::KeQuerySystemTimePrecise,
];
// windows-sys files vDbgPrintEx under ntdll.dll; a driver imports it from ntoskrnl.exe with the same
// signature.
const _: [unsafe extern "system" fn(u32, u32, PCSTR, *const i8) -> u32; 2] = [
    vDbgPrintEx,
    windows_sys::Wdk::System::SystemServices::vDbgPrintEx,
];

/// The x64 `va_list`: a cursor over consecutive 8-byte argument slots.
struct Slots {
    next: *const u64,
}

impl Slots {
    /// The next slot's 8 bytes.
    ///
    /// # Safety
    /// The `va_list` must hold another argument.
    unsafe fn take(&mut self) -> Result<u64, String> {
        if self.next.is_null() {
            return Err("the format consumes an argument but arglist is NULL".into());
        }
        // SAFETY: the caller's contract: another 8-byte slot follows.
        let value = unsafe { self.next.read_unaligned() };
        self.next = self.next.wrapping_add(1);
        Ok(value)
    }

    /// The next slot as a pointer.
    ///
    /// # Safety
    /// As [`Slots::take`].
    unsafe fn take_pointer<T>(&mut self) -> Result<*const T, String> {
        // SAFETY: the caller's contract.
        let raw = unsafe { self.take() }?;
        // x64 pointers are 8 bytes, the size of a slot.
        #[allow(clippy::cast_possible_truncation, reason = "64-bit host, like x64")]
        Ok(std::ptr::with_exposed_provenance(raw as usize))
    }
}

/// One parsed conversion specification.
#[derive(Default)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "one bool per printf flag character"
)]
struct Spec {
    left: bool,
    zero: bool,
    alternate: bool,
    plus: bool,
    space: bool,
    width: usize,
    precision: Option<usize>,
}

impl Spec {
    /// Pads `body` (after its `prefix`: sign or `0x`) to the width.
    fn pad(&self, out: &mut String, prefix: &str, body: &str) {
        let len = prefix.chars().count() + body.chars().count();
        let fill = self.width.saturating_sub(len);
        if self.left {
            out.push_str(prefix);
            out.push_str(body);
            out.extend(std::iter::repeat_n(' ', fill));
        } else if self.zero && self.precision.is_none() {
            out.push_str(prefix);
            out.extend(std::iter::repeat_n('0', fill));
            out.push_str(body);
        } else {
            out.extend(std::iter::repeat_n(' ', fill));
            out.push_str(prefix);
            out.push_str(body);
        }
    }
}

/// Integer argument sizes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Size {
    Char,
    Short,
    Int,
    Long64,
    Wide,
}

/// Reads digits at `format[*at..]`.
fn digits(format: &[u8], at: &mut usize) -> usize {
    let mut value = 0usize;
    while let Some(&c) = format.get(*at).filter(|c| c.is_ascii_digit()) {
        value = value
            .saturating_mul(10)
            .saturating_add(usize::from(c - b'0'));
        *at += 1;
    }
    value
}

/// Formats like the kernel's printf for the supported codes.
///
/// # Safety
/// As [`vDbgPrintEx`]: the slots match the format.
unsafe fn printf(format: &[u8], slots: &mut Slots) -> Result<String, String> {
    let mut out = String::new();
    let mut at = 0;
    while at < format.len() {
        let c = format[at];
        at += 1;
        if c != b'%' {
            out.push(char::from(c));
            continue;
        }
        let start = at - 1;
        let mut spec = Spec::default();
        while let Some(&flag) = format.get(at) {
            match flag {
                b'-' => spec.left = true,
                b'0' => spec.zero = true,
                b'#' => spec.alternate = true,
                b'+' => spec.plus = true,
                b' ' => spec.space = true,
                _ => break,
            }
            at += 1;
        }
        if format.get(at) == Some(&b'*') {
            return Err("`*` widths are not supported by the simulator".into());
        }
        spec.width = digits(format, &mut at);
        if format.get(at) == Some(&b'.') {
            at += 1;
            if format.get(at) == Some(&b'*') {
                return Err("`.*` precisions are not supported by the simulator".into());
            }
            spec.precision = Some(digits(format, &mut at));
        }
        let rest = &format[at..];
        let (size, skip) = if rest.starts_with(b"I64") || rest.starts_with(b"ll") {
            (Size::Long64, if rest[0] == b'I' { 3 } else { 2 })
        } else if rest.starts_with(b"I32") {
            (Size::Int, 3)
        } else if rest.starts_with(b"hh") {
            (Size::Char, 2)
        } else {
            match rest.first() {
                Some(b'I') => (Size::Long64, 1),
                Some(b'h') => (Size::Short, 1),
                Some(b'l') => (Size::Int, 1),
                Some(b'w') => (Size::Wide, 1),
                _ => (Size::Int, 0),
            }
        };
        let long_prefix = rest.first() == Some(&b'l');
        at += skip;
        let Some(&conversion) = format.get(at) else {
            return Err(format!(
                "format ends inside the code {:?}",
                String::from_utf8_lossy(&format[start..])
            ));
        };
        at += 1;
        let code = String::from_utf8_lossy(&format[start..at]).into_owned();
        let wide = size == Size::Wide || (long_prefix && matches!(conversion, b's' | b'c'));
        // SAFETY: the caller's contract.
        unsafe { convert(&mut out, &spec, size, wide, conversion, &code, slots) }?;
    }
    Ok(out)
}

/// Formats one conversion (`code`, e.g. `%08lx`) into `out`.
///
/// # Safety
/// As [`vDbgPrintEx`]: the next slots match the code.
unsafe fn convert(
    out: &mut String,
    spec: &Spec,
    size: Size,
    wide: bool,
    conversion: u8,
    code: &str,
    slots: &mut Slots,
) -> Result<(), String> {
    match conversion {
        b'%' => out.push('%'),
        b'd' | b'i' | b'u' | b'x' | b'X' if size != Size::Wide => {
            // SAFETY: the caller's contract.
            let raw = unsafe { slots.take() }?;
            integer(out, spec, conversion, size, raw);
        }
        b'p' => {
            // SAFETY: the caller's contract.
            let raw = unsafe { slots.take() }?;
            spec.pad(out, "", &format!("{raw:016X}"));
        }
        b'c' if !wide => {
            // SAFETY: the caller's contract.
            let raw = unsafe { slots.take() }?;
            spec.pad(out, "", &char::from(raw.to_le_bytes()[0]).to_string());
        }
        b's' if !wide => {
            // SAFETY: the caller's contract.
            let pointer = unsafe { slots.take_pointer::<std::ffi::c_char>() }?;
            let text = if pointer.is_null() {
                "(null)".to_owned()
            } else {
                // SAFETY: the caller's contract: a NUL-terminated string.
                String::from_utf8_lossy(unsafe { std::ffi::CStr::from_ptr(pointer) }.to_bytes())
                    .into_owned()
            };
            spec.pad(out, "", &truncate(&text, spec.precision));
        }
        b's' | b'S' => {
            passive_only(code);
            // SAFETY: the caller's contract: a NUL-terminated wide string.
            let text = unsafe { wide_string(slots.take_pointer()?) };
            spec.pad(out, "", &truncate(&text, spec.precision));
        }
        b'Z' if size == Size::Wide => {
            passive_only(code);
            // SAFETY: the caller's contract: a UNICODE_STRING*.
            let text = unsafe { unicode_string(slots.take_pointer()?) };
            spec.pad(out, "", &truncate(&text, spec.precision));
        }
        b'f' | b'e' | b'E' | b'g' | b'G' | b'a' | b'A' => {
            return Err(format!(
                "floating-point format code {code} (vDbgPrintEx supports none)"
            ));
        }
        _ => return Err(format!("unsupported format code {code}")),
    }
    Ok(())
}

/// Panics unless at `PASSIVE_LEVEL`, for a Unicode format code (DbgPrint-family contract).
fn passive_only(code: &str) {
    let now = irql::current();
    assert!(
        now == PASSIVE_LEVEL,
        "fltsim: IRQL_NOT_LESS_OR_EQUAL: vDbgPrintEx with the Unicode format code {code} at IRQL {now} \
         (Unicode format codes only at PASSIVE_LEVEL)"
    );
}

/// Formats one integer conversion.
fn integer(out: &mut String, spec: &Spec, conversion: u8, size: Size, raw: u64) {
    let signed = matches!(conversion, b'd' | b'i');
    // Truncation to the argument's size is the point: the slot holds a value of that C type.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "C argument sizes"
    )]
    let (negative, magnitude) = match (signed, size) {
        (true, Size::Char) => split(i64::from(raw as u8 as i8)),
        (true, Size::Short) => split(i64::from(raw as u16 as i16)),
        (true, Size::Int | Size::Wide) => split(i64::from(raw as u32 as i32)),
        (true, Size::Long64) => split(raw as i64),
        (false, Size::Char) => (false, u64::from(raw as u8)),
        (false, Size::Short) => (false, u64::from(raw as u16)),
        (false, Size::Int | Size::Wide) => (false, u64::from(raw as u32)),
        (false, Size::Long64) => (false, raw),
    };
    let mut body = String::new();
    match conversion {
        b'x' => write!(body, "{magnitude:x}"),
        b'X' => write!(body, "{magnitude:X}"),
        _ => write!(body, "{magnitude}"),
    }
    .unwrap_or_default();
    if let Some(precision) = spec.precision {
        if precision == 0 && magnitude == 0 {
            body.clear();
        }
        while body.len() < precision {
            body.insert(0, '0');
        }
    }
    let prefix = match conversion {
        b'x' if spec.alternate && magnitude != 0 => "0x",
        b'X' if spec.alternate && magnitude != 0 => "0X",
        _ if negative => "-",
        b'd' | b'i' if spec.plus => "+",
        b'd' | b'i' if spec.space => " ",
        _ => "",
    };
    spec.pad(out, prefix, &body);
}

/// Sign and magnitude of `value`.
const fn split(value: i64) -> (bool, u64) {
    (value < 0, value.unsigned_abs())
}

/// `text` cut at `precision` characters, if given.
fn truncate(text: &str, precision: Option<usize>) -> String {
    precision.map_or_else(|| text.to_owned(), |max| text.chars().take(max).collect())
}

/// A NUL-terminated UTF-16 string, or `(null)`.
///
/// # Safety
/// `pointer` is null or points to a NUL-terminated UTF-16 string.
unsafe fn wide_string(pointer: *const u16) -> String {
    if pointer.is_null() {
        return "(null)".into();
    }
    let mut len = 0;
    // SAFETY: the string is NUL-terminated, so every unit up to the NUL is readable.
    while unsafe { pointer.add(len).read_unaligned() } != 0 {
        len += 1;
    }
    // SAFETY: `len` units were just read.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(pointer, len) })
}

/// The `Length` bytes of a `UNICODE_STRING`, or `(null)`.
///
/// # Safety
/// `string` is null or points to a `UNICODE_STRING` whose `Buffer` holds `Length` readable bytes.
unsafe fn unicode_string(string: *const UNICODE_STRING) -> String {
    if string.is_null() {
        return "(null)".into();
    }
    // SAFETY: non-null, the caller's contract.
    let string = unsafe { &*string };
    if string.Buffer.is_null() {
        return "(null)".into();
    }
    // SAFETY: `Buffer` holds `Length` bytes (the UNICODE_STRING contract).
    let units =
        unsafe { std::slice::from_raw_parts(string.Buffer, usize::from(string.Length / 2)) };
    String::from_utf16_lossy(units)
}
