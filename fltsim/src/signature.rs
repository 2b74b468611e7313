//! Compile-time checks that a simulated export has exactly windows-sys's signature.
//!
//! A simulated routine panics (`fltsim: ...`) where Windows would bugcheck or hang, and tests catch
//! that panic with `#[should_panic]`. A panic cannot leave an `extern "system"` function (Rust aborts
//! the process: "panic in a function that cannot unwind"), so the exports are defined
//! `extern "system-unwind"` — the same calling convention, allowed to unwind. windows-sys declares
//! them `extern "system"`, so the two function-pointer types differ in ABI only; each `same_N`
//! function takes one of each with the **same** argument and return types, so a call such as
//! `const _: () = same_1(FltAcquirePushLockShared, windows_sys::...::FltAcquirePushLockShared);`
//! fails to compile on any drift in parameter count, types or return type.
//!
//! Unwinding out of a call that the caller declared `extern "system"` (a driver calling through
//! windows-sys) is undefined behaviour in Rust; in practice it works in host test builds, but tests
//! of rule panics should call the export directly where they can.

/// Checks a zero-argument export against windows-sys's declaration.
pub const fn same_0<R>(
    _: unsafe extern "system-unwind" fn() -> R,
    _: unsafe extern "system" fn() -> R,
) {
}

/// Checks a one-argument export against windows-sys's declaration.
pub const fn same_1<A, R>(
    _: unsafe extern "system-unwind" fn(A) -> R,
    _: unsafe extern "system" fn(A) -> R,
) {
}

/// Checks a two-argument export against windows-sys's declaration.
pub const fn same_2<A, B, R>(
    _: unsafe extern "system-unwind" fn(A, B) -> R,
    _: unsafe extern "system" fn(A, B) -> R,
) {
}

/// Checks a three-argument export against windows-sys's declaration.
pub const fn same_3<A, B, C, R>(
    _: unsafe extern "system-unwind" fn(A, B, C) -> R,
    _: unsafe extern "system" fn(A, B, C) -> R,
) {
}

/// Checks a four-argument export against windows-sys's declaration.
pub const fn same_4<A, B, C, D, R>(
    _: unsafe extern "system-unwind" fn(A, B, C, D) -> R,
    _: unsafe extern "system" fn(A, B, C, D) -> R,
) {
}

/// Checks a five-argument export against windows-sys's declaration.
pub const fn same_5<A, B, C, D, E, R>(
    _: unsafe extern "system-unwind" fn(A, B, C, D, E) -> R,
    _: unsafe extern "system" fn(A, B, C, D, E) -> R,
) {
}

/// Checks a six-argument export against windows-sys's declaration.
pub const fn same_6<A, B, C, D, E, F, R>(
    _: unsafe extern "system-unwind" fn(A, B, C, D, E, F) -> R,
    _: unsafe extern "system" fn(A, B, C, D, E, F) -> R,
) {
}

/// Checks an eight-argument export against windows-sys's declaration.
#[allow(
    clippy::too_many_arguments,
    reason = "one parameter per export argument"
)]
pub const fn same_8<A, B, C, D, E, F, G, H, R>(
    _: unsafe extern "system-unwind" fn(A, B, C, D, E, F, G, H) -> R,
    _: unsafe extern "system" fn(A, B, C, D, E, F, G, H) -> R,
) {
}
