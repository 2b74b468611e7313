//! `iotally::pool` allocators through the simulated pool: accounting by tag, zero-size and
//! over-aligned layouts, IRQL rules, and fallibility under fault injection (no panic, no leak).
//!
//! IRQL misuse is a death test ([`expect_bugcheck`]): the scenario runs in a child process, which
//! must die with the expected message. In release builds fltsim catches the misuse inside
//! `ExAllocatePool2`/`ExFreePoolWithTag`, whose panic cannot unwind out of the `extern "system"`
//! export: the process aborts, like a bugcheck. In debug builds the allocator's own IRQL assertion
//! panics first, with an `iotally: ` message, and the child fails with that message.

mod common;

use core::alloc::Layout;

use allocator_api2::alloc::{AllocError, Allocator};
use allocator_api2::boxed::Box;
use allocator_api2::vec::Vec;
use common::by_build;
use fltsim::bugcheck::expect_bugcheck;
use fltsim::irql::{APC_LEVEL, DISPATCH_LEVEL, raise};
use fltsim::pool::{FaultPlan, PoolUsage, set_fault_injection};
use hashbrown::HashMap;
use iotally::pool::{MAX_ALIGN, NonPagedAllocator, PagedAllocator, Tag, tags};
use iotally::sync::PushLock;

const TEST_TAG: Tag = Tag::new(*b"ItT2");

/// `(bytes, count)` outstanding under `tag`.
fn outstanding(tag: Tag) -> (usize, usize) {
    fltsim::pool::outstanding()
        .into_iter()
        .find(|&(t, _, _)| t == tag.raw())
        .map_or((0, 0), |(_, bytes, count)| (bytes, count))
}

#[test]
fn paged_allocations_are_accounted_under_their_tag_and_freed() {
    let _sim = fltsim::Sim::new();
    let mut bytes: Vec<u8, PagedAllocator> = Vec::new_in(PagedAllocator::new(TEST_TAG));
    bytes.try_reserve_exact(100).expect("pool");
    bytes.extend_from_slice(b"tally");
    assert_eq!(outstanding(TEST_TAG), (100, 1));
    // Growing goes through allocate + copy + free: still one block.
    bytes.try_reserve_exact(1_000).expect("pool");
    assert_eq!(outstanding(TEST_TAG).1, 1);
    assert_eq!(&bytes[..], b"tally");
    drop(bytes);
    assert!(fltsim::pool::outstanding().is_empty(), "nothing leaked");
}

#[test]
fn non_paged_boxes_are_accounted_and_freed() {
    let _sim = fltsim::Sim::new();
    let boxed = Box::try_new_in([7_u64; 4], NonPagedAllocator::new(TEST_TAG)).expect("pool");
    assert_eq!(outstanding(TEST_TAG), (32, 1));
    assert_eq!(*boxed, [7; 4]);
    drop(boxed);
    assert!(fltsim::pool::outstanding().is_empty());
}

#[test]
fn tables_can_live_in_paged_pool() {
    let _sim = fltsim::Sim::new();
    let mut table: HashMap<u64, u64, hashbrown::DefaultHashBuilder, PagedAllocator> =
        HashMap::with_hasher_in(
            hashbrown::DefaultHashBuilder::default(),
            PagedAllocator::new(tags::TABLE),
        );
    for key in 0..1_000 {
        table.try_reserve(1).expect("pool");
        table.insert(key, key * 2);
    }
    assert_eq!(table.get(&999), Some(&1_998));
    assert_eq!(outstanding(tags::TABLE).1, 1, "one bucket array");
    drop(table);
    assert!(fltsim::pool::outstanding().is_empty());
}

#[test]
fn blocks_are_aligned_and_zeroed() {
    let _sim = fltsim::Sim::new();
    let pool = PagedAllocator::new(TEST_TAG);
    for size in [1, 8, 24, 100, 4_096, 10_000] {
        let layout = Layout::from_size_align(size, MAX_ALIGN).expect("layout");
        let block = pool.allocate_zeroed(layout).expect("pool");
        assert_eq!(block.len(), size);
        assert_eq!(block.cast::<u8>().as_ptr().addr() % MAX_ALIGN, 0);
        // SAFETY: `block` is `size` bytes just allocated.
        assert!(unsafe { block.as_ref() }.iter().all(|&b| b == 0));
        // SAFETY: allocated above with this allocator and layout.
        unsafe { pool.deallocate(block.cast(), layout) };
    }
    assert!(fltsim::pool::outstanding().is_empty());
}

