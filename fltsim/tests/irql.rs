//! Simulated IRQL: per thread, raised and lowered like KeRaiseIrql/KeLowerIrql.

use fltsim::Sim;
use fltsim::irql::{self, APC_LEVEL, DISPATCH_LEVEL, KeGetCurrentIrql, PASSIVE_LEVEL};

#[test]
fn threads_start_at_passive_and_raise_nests() {
    let _sim = Sim::new();
    assert_eq!(KeGetCurrentIrql(), PASSIVE_LEVEL);
    {
        let _apc = irql::raise(APC_LEVEL);
        assert_eq!(irql::current(), APC_LEVEL);
        {
            let _dispatch = irql::raise(DISPATCH_LEVEL);
            assert_eq!(KeGetCurrentIrql(), DISPATCH_LEVEL);
        }
        assert_eq!(
            irql::current(),
            APC_LEVEL,
            "dropping the guard lowers to the previous IRQL"
        );
    }
    assert_eq!(irql::current(), PASSIVE_LEVEL);
}

#[test]
fn irql_is_per_thread() {
    let _sim = Sim::new();
    let _dispatch = irql::raise(DISPATCH_LEVEL);
    let other = std::thread::spawn(irql::current).join().unwrap();
    assert_eq!(other, PASSIVE_LEVEL);
}

#[test]
fn check_max_accepts_the_ceiling() {
    let _sim = Sim::new();
    let _apc = irql::raise(APC_LEVEL);
    irql::check_max("FltSomething", APC_LEVEL);
}

#[test]
#[should_panic(
    expected = "fltsim: IRQL_NOT_LESS_OR_EQUAL: FltSomething called at IRQL 2, its ceiling is 1"
)]
fn check_max_panics_above_the_ceiling() {
    let _sim = Sim::new();
    let _dispatch = irql::raise(DISPATCH_LEVEL);
    irql::check_max("FltSomething", APC_LEVEL);
}

#[test]
#[should_panic(expected = "fltsim: IRQL_NOT_GREATER_OR_EQUAL: KeRaiseIrql to 1 from higher IRQL 2")]
fn raising_to_a_lower_irql_panics() {
    let _sim = Sim::new();
    let _dispatch = irql::raise(DISPATCH_LEVEL);
    let _lower = irql::raise(APC_LEVEL);
}

#[test]
fn irql_checks_can_be_turned_off_for_one_session() {
    let sim = Sim::new();
    sim.set_irql_checks(false);
    let dispatch = irql::raise(DISPATCH_LEVEL);
    // Without Verifier the call goes through: no violation, no stop.
    irql::check_max("KeEnterCriticalRegion", APC_LEVEL);
    // The ceiling (APC_LEVEL) is not checked: the handle is, and reported.
    // SAFETY: a null context is refused with a report, not dereferenced.
    unsafe {
        windows_sys::Wdk::Storage::FileSystem::Minifilters::FltDeleteContext(std::ptr::null_mut());
    };
    drop(dispatch);
    let report = std::panic::catch_unwind(|| sim.check()).unwrap_err();
    let report = report.downcast_ref::<String>().unwrap();
    assert!(
        report.starts_with("fltsim: invalid handle: FltDeleteContext"),
        "{report}"
    );
    drop(sim);
    let _sim = Sim::new();
    let _dispatch = irql::raise(DISPATCH_LEVEL);
    let stopped = std::panic::catch_unwind(|| irql::check_max("KeEnterCriticalRegion", APC_LEVEL));
    assert!(stopped.is_err(), "a new Sim checks the IRQL again");
}
