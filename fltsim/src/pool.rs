//! Simulated pool: `ExAllocatePool2` / `ExFreePoolWithTag`, accounting by tag and pool, and Driver
//! Verifier-style fault injection.
//!
//! Contract (Microsoft's `ExAllocatePool2`, `ExFreePoolWithTag` and `POOL_FLAGS` pages):
//! - memory is zeroed unless `POOL_FLAG_UNINITIALIZED` (then the simulator fills it with
//!   [`UNINITIALIZED_FILL`] so that code relying on zeroes shows up, or, with
//!   [`UNINITIALIZED_POOL_VAR`] set to `undefined`, leaves it undefined for memcheck); blocks are 16-byte aligned as on
//!   x64, cache-line aligned with `POOL_FLAG_CACHE_ALIGNED`, page aligned from `PAGE_SIZE` up;
//! - it returns **NULL** (or raises with `POOL_FLAG_RAISE_ON_FAILURE`) on insufficient memory, a zero
//!   tag, or invalid `POOL_FLAGS`: exactly one of `POOL_FLAG_NON_PAGED`, `POOL_FLAG_NON_PAGED_EXECUTE`,
//!   `POOL_FLAG_PAGED`, and no reserved or unknown flag in the low 32 bits ("required" flags: the
//!   allocation fails if they cannot be satisfied); unknown flags in the high 32 bits ("optional")
//!   are ignored;
//! - `NumberOfBytes` must be non-zero, and paged pool is only touched at IRQL <= `APC_LEVEL`,
//!   nonpaged at <= `DISPATCH_LEVEL`; a free must name an allocated block, once, with its tag.
//!
//! Violations panic with the bug check Windows raises, `BAD_POOL_CALLER` (0xC2) and its first
//! parameter (Microsoft's "Bug Check 0xC2" page), naming the Driver Verifier (0xC4) equivalent when
//! there is one. A raised exception (`POOL_FLAG_RAISE_ON_FAILURE`) cannot be caught by Rust code, so it
//! panics too (an unhandled kernel exception is a bugcheck). Raised inside the `extern "system"`
//! exports, these panics abort the process ([`crate::bugcheck`]).

use crate::verifier::tag_text;
use std::alloc::Layout;
use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::irql::{self, APC_LEVEL, DISPATCH_LEVEL};

// `POOL_FLAG_*` values from wdm.h (Microsoft's POOL_FLAGS page). windows-sys does not carry them: they
// are preprocessor defines outside the Win32 metadata it is generated from.
/// `POOL_FLAG_USE_QUOTA`: charge the current process's quota (not simulated).
pub const POOL_FLAG_USE_QUOTA: u64 = 0x1;
/// `POOL_FLAG_UNINITIALIZED`: do not zero the allocation.
pub const POOL_FLAG_UNINITIALIZED: u64 = 0x2;
/// `POOL_FLAG_SESSION`: session-specific pool (accounted like the pool type it names).
pub const POOL_FLAG_SESSION: u64 = 0x4;
/// `POOL_FLAG_CACHE_ALIGNED`: cache-line aligned allocation.
pub const POOL_FLAG_CACHE_ALIGNED: u64 = 0x8;
/// `POOL_FLAG_RESERVED1`: reserved for system use (invalid for drivers).
pub const POOL_FLAG_RESERVED1: u64 = 0x10;
/// `POOL_FLAG_RAISE_ON_FAILURE`: raise an exception instead of returning NULL.
pub const POOL_FLAG_RAISE_ON_FAILURE: u64 = 0x20;
/// `POOL_FLAG_NON_PAGED`: nonpaged, no-execute pool.
pub const POOL_FLAG_NON_PAGED: u64 = 0x40;
/// `POOL_FLAG_NON_PAGED_EXECUTE`: nonpaged executable pool.
pub const POOL_FLAG_NON_PAGED_EXECUTE: u64 = 0x80;
/// `POOL_FLAG_PAGED`: paged pool.
pub const POOL_FLAG_PAGED: u64 = 0x100;
/// `POOL_FLAG_RESERVED2`: reserved for system use (invalid for drivers).
pub const POOL_FLAG_RESERVED2: u64 = 0x200;
/// `POOL_FLAG_RESERVED3`: reserved for system use (invalid for drivers).
pub const POOL_FLAG_RESERVED3: u64 = 0x400;

