//! Emulation of CR8 accesses in image code (x86-64 Linux).
//!
//! On x64 Windows the IRQL *is* CR8, the task-priority register: the WDK's `KeGetCurrentIrql` is
//! `__readcr8()`, `KeRaiseIrql`/`KeLowerIrql` write it, and a debug build's IRQL assertions read
//! it. In a user-mode process `mov r64, cr8` (`REX? 0F 20 /r`) and `mov cr8, r64` (`REX? 0F 22 /r`)
//! are privileged: the CPU raises a general-protection fault, which Linux delivers as `SIGSEGV`
//! (under valgrind, which does not decode moves to and from control registers, the same
//! instruction raises `SIGILL`). A handler of both signals catches the fault when its instruction
//! pointer lies in the executable section of a loaded image and the instruction is such an access
//! to CR8, performs it against the calling thread's simulated IRQL, and resumes after the
//! instruction.
//!
//! Every other fault is forwarded: the handler puts the previous handler back (Rust's own, which
//! reports stack overflows, or the default action) and returns, so the faulting instruction runs
//! again and faults into it. Before that it says on stderr what it saw when the fault is in image
//! code: an instruction it does not emulate, or code of an image that was already unloaded (a call
//! into an unloaded driver, `DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS` on Windows).
//!
//! The handler only reads atomics, the faulting thread's IRQL (a thread-local `Cell` without a
//! destructor) and image code, and writes with `write(2)`: all of which a signal handler may do.
//!
//! `SIGSEGV` is handled on the thread's alternate signal stack (`SA_ONSTACK`; Rust's runtime gives
//! every thread one), so that a stack overflow still reaches the handler and, forwarded, Rust's.
//! `SIGILL` (valgrind's CR8 fault, or an undefined instruction; never a stack overflow) is handled
//! on the interrupted stack, because memcheck loses track of the stack pointer after a handler on an
//! alternate stack when the thread was descheduled while the handler ran. Valgrind keeps one
//! process-wide "current stack", the registered stack (the main one and each thread's) that the
//! stack pointer was last seen in: a thread taking the scheduler lock back sets it to its own
//! stack, but a thread inside a handler is on its alternate stack, which is not registered, so the
//! current stack stays that of the thread that ran meanwhile. Once the handler has returned, the
//! thread's first stack-pointer move by an amount valgrind does not special-case (`sub rsp, 0xa8`
//! in a win64 shim's prologue, say) is taken for a switch back to the thread's stack and not
//! tracked: the new frame's bytes more than 128 below the old stack pointer stay unaddressable and
//! memcheck reports the frame's own writes to them as invalid (valgrind 3.19:
//! `VG_(unknown_SP_update)` in `coregrind/m_stacks.c`, called on lock acquisition in
//! `coregrind/m_scheduler/scheduler.c`).

use std::ffi::c_void;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// Ranges the handler knows; each loaded image uses one per executable section plus one for the
/// whole image.
const SLOTS: usize = 32;

/// A free slot.
const FREE: u8 = 0;
/// Executable code of a loaded image: CR8 accesses there are emulated.
const CODE: u8 = 1;
/// The whole address range of an image whose driver was unloaded.
const RETIRED: u8 = 2;
/// Being written.
const BUSY: u8 = 3;

/// One registered range `[start, end)`.
struct Slot {
    state: AtomicU8,
    start: AtomicUsize,
    end: AtomicUsize,
}

static RANGES: [Slot; SLOTS] = [const {
    Slot {
        state: AtomicU8::new(FREE),
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
    }
}; SLOTS];

/// The signals a CR8 access raises: `SIGSEGV` on the CPU, `SIGILL` under valgrind.
const SIGNALS: [i32; 2] = [libc::SIGSEGV, libc::SIGILL];

/// The `sa_flags` the handler of `signal` is installed with: `SIGSEGV`'s runs on the alternate
/// signal stack, `SIGILL`'s on the interrupted one (why: the module documentation).
fn action_flags(signal: i32) -> i32 {
    if signal == libc::SIGSEGV {
        libc::SA_SIGINFO | libc::SA_ONSTACK
    } else {
        libc::SA_SIGINFO
    }
}

