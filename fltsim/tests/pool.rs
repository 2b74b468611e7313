//! Simulated pool: the `ExAllocatePool2` / `ExFreePoolWithTag` contract, accounting by tag, the bug
//! checks of misuse, and deterministic fault injection.

use std::ffi::c_void;

use fltsim::bugcheck::expect_bugcheck;
use fltsim::pool::{
    self, ExAllocatePool2, ExFreePoolWithTag, FaultPlan, POOL_FLAG_CACHE_ALIGNED,
    POOL_FLAG_NON_PAGED, POOL_FLAG_NON_PAGED_EXECUTE, POOL_FLAG_PAGED, POOL_FLAG_RAISE_ON_FAILURE,
    POOL_FLAG_RESERVED1, POOL_FLAG_UNINITIALIZED, PoolUsage,
};
use fltsim::{Sim, irql};

const TAG_A: u32 = u32::from_le_bytes(*b"TstA");
const TAG_B: u32 = u32::from_le_bytes(*b"TstB");

fn free(p: *mut c_void, tag: u32) {
    // SAFETY: `p` came from ExAllocatePool2 in the test and is not used afterwards.
    unsafe { ExFreePoolWithTag(p, tag) }
}

#[test]
fn allocation_is_zeroed_aligned_and_accounted() {
    let _sim = Sim::new();
    let paged = ExAllocatePool2(POOL_FLAG_PAGED, 100, TAG_A);
    let nonpaged = ExAllocatePool2(POOL_FLAG_NON_PAGED, 24, TAG_A);
    let other = ExAllocatePool2(POOL_FLAG_NON_PAGED, 8, TAG_B);
    for p in [paged, nonpaged, other] {
        assert!(!p.is_null());
        assert_eq!(p.addr() % 16, 0, "x64 pool blocks are 16-byte aligned");
    }
    // SAFETY: 100 bytes were just allocated.
    let bytes = unsafe { std::slice::from_raw_parts(paged.cast::<u8>(), 100) };
    assert!(
        bytes.iter().all(|&b| b == 0),
        "ExAllocatePool2 zeroes memory"
    );
    assert_eq!(
        pool::outstanding_by_pool(),
        [
            PoolUsage {
                tag: TAG_A,
                paged: false,
                bytes: 24,
                count: 1
            },
            PoolUsage {
                tag: TAG_A,
                paged: true,
                bytes: 100,
                count: 1
            },
            PoolUsage {
                tag: TAG_B,
                paged: false,
                bytes: 8,
                count: 1
            },
        ]
    );
    assert_eq!(pool::outstanding(), [(TAG_A, 124, 2), (TAG_B, 8, 1)]);
    free(paged, TAG_A);
    free(nonpaged, TAG_A);
    free(other, TAG_B);
    assert!(pool::outstanding().is_empty());
}

#[test]
fn the_largest_allocation_per_tag_is_remembered_after_it_is_freed() {
    let sim = Sim::new();
    let big = ExAllocatePool2(POOL_FLAG_PAGED, 5000, TAG_A);
    let small = ExAllocatePool2(POOL_FLAG_PAGED, 10, TAG_A);
    let other = ExAllocatePool2(POOL_FLAG_NON_PAGED, 64, TAG_B);
    free(big, TAG_A);
    let rows = pool::largest_allocations();
    assert_eq!(
        rows,
        [
            PoolUsage {
                tag: TAG_A,
                paged: true,
                bytes: 5000,
                count: 1
            },
            PoolUsage {
                tag: TAG_B,
                paged: false,
                bytes: 64,
                count: 1
            },
        ]
    );
    free(small, TAG_A);
    free(other, TAG_B);
    drop(sim);
    let _sim = Sim::new();
    assert!(
        pool::largest_allocations().is_empty(),
        "a new session starts afresh"
    );
}

#[test]
fn cache_aligned_page_aligned_and_uninitialized() {
    let _sim = Sim::new();
    let cache = ExAllocatePool2(POOL_FLAG_NON_PAGED | POOL_FLAG_CACHE_ALIGNED, 10, TAG_A);
    assert_eq!(cache.addr() % 64, 0);
    let page = ExAllocatePool2(POOL_FLAG_PAGED, 4096, TAG_A);
    assert_eq!(
        page.addr() % 4096,
        0,
        "PAGE_SIZE and larger allocations are page aligned"
    );
    let raw = ExAllocatePool2(POOL_FLAG_PAGED | POOL_FLAG_UNINITIALIZED, 32, TAG_A);
    // SAFETY: 32 bytes were just allocated.
    let bytes = unsafe { std::slice::from_raw_parts(raw.cast::<u8>(), 32) };
    assert!(bytes.iter().all(|&b| b == pool::UNINITIALIZED_FILL));
    free(cache, TAG_A);
    free(page, TAG_A);
    free(raw, TAG_A);
}