/// The "required" half of `POOL_FLAGS`: an unknown flag here makes the allocation fail.
const REQUIRED_MASK: u64 = 0xFFFF_FFFF;
/// The required flags a driver may pass.
const KNOWN_REQUIRED: u64 = POOL_FLAG_USE_QUOTA
    | POOL_FLAG_UNINITIALIZED
    | POOL_FLAG_SESSION
    | POOL_FLAG_CACHE_ALIGNED
    | POOL_FLAG_RAISE_ON_FAILURE
    | POOL_FLAG_NON_PAGED
    | POOL_FLAG_NON_PAGED_EXECUTE
    | POOL_FLAG_PAGED;
/// The pool-type flags, of which exactly one must be given.
const POOL_TYPES: u64 = POOL_FLAG_NON_PAGED | POOL_FLAG_NON_PAGED_EXECUTE | POOL_FLAG_PAGED;

/// Byte written over `POOL_FLAG_UNINITIALIZED` allocations.
pub const UNINITIALIZED_FILL: u8 = 0xC5;

/// Environment variable that, set to `undefined`, leaves `POOL_FLAG_UNINITIALIZED` allocations
/// unfilled, as Windows leaves them: under valgrind's memcheck a read of a byte the driver never
/// wrote (an unset field of a fixed-size context, say) is then reported where it is used.
pub const UNINITIALIZED_POOL_VAR: &str = "FLTSIM_UNINITIALIZED_POOL";

/// Whether [`UNINITIALIZED_POOL_VAR`] asks for undefined memory (read once per process).
fn leave_undefined() -> bool {
    static UNDEFINED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *UNDEFINED.get_or_init(|| {
        std::env::var_os(UNINITIALIZED_POOL_VAR).is_some_and(|value| value == "undefined")
    })
}
/// `PAGE_SIZE` on x64.
const PAGE_SIZE: usize = 4096;
/// Alignment of small allocations on x64.
const POOL_ALIGNMENT: usize = 16;
/// Cache line size used for `POOL_FLAG_CACHE_ALIGNED`.
const CACHE_LINE: usize = 64;

/// `BAD_POOL_CALLER` parameter 1: zero-byte allocation (Verifier: 0xC4 / 0x00).
const BPC_ZERO_BYTES: u32 = 0x00;
/// `BAD_POOL_CALLER` parameter 1: free of an already freed block.
const BPC_DOUBLE_FREE: u32 = 0x07;
/// `BAD_POOL_CALLER` parameter 1: allocation at an invalid IRQL (Verifier: 0xC4 / 0x01, 0x02).
const BPC_ALLOCATE_IRQL: u32 = 0x08;
/// `BAD_POOL_CALLER` parameter 1: free at an invalid IRQL (Verifier: 0xC4 / 0x11, 0x12).
const BPC_FREE_IRQL: u32 = 0x09;
/// `BAD_POOL_CALLER` parameter 1: free with another tag than the allocation's.
const BPC_WRONG_TAG: u32 = 0x0A;
/// `BAD_POOL_CALLER` parameter 1: free of an invalid address (Verifier: 0xC4 / 0x10).
const BPC_INVALID_ADDRESS: u32 = 0x99;

/// Outstanding pool of one tag in one kind of pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolUsage {
    /// The pool tag (its bytes in memory order read as text, e.g. `u32::from_le_bytes(*b"Ital")`).
    pub tag: u32,
    /// Paged (`true`) or nonpaged pool.
    pub paged: bool,
    /// Bytes requested by the outstanding allocations.
    pub bytes: usize,
    /// Number of outstanding allocations.
    pub count: usize,
}