#[test]
fn zero_size_allocations_do_not_touch_the_pool() {
    let _sim = fltsim::Sim::new();
    for pool in [PagedAllocator::new(TEST_TAG)] {
        for align in [1, 2, 8, 16] {
            let layout = Layout::from_size_align(0, align).expect("layout");
            let block = pool
                .allocate(layout)
                .expect("zero-size allocations always succeed");
            assert_eq!(block.len(), 0);
            assert_eq!(block.cast::<u8>().as_ptr().addr() % align, 0);
            assert!(fltsim::pool::outstanding().is_empty());
            // SAFETY: allocated above with this allocator and layout.
            unsafe { pool.deallocate(block.cast(), layout) };
        }
    }
    let empty = Box::try_new_in((), NonPagedAllocator::new(TEST_TAG)).expect("no allocation");
    drop(empty);
    assert!(fltsim::pool::outstanding().is_empty());
}

#[test]
fn alignment_above_the_pool_guarantee_is_refused() {
    let _sim = fltsim::Sim::new();
    let layout = Layout::from_size_align(64, 2 * MAX_ALIGN).expect("layout");
    assert_eq!(
        PagedAllocator::new(TEST_TAG).allocate(layout),
        Err(AllocError)
    );
    assert_eq!(
        NonPagedAllocator::new(TEST_TAG).allocate(layout),
        Err(AllocError)
    );
    assert!(fltsim::pool::outstanding().is_empty());
}

#[test]
fn sizes_the_pool_cannot_serve_are_errors() {
    let _sim = fltsim::Sim::new();
    let mut huge: Vec<u8, PagedAllocator> = Vec::new_in(PagedAllocator::new(TEST_TAG));
    assert!(huge.try_reserve(usize::MAX).is_err(), "capacity overflow");
    assert!(
        huge.try_reserve(isize::MAX as usize).is_err(),
        "more than the pool can give"
    );
    let mut wide: Vec<u64, PagedAllocator> = Vec::new_in(PagedAllocator::new(TEST_TAG));
    assert!(
        wide.try_reserve(usize::MAX / 4).is_err(),
        "size overflow in the layout"
    );
    assert!(fltsim::pool::outstanding().is_empty());
}

#[test]
fn non_paged_pool_works_at_dispatch_level() {
    let _sim = fltsim::Sim::new();
    let _dispatch = raise(DISPATCH_LEVEL);
    let boxed = Box::try_new_in(1_u32, NonPagedAllocator::new(TEST_TAG)).expect("pool");
    drop(boxed);
    assert!(fltsim::pool::outstanding().is_empty());
}

#[test]
fn paged_pool_works_at_apc_level() {
    let _sim = fltsim::Sim::new();
    let _apc = raise(APC_LEVEL);
    let boxed = Box::try_new_in(1_u32, PagedAllocator::new(TEST_TAG)).expect("pool");
    drop(boxed);
    assert!(fltsim::pool::outstanding().is_empty());
}

#[test]
fn paged_allocation_at_dispatch_level_is_caught() {
    let expected = by_build(
        "iotally: IRQL_NOT_LESS_OR_EQUAL: PagedAllocator::allocate (ExAllocatePool2, paged) called at IRQL DISPATCH_LEVEL (2)",
        "fltsim: BAD_POOL_CALLER (0xC2, 0x08): ExAllocatePool2 of paged pool at IRQL 2",
    );
    expect_bugcheck(expected, || {
        let _sim = fltsim::Sim::new();
        let _dispatch = raise(DISPATCH_LEVEL);
        let _ = Box::try_new_in(1_u32, PagedAllocator::new(TEST_TAG));
    });
}

#[test]
fn paged_free_at_dispatch_level_is_caught() {
    let expected = by_build(
        "iotally: IRQL_NOT_LESS_OR_EQUAL: PagedAllocator::deallocate (ExFreePoolWithTag, paged) called at IRQL DISPATCH_LEVEL (2)",
        "of paged pool at IRQL 2, above APC_LEVEL (Driver Verifier: 0xC4 / 0x11)",
    );
    expect_bugcheck(expected, || {
        let _sim = fltsim::Sim::new();
        let boxed = Box::try_new_in(1_u32, PagedAllocator::new(TEST_TAG)).expect("pool");
        let _dispatch = raise(DISPATCH_LEVEL);
        drop(boxed);
    });
}