#[test]
fn zero_tag_and_invalid_flags_return_null() {
    let _sim = Sim::new();
    assert!(
        ExAllocatePool2(POOL_FLAG_PAGED, 8, 0).is_null(),
        "tag 0: NULL"
    );
    for flags in [
        0,
        POOL_FLAG_PAGED | POOL_FLAG_NON_PAGED,
        POOL_FLAG_NON_PAGED | POOL_FLAG_NON_PAGED_EXECUTE,
        POOL_FLAG_PAGED | POOL_FLAG_RESERVED1,
        POOL_FLAG_PAGED | 0x800,
        POOL_FLAG_UNINITIALIZED,
    ] {
        assert!(
            ExAllocatePool2(flags, 8, TAG_A).is_null(),
            "flags {flags:#x} must fail"
        );
    }
    assert!(pool::outstanding().is_empty());
    // Unknown flags in the high ("optional") half are ignored.
    let p = ExAllocatePool2(POOL_FLAG_PAGED | (1 << 40), 8, TAG_A);
    assert!(!p.is_null());
    free(p, TAG_A);
}

#[test]
fn nonpaged_at_dispatch_is_allowed() {
    let _sim = Sim::new();
    let _dispatch = irql::raise(irql::DISPATCH_LEVEL);
    let p = ExAllocatePool2(POOL_FLAG_NON_PAGED, 8, TAG_A);
    assert!(!p.is_null());
    free(p, TAG_A);
}

#[test]
fn every_nth_fails_deterministically_and_counts() {
    let _sim = Sim::new();
    pool::set_fault_injection(FaultPlan::EveryNth { n: 3, tag: None });
    let results: Vec<bool> = (0..9)
        .map(|_| {
            let p = ExAllocatePool2(POOL_FLAG_PAGED, 8, TAG_A);
            if !p.is_null() {
                free(p, TAG_A);
            }
            p.is_null()
        })
        .collect();
    assert_eq!(
        results,
        [false, false, true, false, false, true, false, false, true]
    );
    assert_eq!(pool::injected_failures(), 3);
}

#[test]
fn nth_fails_exactly_that_request_and_counts_every_eligible_one() {
    let _sim = Sim::new();
    assert_eq!(pool::eligible_requests(), 0);
    pool::set_fault_injection(FaultPlan::Nth {
        n: 4,
        tag: Some(TAG_A),
    });
    let results: Vec<bool> = (0..10)
        .map(|i| {
            // Every other request has a tag the plan does not look at.
            let tag = if i % 2 == 0 { TAG_A } else { TAG_B };
            let p = ExAllocatePool2(POOL_FLAG_PAGED, 8, tag);
            if !p.is_null() {
                free(p, tag);
            }
            p.is_null()
        })
        .collect();
    // The 4th TAG_A request is the 7th request (index 6); no other fails.
    let expected: Vec<bool> = (0..10).map(|i| i == 6).collect();
    assert_eq!(results, expected);
    assert_eq!(pool::injected_failures(), 1);
    assert_eq!(pool::eligible_requests(), 5, "five TAG_A requests seen");
    // An `n` never reached fails nothing and still counts: how a sweep learns its length.
    pool::set_fault_injection(FaultPlan::Nth {
        n: u64::MAX,
        tag: None,
    });
    assert_eq!(
        pool::eligible_requests(),
        0,
        "setting a plan restarts the count"
    );
    for _ in 0..3 {
        let p = ExAllocatePool2(POOL_FLAG_NON_PAGED, 8, TAG_B);
        assert!(!p.is_null());
        free(p, TAG_B);
    }
    assert_eq!(pool::eligible_requests(), 3);
    assert_eq!(pool::injected_failures(), 1);
    pool::set_fault_injection(FaultPlan::Off);
    let p = ExAllocatePool2(POOL_FLAG_NON_PAGED, 8, TAG_B);
    free(p, TAG_B);
    assert_eq!(pool::eligible_requests(), 0, "Off looks at no request");
}

#[test]
fn fault_injection_limited_to_one_tag() {
    let _sim = Sim::new();
    pool::set_fault_injection(FaultPlan::EveryNth {
        n: 1,
        tag: Some(TAG_B),
    });
    let a = ExAllocatePool2(POOL_FLAG_PAGED, 8, TAG_A);
    assert!(!a.is_null());
    assert!(ExAllocatePool2(POOL_FLAG_PAGED, 8, TAG_B).is_null());
    assert_eq!(pool::injected_failures(), 1);
    free(a, TAG_A);
}

fn rate_pattern(plan: FaultPlan) -> Vec<bool> {
    pool::set_fault_injection(plan);
    (0..64)
        .map(|_| {
            let p = ExAllocatePool2(POOL_FLAG_NON_PAGED, 16, TAG_A);
            if !p.is_null() {
                free(p, TAG_A);
            }
            p.is_null()
        })
        .collect()
}