/// When to make allocations fail on purpose, like Driver Verifier's low-resources simulation.
///
/// Only *eligible* requests count: all valid requests, or those with `tag` when it is `Some`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FaultPlan {
    /// No injected failures.
    #[default]
    Off,
    /// Fail the `n`th, `2n`th, ... eligible request (`n` >= 1).
    EveryNth {
        /// Period.
        n: u64,
        /// Only requests with this tag are eligible.
        tag: Option<u32>,
    },
    /// Fail exactly the `n`th eligible request (`n` >= 1) and no other: the plan of a deterministic
    /// sweep, which first counts the eligible requests of a run ([`eligible_requests`], with an `n`
    /// never reached such as `u64::MAX`), then fails each of them in turn.
    Nth {
        /// The one request to fail, counting from 1.
        n: u64,
        /// Only requests with this tag are eligible.
        tag: Option<u32>,
    },
    /// Fail each eligible request with probability `per_mille / 1000`, drawn from a deterministic
    /// generator seeded with `seed` (the same request sequence fails the same way for a seed).
    Rate {
        /// Failures per thousand eligible requests (0..=1000).
        per_mille: u32,
        /// Generator seed.
        seed: u64,
        /// Only requests with this tag are eligible.
        tag: Option<u32>,
    },
}

impl FaultPlan {
    /// A [`FaultPlan::Rate`] given in percent.
    #[must_use]
    pub const fn percent(percent: u32, seed: u64, tag: Option<u32>) -> Self {
        Self::Rate {
            per_mille: percent * 10,
            seed,
            tag,
        }
    }

    const fn tag(self) -> Option<u32> {
        match self {
            Self::Off => None,
            Self::EveryNth { tag, .. } | Self::Nth { tag, .. } | Self::Rate { tag, .. } => tag,
        }
    }
}

/// One live allocation.
struct Block {
    tag: u32,
    size: usize,
    paged: bool,
    layout: Layout,
}

