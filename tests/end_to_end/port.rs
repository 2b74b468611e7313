//! What the driver tallied, read the way `iotallyctl` reads it: through its communication port,
//! with iotallyctl's client code.

use std::collections::BTreeMap;

use fltsim::{Caller, FileSystem, OpenOptions};
use iotally_protocol::Stat;
use iotallyctl::sim::SimPort;
use iotallyctl::transport::ConnectError;
use windows_sys::Win32::Foundation::STATUS_SUCCESS;

use crate::harness::{Machine, for_each_driver, stat};
use crate::workload::{self, DEVICES};

/// Counts as a tuple: `(opens, reads, writes, bytes read, bytes written)`.
type Counts = (u64, u64, u64, u64, u64);

/// Every file the driver tallied on `device`, by path on the volume.
fn tallied(
    client: &mut iotallyctl::client::Client<SimPort<'_>>,
    device: &str,
) -> BTreeMap<String, Counts> {
    let files = client.dump(device, 0).unwrap();
    assert_eq!(files.total as usize, files.files.len());
    files
        .files
        .iter()
        .map(|f| {
            let path = f.name.strip_prefix(device).unwrap_or(&f.name).to_owned();
            (
                path,
                (f.opens, f.reads, f.writes, f.bytes_read, f.bytes_written),
            )
        })
        .collect()
}

for_each_driver! {
    fn exact_tallies_over_a_multi_volume_multi_thread_workload(driver: Driver) {
        let machine = Machine::new(driver);
        let volumes = workload::volumes(&machine);
        let done = workload::run(&machine, &volumes, 4, 300, 40);
        let mut client = machine.client();
        let (_, instances) = client.instances().unwrap();
        assert_eq!(instances.len(), 3);
        for (index, device) in DEVICES.iter().enumerate() {
            let expected: BTreeMap<String, Counts> = done
                .iter()
                .filter(|((volume, _), _)| *volume == index)
                .map(|((_, path), counts)| (path.clone(), *counts))
                .collect();
            assert_eq!(tallied(&mut client, device), expected, "{device}");
            let instance = instances.iter().find(|i| i.volume == *device).unwrap();
            let sum = expected.values().fold((0, 0, 0, 0, 0), |s, c| {
                (s.0 + c.0, s.1 + c.1, s.2 + c.2, s.3 + c.3, s.4 + c.4)
            });
            let t = &instance.totals;
            assert_eq!(
                (t.opens, t.reads, t.writes, t.bytes_read, t.bytes_written),
                sum,
                "{device}"
            );
            assert_eq!(instance.entries, expected.len() as u64);
            assert_eq!(stat(instance, Stat::Inserts), expected.len() as u64);
            assert_eq!(stat(instance, Stat::AllocationFailures), 0);
            assert_eq!(stat(instance, Stat::UntrackedReads), 0);
            assert_eq!(stat(instance, Stat::UntrackedWrites), 0);
        }
        drop(client);
        machine.unload_clean();
    }
}

for_each_driver! {
    fn eviction_keeps_the_bound_and_the_most_recent_files(driver: Driver) {
        let machine = Machine::with_max_entries(driver, Some(16));
        let ntfs = machine.volume(2, FileSystem::Ntfs);
        for i in 0..100 {
            let mut file = machine
                .sim
                .open(ntfs, &format!(r"\f{i:03}"), OpenOptions::create())
                .unwrap();
            assert_eq!(file.write(1, 0).status, STATUS_SUCCESS);
            assert_eq!(file.close(), STATUS_SUCCESS);
        }
        let mut client = machine.client();
        assert_eq!(client.hello().unwrap().max_entries_per_instance, 16);
        let expected: BTreeMap<String, Counts> =
            (84..100).map(|i| (format!(r"\f{i:03}"), (1, 0, 1, 0, 1))).collect();
        assert_eq!(tallied(&mut client, DEVICES[0]), expected);
        let (_, instances) = client.instances().unwrap();
        let instance = &instances[0];
        assert_eq!((instance.entries, instance.max_entries), (16, 16));
        assert_eq!(
            (stat(instance, Stat::Inserts), stat(instance, Stat::Evictions)),
            (100, 84)
        );
        drop(client);
        machine.unload_clean();
    }
}

for_each_driver! {
    fn the_port_serves_one_client_and_goes_away_with_the_driver(driver: Driver) {
        let machine = Machine::new(driver);
        machine.volume(2, FileSystem::Ntfs);
        let mut first = machine.client();
        let hello = first.hello().unwrap();
        assert_eq!((hello.protocol, hello.instances), (iotally_protocol::VERSION, 1));
        assert!(matches!(
            SimPort::connect(&machine.sim, Caller::Administrator, &[]),
            Err(ConnectError::Busy)
        ));
        drop(first);
        let connected = machine.client();
        // Unloading with a client connected: the driver closes its port, Filter Manager
        // disconnects the client.
        assert_eq!(machine.sim.unload(false), STATUS_SUCCESS);
        drop(connected);
        assert!(matches!(
            SimPort::connect(&machine.sim, Caller::Administrator, &[]),
            Err(ConnectError::NotLoaded)
        ));
        machine.sim.verifier_report().assert_clean();
    }
}