/// The handlers that were installed before ours, per signal of [`SIGNALS`].
static PREVIOUS: [OnceLock<libc::sigaction>; 2] = [const { OnceLock::new() }; 2];

/// Installs the handler (once per process).
pub(crate) fn install() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    for (signal, previous) in SIGNALS.into_iter().zip(&PREVIOUS) {
        previous.get_or_init(|| {
            // SAFETY: `sigaction` is plain data for which all-zero bytes are valid.
            let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: queries the current action of `signal` into `previous`; changes nothing.
            let status = unsafe { libc::sigaction(signal, std::ptr::null(), &raw mut previous) };
            assert_eq!(
                status, 0,
                "fltsim: image loader: sigaction({signal}) query failed"
            );
            previous
        });
    }
    INSTALLED.call_once(|| {
        // SAFETY: `sigaction` is plain data for which all-zero bytes are valid.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_fault as *const () as usize;
        // SAFETY: `action.sa_mask` is a valid signal set to initialize.
        unsafe { libc::sigemptyset(&raw mut action.sa_mask) };
        for signal in SIGNALS {
            action.sa_flags = action_flags(signal);
            // SAFETY: installs a handler with the signature SA_SIGINFO requires; the previous
            // action was saved above, before this one can run.
            let status =
                unsafe { libc::sigaction(signal, &raw const action, std::ptr::null_mut()) };
            assert_eq!(
                status, 0,
                "fltsim: image loader: sigaction({signal}) failed"
            );
        }
    });
}

/// Records `[start, end)` as image code (`retired == false`) or as a retired image.
pub(crate) fn register(start: usize, end: usize, retired: bool) {
    let state = if retired { RETIRED } else { CODE };
    for slot in &RANGES {
        if slot
            .state
            .compare_exchange(FREE, BUSY, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            slot.start.store(start, Ordering::Relaxed);
            slot.end.store(end, Ordering::Relaxed);
            slot.state.store(state, Ordering::Release);
            return;
        }
    }
    panic!("fltsim: image loader: more than {SLOTS} image ranges registered at once");
}

/// Forgets every range starting inside `[start, end)`.
pub(crate) fn unregister(start: usize, end: usize) {
    for slot in &RANGES {
        let state = slot.state.load(Ordering::Acquire);
        if (state == CODE || state == RETIRED)
            && (start..end).contains(&slot.start.load(Ordering::Relaxed))
        {
            slot.state.store(FREE, Ordering::Release);
        }
    }
}

/// What kind of registered range `address` is in, with its end.
fn classify(address: usize) -> Option<(u8, usize)> {
    RANGES.iter().find_map(|slot| {
        let state = slot.state.load(Ordering::Acquire);
        if state != CODE && state != RETIRED {
            return None;
        }
        let (start, end) = (
            slot.start.load(Ordering::Relaxed),
            slot.end.load(Ordering::Relaxed),
        );
        (start..end).contains(&address).then_some((state, end))
    })
}

/// A decoded `mov` to or from CR8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cr8Access {
    /// `true` for `mov cr8, r64` (a write), `false` for `mov r64, cr8`.
    pub write: bool,
    /// The general register, numbered as the encoding does (0 = RAX ... 15 = R15).
    pub register: u8,
    /// Instruction length in bytes.
    pub length: usize,
}

/// Decodes `bytes` as `REX? 0F 20 /r` or `REX? 0F 22 /r` with CR8 as the control register.
///
/// The `ModRM` byte's `reg` field (extended by REX.R) names the control register and its `rm` field
/// (extended by REX.B) the general register; the `mod` bits are ignored, as the CPU ignores them
/// for these instructions (Intel SDM, "MOV—Move to/from Control Registers").
pub(crate) fn decode(bytes: &[u8]) -> Option<Cr8Access> {
    let (rex, rest) = match bytes.first()? {
        &rex @ 0x40..=0x4F => (rex, &bytes[1..]),
        _ => (0, bytes),
    };
    let [0x0F, opcode @ (0x20 | 0x22), modrm, ..] = *rest else {
        return None;
    };
    let control = ((rex >> 2) & 1) << 3 | (modrm >> 3) & 7;
    if control != 8 {
        return None;
    }
    Some(Cr8Access {
        write: opcode == 0x22,
        register: (rex & 1) << 3 | modrm & 7,
        length: if rex == 0 { 3 } else { 4 },
    })
}