/// The simulated pool of the session.
#[derive(Default)]
struct Pool {
    live: HashMap<usize, Block>,
    /// Addresses freed and not reallocated since: a second free is a double free.
    freed: HashSet<usize>,
    plan: FaultPlan,
    /// Eligible requests seen under the current plan.
    eligible: u64,
    /// Generator state for [`FaultPlan::Rate`].
    rng: u64,
    injected: u64,
    /// The largest successful request per tag and kind of pool, this session.
    largest: HashMap<(u32, bool), usize>,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

fn pool() -> MutexGuard<'static, Option<Pool>> {
    POOL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn with_pool<R>(f: impl FnOnce(&mut Pool) -> R) -> R {
    f(pool().get_or_insert_with(Pool::default))
}

/// `SplitMix64`: a small, well-distributed deterministic generator.
const fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Pool {
    /// Whether the fault plan fails this request (counting it if so).
    fn inject(&mut self, tag: u32) -> bool {
        if self.plan == FaultPlan::Off || self.plan.tag().is_some_and(|only| only != tag) {
            return false;
        }
        self.eligible += 1;
        let fail = match self.plan {
            FaultPlan::Off => false,
            FaultPlan::EveryNth { n, .. } => n > 0 && self.eligible.is_multiple_of(n),
            FaultPlan::Nth { n, .. } => self.eligible == n,
            FaultPlan::Rate { per_mille, .. } => {
                splitmix64(&mut self.rng) % 1000 < u64::from(per_mille)
            }
        };
        if fail {
            self.injected += 1;
        }
        fail
    }
}

/// Forgets every allocation and the fault plan: called when a new [`crate::Sim`] starts.
///
/// Blocks still allocated by the previous session are leaked, not freed: a driver of that session
/// may still point to them.
pub(crate) fn reset() {
    *pool() = Some(Pool::default());
}

/// Outstanding allocations per tag, paged and nonpaged together: `(tag, bytes, count)`, sorted by tag.
#[must_use]
pub fn outstanding() -> Vec<(u32, usize, usize)> {
    let mut by_tag: HashMap<u32, (usize, usize)> = HashMap::new();
    for usage in outstanding_by_pool() {
        let entry = by_tag.entry(usage.tag).or_default();
        entry.0 += usage.bytes;
        entry.1 += usage.count;
    }
    let mut rows: Vec<_> = by_tag
        .into_iter()
        .map(|(tag, (bytes, count))| (tag, bytes, count))
        .collect();
    rows.sort_unstable();
    rows
}

/// Outstanding allocations per tag and kind of pool, sorted by tag, nonpaged first.
#[must_use]
pub fn outstanding_by_pool() -> Vec<PoolUsage> {
    let mut by_key: HashMap<(u32, bool), (usize, usize)> = HashMap::new();
    with_pool(|pool| {
        for block in pool.live.values() {
            let entry = by_key.entry((block.tag, block.paged)).or_default();
            entry.0 += block.size;
            entry.1 += 1;
        }
    });
    let mut rows: Vec<_> = by_key
        .into_iter()
        .map(|((tag, paged), (bytes, count))| PoolUsage {
            tag,
            paged,
            bytes,
            count,
        })
        .collect();
    rows.sort_unstable();
    rows
}

/// The largest single allocation made this session (freed or not) per tag and kind of pool:
/// `PoolUsage` rows whose `bytes` is that largest request and whose `count` is 1, sorted by tag,
/// nonpaged first. Lets a test check a bound on allocation sizes (e.g. that no table block is larger
/// than a page multiple it expects), which outstanding totals cannot show.
#[must_use]
pub fn largest_allocations() -> Vec<PoolUsage> {
    let mut rows: Vec<_> = with_pool(|pool| {
        pool.largest
            .iter()
            .map(|(&(tag, paged), &bytes)| PoolUsage {
                tag,
                paged,
                bytes,
                count: 1,
            })
            .collect()
    });
    rows.sort_unstable();
    rows
}

/// Replaces the fault plan and restarts its count of eligible requests and its generator.
pub fn set_fault_injection(plan: FaultPlan) {
    with_pool(|pool| {
        pool.plan = plan;
        pool.eligible = 0;
        pool.rng = match plan {
            FaultPlan::Rate { seed, .. } => seed,
            _ => 0,
        };
    });
}

/// Whether the fault plan fails, now, an allocation of `tag` that fltsim makes on a driver's behalf
/// without charging it to the pool (Filter Manager's own allocations, e.g. file name information).
pub(crate) fn inject_failure(tag: u32) -> bool {
    with_pool(|pool| pool.inject(tag))
}

/// Number of eligible requests the fault plan has seen since [`set_fault_injection`] last set it
/// (failed ones included): pool allocations, contexts and Filter Manager's own allocations such as
/// file name information. Always 0 under [`FaultPlan::Off`], which looks at no request.
#[must_use]
pub fn eligible_requests() -> u64 {
    with_pool(|pool| pool.eligible)
}

/// Number of allocations failed on purpose since the session started.
#[must_use]
pub fn injected_failures() -> u64 {
    with_pool(|pool| pool.injected)
}

/// Whether `flags` ask for paged pool.
#[must_use]
pub fn is_paged(flags: u64) -> bool {
    flags & POOL_TYPES == POOL_FLAG_PAGED
}

/// Whether `flags` are valid `POOL_FLAGS` for `ExAllocatePool2`.
fn flags_valid(flags: u64) -> bool {
    let required = flags & REQUIRED_MASK;
    required & !KNOWN_REQUIRED == 0 && (required & POOL_TYPES).is_power_of_two()
}

/// Returns NULL, or raises (panics) when the caller asked for `POOL_FLAG_RAISE_ON_FAILURE`.
#[track_caller]
fn fail(flags: u64, why: &str) -> *mut c_void {
    assert!(
        flags & POOL_FLAG_RAISE_ON_FAILURE == 0,
        "fltsim: ExAllocatePool2 raised STATUS_INSUFFICIENT_RESOURCES ({why}; POOL_FLAG_RAISE_ON_FAILURE \
         was given, and an exception Rust code cannot catch is an unhandled kernel exception: bugcheck)"
    );
    std::ptr::null_mut()
}

/// `ExAllocatePool2(flags, size, tag)` on behalf of the simulator's own callers (e.g. contexts charged
/// to a registration's tag): the same checks, accounting and fault injection as the export.
#[track_caller]
pub(crate) fn allocate(flags: u64, size: usize, tag: u32) -> *mut c_void {
    let now = irql::current();
    let paged = is_paged(flags);
    let ceiling = if paged { APC_LEVEL } else { DISPATCH_LEVEL };
    assert!(
        now <= ceiling,
        "fltsim: BAD_POOL_CALLER (0xC2, {BPC_ALLOCATE_IRQL:#04x}): ExAllocatePool2 of {} pool at IRQL \
         {now}, above {} (Driver Verifier: 0xC4 / {})",
        if paged { "paged" } else { "nonpaged" },
        if paged { "APC_LEVEL" } else { "DISPATCH_LEVEL" },
        if paged { "0x01" } else { "0x02" },
    );
    if !flags_valid(flags) {
        return fail(flags, &format!("invalid POOL_FLAGS {flags:#x}"));
    }
    if tag == 0 {
        return fail(flags, "pool tag 0");
    }
    assert!(
        size != 0,
        "fltsim: BAD_POOL_CALLER (0xC2, {BPC_ZERO_BYTES:#04x}): ExAllocatePool2 of zero bytes, tag \
         '{}' (NumberOfBytes must be non-zero; Driver Verifier: 0xC4 / 0x00)",
        tag_text(tag)
    );
    let align = if size >= PAGE_SIZE {
        PAGE_SIZE
    } else if flags & POOL_FLAG_CACHE_ALIGNED != 0 {
        CACHE_LINE
    } else {
        POOL_ALIGNMENT
    };
    let Ok(layout) = Layout::from_size_align(size, align) else {
        return fail(flags, "size too large");
    };
    let mut guard = pool();
    let pool = guard.get_or_insert_with(Pool::default);
    if pool.inject(tag) {
        drop(guard);
        return fail(flags, "fault injected by the low-resources simulation");
    }
    let block = if flags & POOL_FLAG_UNINITIALIZED == 0 {
        // SAFETY: `layout` has a non-zero size (checked above).
        unsafe { std::alloc::alloc_zeroed(layout) }
    } else {
        // SAFETY: `layout` has a non-zero size; the block is filled before it is handed out, unless
        // the run asked to leave it undefined (for valgrind's memcheck).
        let block = unsafe { std::alloc::alloc(layout) };
        if !block.is_null() && !leave_undefined() {
            // SAFETY: `block` is a fresh allocation of `size` bytes.
            unsafe { block.write_bytes(UNINITIALIZED_FILL, size) };
        }
        block
    };
    if block.is_null() {
        drop(guard);
        return fail(flags, "the host is out of memory");
    }
    let address = block.addr();
    let largest = pool.largest.entry((tag, paged)).or_default();
    *largest = (*largest).max(size);
    pool.freed.remove(&address);
    pool.live.insert(
        address,
        Block {
            tag,
            size,
            paged,
            layout,
        },
    );
    block.cast()
}

/// `ExFreePoolWithTag(pointer, tag)` on behalf of the simulator's own callers.
#[track_caller]
pub(crate) fn free(pointer: *mut c_void, tag: u32) {
    let now = irql::current();
    let address = pointer.addr();
    assert!(
        now <= DISPATCH_LEVEL,
        "fltsim: BAD_POOL_CALLER (0xC2, {BPC_FREE_IRQL:#04x}): ExFreePoolWithTag({address:#x}) at IRQL \
         {now}, above DISPATCH_LEVEL (Driver Verifier: 0xC4 / 0x12)"
    );
    let mut guard = pool();
    let pool = guard.get_or_insert_with(Pool::default);
    let message = match pool.live.get(&address) {
        None if pool.freed.contains(&address) => Some(format!(
            "fltsim: BAD_POOL_CALLER (0xC2, {BPC_DOUBLE_FREE:#04x}): ExFreePoolWithTag({address:#x}) of a \
             block that was already freed (double free)"
        )),
        None => Some(format!(
            "fltsim: BAD_POOL_CALLER (0xC2, {BPC_INVALID_ADDRESS:#04x}): ExFreePoolWithTag({address:#x}) \
             of an address that ExAllocatePool2 did not return (Driver Verifier: 0xC4 / 0x10)"
        )),
        Some(block) if block.paged && now > APC_LEVEL => Some(format!(
            "fltsim: BAD_POOL_CALLER (0xC2, {BPC_FREE_IRQL:#04x}): ExFreePoolWithTag({address:#x}) of \
             paged pool at IRQL {now}, above APC_LEVEL (Driver Verifier: 0xC4 / 0x11)"
        )),
        Some(block) if block.tag != tag => Some(format!(
            "fltsim: BAD_POOL_CALLER (0xC2, {BPC_WRONG_TAG:#04x}): ExFreePoolWithTag({address:#x}) with \
             tag '{}' ({tag:#010x}), but the block was allocated with tag '{}' ({:#010x})",
            tag_text(tag),
            tag_text(block.tag),
            block.tag
        )),
        Some(_) => None,
    };
    if let Some(message) = message {
        drop(guard);
        panic!("{message}");
    }
    if let Some(block) = pool.live.remove(&address) {
        pool.freed.insert(address);
        // SAFETY: `pointer` was returned by `std::alloc` with `block.layout` and is freed once (it just
        // left the live table under the pool's lock).
        unsafe { std::alloc::dealloc(pointer.cast(), block.layout) };
    }
}

/// `ExAllocatePool2`: zeroed (unless `POOL_FLAG_UNINITIALIZED`) pool memory charged to `tag`, or
/// NULL. IRQL <= `APC_LEVEL` for paged pool, <= `DISPATCH_LEVEL` for nonpaged.
#[unsafe(no_mangle)]
pub extern "system" fn ExAllocatePool2(flags: u64, numberofbytes: usize, tag: u32) -> *mut c_void {
    allocate(flags, numberofbytes, tag)
}

/// `ExFreePoolWithTag`: frees a block returned by `ExAllocatePool2` with the tag it was allocated
/// with. IRQL <= `APC_LEVEL` for paged pool, <= `DISPATCH_LEVEL` for nonpaged.
///
/// # Safety
/// `p` must not be used after the call.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn ExFreePoolWithTag(p: *mut c_void, tag: u32) {
    free(p, tag);
}

const _: [unsafe extern "system" fn(u64, usize, u32) -> *mut c_void; 2] = [
    ExAllocatePool2,
    windows_sys::Wdk::System::SystemServices::ExAllocatePool2,
];
const _: [unsafe extern "system" fn(*mut c_void, u32); 2] = [
    ExFreePoolWithTag,
    windows_sys::Wdk::System::SystemServices::ExFreePoolWithTag,
];

/// Whether `[address, address + len)` lies inside a live paged-pool block (for routines whose
/// buffers must be nonpageable, such as `MmCopyMemory`'s target).
pub(crate) fn in_paged_pool(address: usize, len: usize) -> bool {
    with_pool(|pool| {
        pool.live.iter().any(|(&start, block)| {
            block.paged && address >= start && address.saturating_add(len) <= start + block.size
        })
    })
}
