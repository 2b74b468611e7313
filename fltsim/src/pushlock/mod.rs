//! Simulated Filter Manager push locks: `FltInitializePushLock`, `FltAcquirePushLock{Shared,Exclusive}`
//! (and their `Ex` forms), `FltReleasePushLock{,Ex}`, `FltDeletePushLock`.
//!
//! The lock's state lives in the caller's 8-byte `EX_PUSH_LOCK` word ([`word`] documents each bit and
//! the algorithm); waiters park by the word's address. The simulator's own bookkeeping (module `registry`)
//! turns what would hang or bugcheck on Windows into a panic starting `fltsim: ` that names the rule
//! (`docs/kernel-rules.md`, "Push locks"; Microsoft's `FltAcquirePushLockShared` etc. reference pages); the
//! panic cannot leave the `extern "system"` export, so it aborts the process like a bugcheck
//! ([`crate::bugcheck`]):
//!
//! - every routine: IRQL <= `APC_LEVEL` (checked first), storage 8-byte aligned, lock initialized and
//!   not deleted;
//! - exclusive re-acquire by the owner, shared-to-exclusive upgrade, shared acquire by the exclusive
//!   owner: `fltsim: push lock deadlock: ...` (the thread would wait for itself forever);
//! - shared re-acquire by a shared holder is granted, as documented, unless an exclusive acquirer is
//!   waiting: then Windows queues the thread behind that waiter, which waits for the thread's first
//!   shared hold, and both hang; the simulator panics with `fltsim: push lock deadlock: ...`;
//! - release by a thread that holds nothing (including a release on another thread than the
//!   acquiring one); delete while held or while threads wait; acquire or release after delete.
//!
//! Acquires disable the thread's normal kernel APCs ([`crate::apc`]); releases re-enable them.

pub mod parker;
pub(crate) mod registry;
pub mod word;

use core::sync::atomic::AtomicUsize;

use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FLT_PUSH_LOCK_DISABLE_AUTO_BOOST, FLT_PUSH_LOCK_ENABLE_AUTO_BOOST,
};

use crate::apc;
use crate::irql::{self, APC_LEVEL};
use parker::AddressParker;
use registry::Mode;

/// Number of push locks initialized and not deleted in this session (the verifier report's
/// "push locks never deleted").
#[must_use]
pub fn live() -> usize {
    registry::live().len()
}

/// Addresses of the push locks initialized and not deleted in this session, sorted.
#[must_use]
pub fn live_addresses() -> Vec<usize> {
    registry::live()
}

/// Number of threads inside an acquire of the push lock at `address` that have not been granted
/// it yet (waiting, or about to wait). Lets tests know that a thread is queued without sleeping.
#[must_use]
pub fn waiting(address: usize) -> usize {
    registry::waiting(address)
}

/// Forgets every push lock: called when a new [`crate::Sim`] starts.
pub(crate) fn reset() {
    registry::reset();
}

/// The lock word at `push_lock`, after the IRQL, null and alignment checks of `routine`.
///
/// # Safety
/// `push_lock`, if non-null and aligned, must point to 8 bytes of caller storage that stay valid for
/// `'a` and are only accessed atomically while the lock is in use (the routines' contract).
#[track_caller]
unsafe fn word_at<'a>(routine: &str, push_lock: *const usize) -> &'a AtomicUsize {
    irql::check_max(routine, APC_LEVEL);
    assert!(
        !push_lock.is_null(),
        "fltsim: {routine}: PushLock is NULL (an access violation in kernel mode: bugcheck)"
    );
    assert!(
        push_lock.addr().is_multiple_of(8),
        "fltsim: {routine}: PushLock {:#x} is not 8-byte aligned (EX_PUSH_LOCK storage must be \
         8-byte aligned on 64-bit Windows)",
        push_lock.addr()
    );
    // SAFETY: non-null and 8-byte aligned (checked above), which is AtomicUsize's size and alignment
    // on x64; validity and atomic-only access are the caller's contract.
    unsafe { AtomicUsize::from_ptr(push_lock.cast_mut()) }
}