#[test]
fn rate_is_deterministic_for_a_seed() {
    let _sim = Sim::new();
    let first = rate_pattern(FaultPlan::percent(30, 42, None));
    let second = rate_pattern(FaultPlan::percent(30, 42, None));
    assert_eq!(first, second, "same seed, same failures");
    let failures = first.iter().filter(|&&f| f).count();
    assert!(
        failures > 0 && failures < 64,
        "30% of 64 requests: some fail, some succeed"
    );
    assert_ne!(
        first,
        rate_pattern(FaultPlan::percent(30, 43, None)),
        "another seed, another pattern"
    );
    assert!(
        rate_pattern(FaultPlan::Rate {
            per_mille: 1000,
            seed: 1,
            tag: None
        })
        .iter()
        .all(|&f| f)
    );
    assert!(
        !rate_pattern(FaultPlan::Rate {
            per_mille: 0,
            seed: 1,
            tag: None
        })
        .iter()
        .any(|&f| f)
    );
}

#[test]
fn new_session_resets_pool_and_plan() {
    {
        let _sim = Sim::new();
        pool::set_fault_injection(FaultPlan::EveryNth { n: 1, tag: None });
        assert!(ExAllocatePool2(POOL_FLAG_PAGED, 8, TAG_A).is_null());
        pool::set_fault_injection(FaultPlan::Off);
        let _leaked = ExAllocatePool2(POOL_FLAG_PAGED, 8, TAG_A);
    }
    let _sim = Sim::new();
    assert_eq!(pool::injected_failures(), 0);
    assert!(pool::outstanding().is_empty());
    let p = ExAllocatePool2(POOL_FLAG_PAGED, 8, TAG_A);
    assert!(!p.is_null());
    free(p, TAG_A);
}

// ---- misuse ----

#[test]
fn zero_bytes_panics() {
    expect_bugcheck(
        "fltsim: BAD_POOL_CALLER (0xC2, 0x00): ExAllocatePool2 of zero bytes",
        || {
            let _sim = Sim::new();
            let _ = ExAllocatePool2(POOL_FLAG_PAGED, 0, TAG_A);
        },
    );
}

#[test]
fn raise_on_failure_raises() {
    expect_bugcheck(
        "fltsim: ExAllocatePool2 raised STATUS_INSUFFICIENT_RESOURCES (invalid POOL_FLAGS",
        || {
            let _sim = Sim::new();
            let _ = ExAllocatePool2(POOL_FLAG_RAISE_ON_FAILURE, 8, TAG_A);
        },
    );
}

#[test]
fn injected_failure_raises_with_raise_on_failure() {
    expect_bugcheck("fault injected by the low-resources simulation", || {
        let _sim = Sim::new();
        pool::set_fault_injection(FaultPlan::EveryNth { n: 1, tag: None });
        let _ = ExAllocatePool2(POOL_FLAG_PAGED | POOL_FLAG_RAISE_ON_FAILURE, 8, TAG_A);
    });
}

#[test]
fn paged_allocation_at_dispatch_panics() {
    expect_bugcheck(
        "fltsim: BAD_POOL_CALLER (0xC2, 0x08): ExAllocatePool2 of paged pool at IRQL 2",
        || {
            let _sim = Sim::new();
            let _dispatch = irql::raise(irql::DISPATCH_LEVEL);
            let _ = ExAllocatePool2(POOL_FLAG_PAGED, 8, TAG_A);
        },
    );
}

#[test]
fn nonpaged_allocation_above_dispatch_panics() {
    expect_bugcheck(
        "fltsim: BAD_POOL_CALLER (0xC2, 0x08): ExAllocatePool2 of nonpaged pool at IRQL 3",
        || {
            let _sim = Sim::new();
            let _device = irql::raise(3);
            let _ = ExAllocatePool2(POOL_FLAG_NON_PAGED, 8, TAG_A);
        },
    );
}

#[test]
fn paged_free_at_dispatch_panics() {
    expect_bugcheck("fltsim: BAD_POOL_CALLER (0xC2, 0x09)", || {
        let _sim = Sim::new();
        let p = ExAllocatePool2(POOL_FLAG_PAGED, 8, TAG_A);
        let _dispatch = irql::raise(irql::DISPATCH_LEVEL);
        free(p, TAG_A);
    });
}

#[test]
fn free_of_unallocated_address_panics() {
    expect_bugcheck("fltsim: BAD_POOL_CALLER (0xC2, 0x99)", || {
        let _sim = Sim::new();
        let mut local = 0u64;
        free((&raw mut local).cast(), TAG_A);
    });
}

#[test]
fn double_free_panics() {
    expect_bugcheck("fltsim: BAD_POOL_CALLER (0xC2, 0x07)", || {
        let _sim = Sim::new();
        let p = ExAllocatePool2(POOL_FLAG_NON_PAGED, 8, TAG_A);
        free(p, TAG_A);
        free(p, TAG_A);
    });
}

#[test]
fn free_with_wrong_tag_panics() {
    expect_bugcheck(
        "fltsim: BAD_POOL_CALLER (0xC2, 0x0a): ExFreePoolWithTag",
        || {
            let _sim = Sim::new();
            let p = ExAllocatePool2(POOL_FLAG_NON_PAGED, 8, TAG_A);
            free(p, TAG_B);
        },
    );
}
