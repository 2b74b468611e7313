//! Uncontended acquire + release, shared and exclusive, through three paths measured in one run:
//! `iotally::sync::PushLock` (guards), the Flt routines called directly on a bare word (what the
//! wrapper costs on top of them), and `std::sync::RwLock` as a baseline.
//!
//! In host builds the Flt routines are fltsim's, which do bookkeeping that Windows does not (the
//! owner registry, IRQL and APC checks), so the absolute numbers say little about Windows; the
//! `PushLock` / direct ratio is the wrapper's overhead. Run: `cargo bench --bench push_lock`.
#![allow(
    clippy::disallowed_methods,
    reason = "the direct Flt calls are the baseline measured; a host benchmark is never in the image"
)]

use std::cell::UnsafeCell;
use std::hint::black_box;
use std::sync::RwLock;

use criterion::{Criterion, criterion_group, criterion_main};
use fltsim as _;
use iotally::pool::{PagedAllocator, tags};
use iotally::sync::PushLock;
use windows_sys::Wdk::Storage::FileSystem::Minifilters::{
    FltAcquirePushLockExclusive, FltAcquirePushLockShared, FltDeletePushLock,
    FltInitializePushLock, FltReleasePushLock,
};

/// A bare `EX_PUSH_LOCK` word for the direct calls.
#[repr(C, align(8))]
struct Word(UnsafeCell<usize>);

fn bench_push_locks(c: &mut Criterion) {
    let _sim = fltsim::Sim::new();
    let lock = PushLock::try_pin_in(0_u64, PagedAllocator::new(tags::PUSH_LOCK)).expect("pool");
    let word = Box::new(Word(UnsafeCell::new(0)));
    let raw = word.0.get();
    // SAFETY: boxed, 8-byte aligned, never moved; deleted below before it is freed.
    unsafe { FltInitializePushLock(raw) };
    let data = UnsafeCell::new(0_u64);
    let rwlock = RwLock::new(0_u64);

    let mut shared = c.benchmark_group("shared acquire+release");
    shared.bench_function("PushLock::read", |b| b.iter(|| *black_box(&lock).read()));
    shared.bench_function("FltAcquirePushLockShared direct", |b| {
        b.iter(|| {
            // SAFETY: initialized above, released right away on this thread, at PASSIVE_LEVEL.
            unsafe {
                FltAcquirePushLockShared(black_box(raw));
                let value = *data.get();
                FltReleasePushLock(raw);
                value
            }
        });
    });
    shared.bench_function("std RwLock::read", |b| {
        b.iter(|| *black_box(&rwlock).read().expect("not poisoned"));
    });
    shared.finish();

    let mut exclusive = c.benchmark_group("exclusive acquire+release");
    exclusive.bench_function("PushLock::write", |b| {
        b.iter(|| *black_box(&lock).write() += 1);
    });
    exclusive.bench_function("FltAcquirePushLockExclusive direct", |b| {
        b.iter(|| {
            // SAFETY: as above, exclusive.
            unsafe {
                FltAcquirePushLockExclusive(black_box(raw));
                *data.get() += 1;
                FltReleasePushLock(raw);
            }
        });
    });
    exclusive.bench_function("std RwLock::write", |b| {
        b.iter(|| *black_box(&rwlock).write().expect("not poisoned") += 1);
    });
    exclusive.finish();

    // SAFETY: not held; deleted once, before the box is freed.
    unsafe { FltDeletePushLock(raw) };
}

criterion_group!(benches, bench_push_locks);
criterion_main!(benches);
