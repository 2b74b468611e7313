//! Failing pool allocations (Driver Verifier's low-resources simulation): the driver loses tallies,
//! never I/O, and leaks nothing.

use fltsim::pool::{self, FaultPlan};
use iotally::pool::tags;

use crate::harness::{Machine, for_each_driver};
use crate::workload;

for_each_driver! {
    fn failing_allocations_never_fail_io_or_leak(driver: Driver) {
        let machine = Machine::new(driver);
        let volumes = workload::volumes(&machine);
        pool::set_fault_injection(FaultPlan::percent(20, 0x5EED, None));
        // `run` asserts that every operation succeeds.
        workload::run(&machine, &volumes, 2, 200, 30);
        assert!(pool::injected_failures() > 0, "no allocation was failed");
        pool::set_fault_injection(FaultPlan::Off);
        machine.unload_clean();
    }
}

for_each_driver! {
    fn an_instance_setup_without_pool_fails_cleanly(driver: Driver) {
        let machine = Machine::new(driver);
        pool::set_fault_injection(FaultPlan::EveryNth {
            n: 1,
            tag: Some(tags::INSTANCE_CONTEXT.raw()),
        });
        let ntfs = machine.volume(2, fltsim::FileSystem::Ntfs);
        assert!(machine.sim.instance(ntfs).is_none(), "attached without an instance context");
        assert!(
            fltsim::kernel::debug_log()
                .iter()
                .any(|l| l.text == "iotally: instance setup failed: 0xc000009a\n"),
            "{:?}",
            fltsim::kernel::debug_log()
        );
        pool::set_fault_injection(FaultPlan::Off);
        assert_eq!(machine.sim.attach(ntfs), 0, "attaches once pool is back");
        machine.unload_clean();
    }
}