/// The `gregs` index of general register `register` (encoding order: RAX, RCX, RDX, RBX, RSP,
/// RBP, RSI, RDI, R8..R15).
fn greg_index(register: u8) -> usize {
    let index = match register {
        0 => libc::REG_RAX,
        1 => libc::REG_RCX,
        2 => libc::REG_RDX,
        3 => libc::REG_RBX,
        4 => libc::REG_RSP,
        5 => libc::REG_RBP,
        6 => libc::REG_RSI,
        7 => libc::REG_RDI,
        n => libc::REG_R8 + i32::from(n - 8),
    };
    usize::try_from(index).unwrap_or(0)
}

/// A fixed buffer that formats without allocating.
struct Message {
    bytes: [u8; 256],
    len: usize,
}

impl std::fmt::Write for Message {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let take = text.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + take].copy_from_slice(&text.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

/// Writes a line to stderr with `write(2)`.
fn say(args: std::fmt::Arguments<'_>) {
    let mut message = Message {
        bytes: [0; 256],
        len: 0,
    };
    let _ = message.write_fmt(args);
    let _ = message.write_str("\n");
    // SAFETY: writes `len` initialized bytes of `message` to stderr; write(2) is async-signal-safe.
    unsafe { libc::write(2, message.bytes.as_ptr().cast::<c_void>(), message.len) };
}

/// The `SIGSEGV` and `SIGILL` handler.
extern "C" fn on_fault(signal: i32, info: *mut libc::siginfo_t, context: *mut c_void) {
    let context = context.cast::<libc::ucontext_t>();
    // SAFETY: the kernel passes the interrupted context of this thread; RIP is in `gregs`.
    let rip = unsafe { (*context).uc_mcontext.gregs[greg_index_rip()] };
    let rip = usize::try_from(rip.cast_unsigned()).unwrap_or(0);
    match classify(rip) {
        Some((CODE, end)) => {
            // SAFETY: `rip..end` lies in the executable section of a loaded image, readable code.
            let code = unsafe { std::slice::from_raw_parts(rip as *const u8, (end - rip).min(4)) };
            if let Some(access) = decode(code) {
                // SAFETY: the interrupted context of this thread, which the kernel restores when
                // the handler returns; nothing else refers to it while the handler runs.
                let gregs = unsafe { &mut (*context).uc_mcontext.gregs };
                let emulated = emulate(gregs, access, rip);
                if emulated {
                    return;
                }
                say(format_args!(
                    "fltsim: driver image wrote {:#x} to CR8 at RIP {rip:#x}: not an IRQL \
                     (reserved bits set: #GP on Windows); forwarding the fault",
                    gregs[greg_index(access.register)]
                ));
            } else {
                say(format_args!(
                    "fltsim: fault in driver image code at RIP {rip:#x}, bytes {code:02x?}: not a \
                     CR8 access; forwarding it"
                ));
            }
        }
        Some(_) => say(format_args!(
            "fltsim: DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS (0xCE): code of an \
             unloaded driver image ran (RIP {rip:#x})"
        )),
        None => {}
    }
    forward(signal, info);
}

/// `gregs` index of RIP.
fn greg_index_rip() -> usize {
    usize::try_from(libc::REG_RIP).unwrap_or(0)
}

/// Performs `access` on the interrupted registers and skips the instruction; `false` for a write
/// of a value that is not an IRQL.
fn emulate(gregs: &mut [libc::greg_t; 23], access: Cr8Access, rip: usize) -> bool {
    let register = greg_index(access.register);
    if access.write {
        // CR8 holds the IRQL in bits 0-3; the other bits are reserved (writing them faults).
        match u8::try_from(gregs[register].cast_unsigned()) {
            Ok(level) if level <= 15 => crate::irql::set(level),
            _ => return false,
        }
    } else {
        gregs[register] = libc::greg_t::from(crate::irql::current());
    }
    gregs[greg_index_rip()] = ((rip + access.length) as u64).cast_signed();
    true
}

/// Hands the fault to the previous handler: reinstalls it and lets the instruction fault again (or,
/// for a signal another thread or process sent, raises it again).
fn forward(signal: i32, info: *mut libc::siginfo_t) {
    let Some(previous) = SIGNALS
        .iter()
        .position(|&s| s == signal)
        .and_then(|i| PREVIOUS[i].get())
    else {
        return;
    };
    // SAFETY: restores the action that was installed before ours (saved by `install`).
    unsafe { libc::sigaction(signal, previous, std::ptr::null_mut()) };
    // SAFETY: the kernel passes a valid siginfo.
    let sent = unsafe { (*info).si_code } <= 0;
    if sent {
        // SAFETY: re-raises the signal, now handled by the previous action once we return.
        unsafe { libc::raise(signal) };
    }
}

#[cfg(test)]
mod tests {
    use super::{Cr8Access, decode, install};

    /// The flags of the action installed for `signal`.
    fn installed_flags(signal: i32) -> i32 {
        // SAFETY: `sigaction` is plain data for which all-zero bytes are valid.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: queries the current action of `signal` into `action`; changes nothing.
        let status = unsafe { libc::sigaction(signal, std::ptr::null(), &raw mut action) };
        assert_eq!(status, 0);
        action.sa_flags
    }

    #[test]
    fn sigsegv_is_handled_on_the_alternate_stack_and_sigill_on_the_interrupted_one() {
        install();
        let segv = installed_flags(libc::SIGSEGV);
        let ill = installed_flags(libc::SIGILL);
        assert_ne!(segv & libc::SA_SIGINFO, 0);
        assert_ne!(
            segv & libc::SA_ONSTACK,
            0,
            "a stack overflow must still reach the handler"
        );
        assert_ne!(ill & libc::SA_SIGINFO, 0);
        assert_eq!(
            ill & libc::SA_ONSTACK,
            0,
            "valgrind's CR8 SIGILL must not leave the thread's stack"
        );
    }

    #[test]
    fn reads_and_writes_of_cr8_decode_with_their_register() {
        // mov r8, cr8 (what the debug image's IRQL assertions compile to)
        assert_eq!(
            decode(&[0x45, 0x0F, 0x20, 0xC0]),
            Some(Cr8Access {
                write: false,
                register: 8,
                length: 4
            })
        );
        // mov rax, cr8
        assert_eq!(
            decode(&[0x44, 0x0F, 0x20, 0xC0, 0x90]),
            Some(Cr8Access {
                write: false,
                register: 0,
                length: 4
            })
        );
        // mov cr8, rcx
        assert_eq!(
            decode(&[0x44, 0x0F, 0x22, 0xC1]),
            Some(Cr8Access {
                write: true,
                register: 1,
                length: 4
            })
        );
        // mov cr8, r15
        assert_eq!(
            decode(&[0x45, 0x0F, 0x22, 0xC7]),
            Some(Cr8Access {
                write: true,
                register: 15,
                length: 4
            })
        );
    }

    #[test]
    fn other_control_registers_and_instructions_are_not_emulated() {
        assert_eq!(decode(&[0x0F, 0x20, 0xD8]), None, "mov rax, cr3");
        assert_eq!(decode(&[0x0F, 0x20, 0xC0]), None, "mov rax, cr0");
        assert_eq!(decode(&[0x0F, 0x22, 0xE0]), None, "mov cr4, rax");
        assert_eq!(decode(&[0x48, 0x8B, 0x00]), None, "mov rax, [rax]");
        assert_eq!(decode(&[0x44, 0x0F]), None, "cut short");
        assert_eq!(decode(&[]), None);
    }
}
