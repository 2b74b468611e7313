//! Failing pool allocations (Driver Verifier's low-resources simulation): the driver loses tallies,
//! never I/O, and leaks nothing.

use fltsim::pool::{self, FaultPlan};
use iotally::pool::tags;

use iotally_protocol::Stat;

use crate::harness::{Machine, for_each_driver, stat};
use crate::workload;

for_each_driver! {
    fn failing_allocations_never_fail_io_or_leak(driver: Driver) {
        let machine = Machine::new(driver);
        let volumes = workload::volumes(&machine);
        pool::set_fault_injection(FaultPlan::percent(20, 0x5EED, None));
        // `run` asserts that every operation succeeds.
        let done = workload::run(&machine, &volumes, 2, 200, 30);
        assert!(pool::injected_failures() > 0, "no allocation was failed");
        pool::set_fault_injection(FaultPlan::Off);
        // What was tallied is never more than what was done, and every tally lost is counted.
        let mut client = machine.client();
        let (_, instances) = client.instances().unwrap();
        assert_eq!(instances.len(), volumes.len());
        for instance in &instances {
            let index = workload::DEVICES
                .iter()
                .position(|d| *d == instance.volume)
                .unwrap();
            let files = client.dump(&instance.volume, 0).unwrap();
            let mut lost = done.keys().filter(|(v, _)| *v == index).count() > files.files.len();
            for file in &files.files {
                // A name query that failed for lack of pool (fltsim fails those too) leaves the
                // tally without a name, and is counted.
                let Some(path) = file.name.strip_prefix(&instance.volume) else {
                    assert!(
                        file.name.is_empty() && stat(instance, Stat::NameQueryFailures) > 0,
                        "{}: a tally named {:?} without a counted name query failure",
                        instance.volume,
                        file.name
                    );
                    lost = true;
                    continue;
                };
                let did = done[&(index, path.to_owned())];
                let got = (file.opens, file.reads, file.writes, file.bytes_read, file.bytes_written);
                assert!(
                    got.0 <= did.0
                        && got.1 <= did.1
                        && got.2 <= did.2
                        && got.3 <= did.3
                        && got.4 <= did.4,
                    "{path}: tallied {got:?}, done {did:?}"
                );
                lost |= got != did;
            }
            if lost {
                assert!(
                    stat(instance, Stat::AllocationFailures) > 0,
                    "{}: tallies lost but no allocation failure counted",
                    instance.volume
                );
            }
        }
        drop(client);
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