/// Checks the `Flags` of an `Ex` routine: 0, `FLT_PUSH_LOCK_DISABLE_AUTO_BOOST`, or the deprecated
/// `FLT_PUSH_LOCK_ENABLE_AUTO_BOOST` (no effect); anything else is invalid.
#[track_caller]
fn check_flags(routine: &str, flags: u32) {
    let valid = FLT_PUSH_LOCK_DISABLE_AUTO_BOOST | FLT_PUSH_LOCK_ENABLE_AUTO_BOOST;
    assert!(
        flags & !valid == 0,
        "fltsim: {routine}: invalid Flags {flags:#x} (only FLT_PUSH_LOCK_DISABLE_AUTO_BOOST (2) and the \
         deprecated FLT_PUSH_LOCK_ENABLE_AUTO_BOOST (1) are defined)"
    );
}

#[track_caller]
fn acquire(routine: &'static str, push_lock: *mut usize, mode: Mode) {
    // SAFETY: the pointer comes from the caller of an FltAcquirePushLock* routine, whose contract
    // is an initialized EX_PUSH_LOCK in storage that outlives the call.
    let word = unsafe { word_at(routine, push_lock) };
    let address = push_lock.addr();
    let holds_shared = registry::begin_acquire(routine, address, mode);
    apc::disable();
    let parker = AddressParker::new(address);
    match mode {
        Mode::Exclusive => word::acquire_exclusive(word, &parker),
        Mode::Shared => {
            if let Err(hang) = word::acquire_shared(word, &parker, holds_shared) {
                registry::abandon_acquire(address);
                apc::enable(routine);
                panic!(
                    "fltsim: push lock deadlock: {routine} on push lock {address:#x} which this thread \
                     already holds shared, while {} exclusive acquirer(s) wait: Windows queues this \
                     thread behind the exclusive waiter, which waits for this thread's first shared \
                     hold, and both hang (push locks are not recursive)",
                    word::exclusive_waiters(hang.word)
                );
            }
        }
    }
    registry::acquired(address, mode, routine);
}

#[track_caller]
fn release(routine: &str, push_lock: *mut usize) {
    // SAFETY: as in `acquire`, the caller's contract for FltReleasePushLock*.
    let word = unsafe { word_at(routine, push_lock) };
    let address = push_lock.addr();
    registry::release(routine, address);
    word::release(word, &AddressParker::new(address));
    apc::enable(routine);
}

/// `FltInitializePushLock`: initializes caller storage (8 bytes, 8-byte aligned) as a free push lock.
/// IRQL <= `APC_LEVEL`.
///
/// # Safety
/// `pushlock` must point to 8 writable bytes that stay valid until `FltDeletePushLock`.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltInitializePushLock(pushlock: *mut usize) {
    const ROUTINE: &str = "FltInitializePushLock";
    // SAFETY: the caller's contract (see above).
    let word = unsafe { word_at(ROUTINE, pushlock) };
    registry::initialize(ROUTINE, pushlock.addr());
    word.store(0, core::sync::atomic::Ordering::Release);
}

/// `FltAcquirePushLockShared`: acquires the lock shared, disabling normal kernel APCs.
/// IRQL <= `APC_LEVEL`.
///
/// # Safety
/// `pushlock` must point to a push lock initialized with `FltInitializePushLock`.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltAcquirePushLockShared(pushlock: *mut usize) {
    acquire("FltAcquirePushLockShared", pushlock, Mode::Shared);
}

/// `FltAcquirePushLockExclusive`: acquires the lock exclusive, disabling normal kernel APCs.
/// IRQL <= `APC_LEVEL`.
///
/// # Safety
/// `pushlock` must point to a push lock initialized with `FltInitializePushLock`.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltAcquirePushLockExclusive(pushlock: *mut usize) {
    acquire("FltAcquirePushLockExclusive", pushlock, Mode::Exclusive);
}