#[test]
fn paged_and_non_paged_allocations_land_in_their_pool() {
    let _sim = fltsim::Sim::new();
    let paged = Box::try_new_in([0_u8; 24], PagedAllocator::new(tags::VOLUME_NAME)).expect("pool");
    let non_paged =
        Box::try_new_in([0_u8; 40], NonPagedAllocator::new(tags::FILE_NAME)).expect("pool");
    let usage = fltsim::pool::outstanding_by_pool();
    assert!(usage.contains(&PoolUsage {
        tag: tags::VOLUME_NAME.raw(),
        paged: true,
        bytes: 24,
        count: 1
    }));
    assert!(usage.contains(&PoolUsage {
        tag: tags::FILE_NAME.raw(),
        paged: false,
        bytes: 40,
        count: 1
    }));
    assert_eq!(usage.len(), 2);
    drop((paged, non_paged));
    assert!(fltsim::pool::outstanding().is_empty());
}

/// Driver Verifier's low-resources simulation at 100%: every pool user gets `Err`, nothing panics,
/// nothing leaks.
#[test]
fn every_allocation_failing_is_an_error_everywhere() {
    let _sim = fltsim::Sim::new();
    set_fault_injection(FaultPlan::EveryNth { n: 1, tag: None });
    let paged = PagedAllocator::new(TEST_TAG);
    assert_eq!(paged.allocate(Layout::new::<u64>()), Err(AllocError));
    assert_eq!(paged.allocate_zeroed(Layout::new::<u64>()), Err(AllocError));
    assert_eq!(
        NonPagedAllocator::new(TEST_TAG).allocate(Layout::new::<u64>()),
        Err(AllocError)
    );
    assert!(Box::try_new_in(1_u8, paged).is_err());
    let mut bytes: Vec<u8, PagedAllocator> = Vec::new_in(paged);
    assert!(bytes.try_reserve(10).is_err());
    let mut table: HashMap<u64, u64, hashbrown::DefaultHashBuilder, PagedAllocator> =
        HashMap::with_hasher_in(
            hashbrown::DefaultHashBuilder::default(),
            PagedAllocator::new(tags::TABLE),
        );
    assert!(table.try_reserve(10).is_err());
    assert!(PushLock::try_pin_in(0_u32, PagedAllocator::new(tags::PUSH_LOCK)).is_err());
    assert_eq!(
        fltsim::pushlock::live(),
        0,
        "no lock initialized in memory that was never given"
    );
    assert_eq!(fltsim::pool::injected_failures(), 7);
    assert!(fltsim::pool::outstanding().is_empty());
    // Zero-size allocations never reach the pool, so they still succeed.
    assert!(Box::try_new_in((), paged).is_ok());
}

/// 10% of allocations failing: each failure is one clean `Err`, the successes are all accounted, and
/// freeing them leaves nothing behind.
#[test]
fn some_allocations_failing_leaves_no_leak() {
    const ATTEMPTS: usize = 2_000;
    let _sim = fltsim::Sim::new();
    let keep = PagedAllocator::new(tags::TABLE);
    let mut kept: Vec<Box<u64, PagedAllocator>, PagedAllocator> = Vec::new_in(keep);
    kept.try_reserve_exact(ATTEMPTS)
        .expect("before the faults start");
    set_fault_injection(FaultPlan::percent(10, 0x1071, Some(TEST_TAG.raw())));
    let mut failed = 0;
    for value in 0..ATTEMPTS as u64 {
        match Box::try_new_in(value, PagedAllocator::new(TEST_TAG)) {
            Ok(boxed) => kept.push(boxed),
            Err(AllocError) => failed += 1,
        }
    }
    assert_eq!(
        u64::try_from(failed).expect("small"),
        fltsim::pool::injected_failures()
    );
    assert!(
        failed > 0 && failed < ATTEMPTS / 2,
        "{failed} of {ATTEMPTS} failed"
    );
    assert_eq!(outstanding(TEST_TAG), (8 * kept.len(), kept.len()));
    drop(kept);
    assert!(fltsim::pool::outstanding().is_empty());
}