/// `FltAcquirePushLockSharedEx`: as `FltAcquirePushLockShared`, with `FLT_PUSH_LOCK_*` flags (auto
/// boost has no simulated effect). IRQL <= `APC_LEVEL`.
///
/// # Safety
/// `pushlock` must point to a push lock initialized with `FltInitializePushLock`.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltAcquirePushLockSharedEx(pushlock: *mut usize, flags: u32) {
    const ROUTINE: &str = "FltAcquirePushLockSharedEx";
    irql::check_max(ROUTINE, APC_LEVEL);
    check_flags(ROUTINE, flags);
    acquire(ROUTINE, pushlock, Mode::Shared);
}

/// `FltAcquirePushLockExclusiveEx`: as `FltAcquirePushLockExclusive`, with `FLT_PUSH_LOCK_*` flags
/// (auto boost has no simulated effect). IRQL <= `APC_LEVEL`.
///
/// # Safety
/// `pushlock` must point to a push lock initialized with `FltInitializePushLock`.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltAcquirePushLockExclusiveEx(pushlock: *mut usize, flags: u32) {
    const ROUTINE: &str = "FltAcquirePushLockExclusiveEx";
    irql::check_max(ROUTINE, APC_LEVEL);
    check_flags(ROUTINE, flags);
    acquire(ROUTINE, pushlock, Mode::Exclusive);
}

/// `FltReleasePushLock`: releases one shared or exclusive hold of the calling thread and re-enables
/// its normal kernel APCs. IRQL <= `APC_LEVEL`.
///
/// # Safety
/// `pushlock` must point to a push lock initialized with `FltInitializePushLock`.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltReleasePushLock(pushlock: *mut usize) {
    release("FltReleasePushLock", pushlock);
}

/// `FltReleasePushLockEx`: as `FltReleasePushLock`, with `FLT_PUSH_LOCK_*` flags.
/// IRQL <= `APC_LEVEL`.
///
/// # Safety
/// `pushlock` must point to a push lock initialized with `FltInitializePushLock`.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltReleasePushLockEx(pushlock: *mut usize, flags: u32) {
    const ROUTINE: &str = "FltReleasePushLockEx";
    irql::check_max(ROUTINE, APC_LEVEL);
    check_flags(ROUTINE, flags);
    release(ROUTINE, pushlock);
}

/// `FltDeletePushLock`: ends the lock's life; the storage may be freed afterwards.
/// IRQL <= `APC_LEVEL`.
///
/// # Safety
/// `pushlock` must point to a push lock initialized with `FltInitializePushLock`.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn FltDeletePushLock(pushlock: *const usize) {
    const ROUTINE: &str = "FltDeletePushLock";
    // SAFETY: the caller's contract (see above).
    let word = unsafe { word_at(ROUTINE, pushlock) };
    registry::delete(
        ROUTINE,
        pushlock.addr(),
        word.load(core::sync::atomic::Ordering::Acquire),
    );
}

const _: [unsafe extern "system" fn(*mut usize); 2] = [
    FltInitializePushLock,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltInitializePushLock,
];
const _: [unsafe extern "system" fn(*mut usize); 2] = [
    FltAcquirePushLockShared,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltAcquirePushLockShared,
];
const _: [unsafe extern "system" fn(*mut usize); 2] = [
    FltAcquirePushLockExclusive,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltAcquirePushLockExclusive,
];
const _: [unsafe extern "system" fn(*mut usize, u32); 2] = [
    FltAcquirePushLockSharedEx,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltAcquirePushLockSharedEx,
];
const _: [unsafe extern "system" fn(*mut usize, u32); 2] = [
    FltAcquirePushLockExclusiveEx,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltAcquirePushLockExclusiveEx,
];
const _: [unsafe extern "system" fn(*mut usize); 2] = [
    FltReleasePushLock,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltReleasePushLock,
];
const _: [unsafe extern "system" fn(*mut usize, u32); 2] = [
    FltReleasePushLockEx,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltReleasePushLockEx,
];
const _: [unsafe extern "system" fn(*const usize); 2] = [
    FltDeletePushLock,
    windows_sys::Wdk::Storage::FileSystem::Minifilters::FltDeletePushLock,
];
