//! A deterministic fault-injection sweep: a full lifecycle (load, attach three volumes of different
//! file systems, I/O of every kind, port use, a reset, detach, attach again with I/O, unload) is run once fault-free to count its
//! M eligible requests (pool allocations, contexts, file name information), then once per failure
//! point N in 1..=M with exactly the Nth request failed ([`FaultPlan::Nth`]). Every run must:
//! reach its failure point; not panic; show the workload the same I/O results as the fault-free run
//! (the filter never fails user I/O for its own lack of memory); leave no pool allocated and a clean
//! verifier report after unload; and keep every tally either exact or lower with the loss counted
//! (`allocation_failures`, `name_query_failures`, the `untracked_*` statistics), never half-written
//! (reads without their bytes). A `DriverEntry` whose allocation failed must fail with an `NTSTATUS`
//! error and leave nothing behind. A port request may fail with an error status.
//!
//! Every point is visited on every driver: a lifecycle takes a few milliseconds, even on the debug
//! image. The sweep prints how many points it visited (CI shows the line).

use std::collections::BTreeMap;

use fltsim::pool::{self, FaultPlan};
use fltsim::{FileSystem, OpenOptions, Sim, Volume, VolumeSpec};
use iotally_protocol::Stat;
use iotallyctl::client::{Client, Error, Instance};
use iotallyctl::sim::SimPort;
use iotallyctl::transport::{Code, ConnectError};
use windows_sys::Win32::Foundation::{NTSTATUS, STATUS_FLT_INSTANCE_NOT_FOUND, STATUS_SUCCESS};

use crate::harness::{Driver, for_each_driver, install, stat};

/// The volumes of the lifecycle: device name and file system.
const VOLUMES: [(&str, FileSystem); 3] = [
    (r"\Device\HarddiskVolume2", FileSystem::Ntfs),
    (r"\Device\HarddiskVolume3", FileSystem::Refs),
    (r"\Device\HarddiskVolume4", FileSystem::Fat),
];

/// What one operation of the workload returned: its name, status and `IoStatus.Information`.
type IoRecord = (String, NTSTATUS, usize);

/// Counts of one file as the port reports them: `(opens, reads, writes, bytes read, bytes written)`.
type Counts = (u64, u64, u64, u64, u64);

/// What the port reported about one instance.
#[derive(Clone, Debug)]
struct Tallies {
    /// Per file ID: the name tallied and the counts.
    files: BTreeMap<String, (String, Counts)>,
    /// The instance's statistics, by name.
    stats: BTreeMap<String, u64>,
}

/// What one run of the lifecycle saw.
#[derive(Debug, Default)]
struct Outcome {
    /// `DriverEntry`'s status.
    load: NTSTATUS,
    /// Every result the workload saw, in order.
    io: Vec<IoRecord>,
    /// Per device name, the instance's tallies (absent: the driver has no instance there).
    tallies: BTreeMap<String, Tallies>,
    /// Whether a port request (connect included) failed, and was retried after the failure point.
    port_failed: bool,
    /// Whether the port's reset of the last volume succeeded.
    reset: bool,
    /// The detach's, the second attach's and the unload's statuses.
    detach: NTSTATUS,
    reattach: NTSTATUS,
    unload: NTSTATUS,
    /// Eligible requests the fault plan saw, and how many it failed.
    eligible: u64,
    injected: u64,
    /// What was left behind once the driver was gone (or `DriverEntry` failed): the verifier's
    /// findings and pool still allocated; `None` if nothing.
    leak: Option<String>,
    /// Whether the driver logged a failed instance setup (for lack of pool).
    setup_failed: bool,
}

/// The I/O of the lifecycle on one volume of file system `fs`, each result recorded in `io`; `round`
/// names the files it renames and links to (new names each time the workload runs on a volume).
fn workload(sim: &Sim, volume: Volume, fs: FileSystem, round: u32, io: &mut Vec<IoRecord>) {
    let mut record = |what: &str, status: NTSTATUS, information: usize| {
        io.push((what.to_owned(), status, information));
    };
    let open =
        |path: &str, options: OpenOptions, record: &mut dyn FnMut(&str, NTSTATUS, usize)| match sim
            .open(volume, path, options)
        {
            Ok(file) => {
                record(
                    &format!("open {path}"),
                    STATUS_SUCCESS,
                    file.create_information(),
                );
                Some(file)
            }
            Err(status) => {
                record(&format!("open {path}"), status, 0);
                None
            }
        };
    if sim.file_id(volume, r"\data.bin").is_none() {
        sim.create_file(volume, r"\data.bin", 0x1_0000);
    }
    if let Some(mut file) = open(r"\new.txt", OpenOptions::create(), &mut record) {
        for (what, result) in [
            ("write", file.write(100, 0)),
            ("read", file.read(50, 0)),
            ("fast write", file.fast_write(200, 100)),
            ("fast read", file.fast_read(120, 0)),
        ] {
            record(what, result.status, result.information);
        }
        record("close", file.close(), 0);
    }
    for round in 0..2_u32 {
        if let Some(mut file) = open(r"\data.bin", OpenOptions::open(), &mut record) {
            for (what, result) in [
                ("noncached read", file.read_noncached(4096, 0)),
                (
                    "noncached write",
                    file.write_noncached(4096, 8192 * u64::from(round + 1)),
                ),
                ("read", file.read(1000 + 7 * round, 3)),
                ("fast read", file.fast_read(500 + round, 10)),
            ] {
                record(what, result.status, result.information);
            }
            record("close", file.close(), 0);
        }
    }
    if let Some(mut file) = open(r"\new.txt", OpenOptions::open(), &mut record) {
        let renamed = file.rename(&format!(r"\renamed{round}.txt"), false);
        record("rename", renamed.status, renamed.information);
        let read = file.read(10, 0);
        record("read after rename", read.status, read.information);
        record("close", file.close(), 0);
    }
    if let Some(mut file) = open(r"\data.bin", OpenOptions::open(), &mut record) {
        // MDL transfers, and fast I/O that the file system refuses under a byte-range lock (the
        // I/O manager reissues it as an IRP: counted once).
        for (what, result) in [
            ("mdl read", file.mdl_read(2048, 0)),
            ("mdl write", file.mdl_write(1024, 4096)),
            ("lock", file.lock(0, 512, true)),
            ("fast read under a lock", file.fast_read(256, 1024)),
            ("fast write under a lock", file.fast_write(256, 2048)),
        ] {
            record(what, result.status, result.information);
        }
        if fs == FileSystem::Ntfs {
            let linked = file.link(&format!(r"\data-link{round}.bin"), false);
            record("link", linked.status, linked.information);
        }
        record("close", file.close(), 0);
    }
    // A file created, deleted and created again: on FAT the second takes the first's directory
    // entry, so the same file ID (a fresh tally, not the old one's).
    for round in 0..2_u32 {
        if let Some(mut file) = open(r"\doomed.tmp", OpenOptions::create(), &mut record) {
            let written = file.write(30 + round, 0);
            record("write", written.status, written.information);
            let deleted = file.delete();
            record("delete", deleted.status, deleted.information);
            record("close", file.close(), 0);
        }
    }
    if let Some(directory) = open(r"\dir", OpenOptions::directory(), &mut record) {
        record("close", directory.close(), 0);
    }
    if fs != FileSystem::Fat
        && let Some(mut stream) = open(r"\data.bin:side", OpenOptions::create(), &mut record)
    {
        let written = stream.write(64, 0);
        record("stream write", written.status, written.information);
        record("close", stream.close(), 0);
    }
}

/// Whether `error` is a clean refusal: an error status, or no instance on a volume.
fn clean_refusal(error: &Error) -> bool {
    match error {
        Error::Refused { status, .. } | Error::Transport(Code::NtStatus(status)) => *status < 0,
        Error::NoInstance(_) => true,
        _ => false,
    }
}

/// A client of the port; `None` if the connection was refused with an error status (a failure
/// point in the port's connect notification).
fn connect(sim: &Sim) -> Option<Client<SimPort<'_>>> {
    match SimPort::connect(sim, fltsim::Caller::Administrator, &[]) {
        Ok(port) => Some(Client::new(port)),
        Err(ConnectError::Other(Code::NtStatus(status))) if status < 0 => None,
        Err(other) => panic!("connect failed unexpectedly: {other:?}"),
    }
}

/// Connects, says hello, lists the instances and dumps each; `None` (after asserting that the
/// failure was clean) if some request failed.
fn port_use(sim: &Sim) -> Option<BTreeMap<String, Tallies>> {
    let mut client = connect(sim)?;
    let checked = |error: Error| {
        assert!(
            clean_refusal(&error),
            "a port request failed uncleanly: {error:?}"
        );
    };
    client.hello().map_err(checked).ok()?;
    let (_, instances) = client.instances().map_err(checked).ok()?;
    let mut tallies = BTreeMap::new();
    for instance in &instances {
        let dump = client.dump(&instance.volume, 0).map_err(checked).ok()?;
        assert_eq!(dump.total as usize, dump.files.len(), "{}", instance.volume);
        tallies.insert(instance.volume.clone(), summary(instance, &dump.files));
    }
    client
        .lookup(&format!(r"{}\data.bin", VOLUMES[0].0))
        .map_err(checked)
        .ok()?;
    Some(tallies)
}

/// Resets the tallies of the last volume through the port, as `iotallyctl reset` does; `false`
/// (after asserting that the failure was clean) if a request failed.
fn port_reset(sim: &Sim) -> bool {
    let Some(mut client) = connect(sim) else {
        return false;
    };
    match client.reset(Some(VOLUMES[2].0)) {
        Ok(_) => true,
        Err(error) => {
            assert!(
                clean_refusal(&error),
                "a port request failed uncleanly: {error:?}"
            );
            false
        }
    }
}

/// One instance's report as [`Tallies`].
fn summary(instance: &Instance, files: &[iotallyctl::client::File]) -> Tallies {
    Tallies {
        files: files
            .iter()
            .map(|f| {
                (
                    f.file_id.clone(),
                    (
                        f.name.clone(),
                        (f.opens, f.reads, f.writes, f.bytes_read, f.bytes_written),
                    ),
                )
            })
            .collect(),
        stats: Stat::ALL
            .iter()
            .map(|&s| (s.name().to_owned(), stat(instance, s)))
            .collect(),
    }
}

/// Runs the lifecycle on `driver` under `plan` (set before the driver loads).
fn lifecycle(driver: Driver, plan: FaultPlan) -> Outcome {
    let sim = Sim::new();
    install();
    pool::set_fault_injection(plan);
    let mut outcome = Outcome {
        load: driver.load(&sim),
        ..Outcome::default()
    };
    if outcome.load != STATUS_SUCCESS {
        assert!(
            !sim.driver_loaded(),
            "DriverEntry failed but the driver stayed loaded"
        );
        return finish(&sim, outcome);
    }
    let volumes: Vec<Volume> = VOLUMES
        .iter()
        .map(|&(device, fs)| sim.add_volume(VolumeSpec::new(device, fs)))
        .collect();
    for (&volume, &(_, fs)) in volumes.iter().zip(&VOLUMES) {
        workload(&sim, volume, fs, 0, &mut outcome.io);
    }
    outcome.tallies = port_use(&sim).unwrap_or_else(|| {
        // The failure point was in the port's requests; nothing fails after it, so the tallies
        // can now be read.
        outcome.port_failed = true;
        assert_eq!(
            pool::injected_failures(),
            1,
            "a port request failed without a fault"
        );
        port_use(&sim).expect("the port works once the failure point is past")
    });
    outcome.reset = port_reset(&sim);
    outcome.detach = sim.detach(volumes[0]);
    // Attached again, with I/O: the instance is set up anew (its own allocations, failure points).
    outcome.reattach = sim.attach(volumes[0]);
    workload(&sim, volumes[0], VOLUMES[0].1, 1, &mut outcome.io);
    outcome.unload = sim.unload(false);
    finish(&sim, outcome)
}

/// Completes `outcome` with what the session's fault plan, verifier, pool and log say.
fn finish(sim: &Sim, mut outcome: Outcome) -> Outcome {
    let report = sim.verifier_report();
    let outstanding = pool::outstanding();
    if !report.is_clean() || !outstanding.is_empty() {
        outcome.leak = Some(format!("{report}pool outstanding: {outstanding:?}"));
    }
    outcome.eligible = pool::eligible_requests();
    outcome.injected = pool::injected_failures();
    outcome.setup_failed = fltsim::kernel::debug_log().iter().any(|l| {
        l.text
            .starts_with("iotally: instance setup failed: 0xc000009a")
    });
    outcome
}

/// Asserts that `faulty`'s tallies of one instance are `exact`'s or lower with the loss counted.
fn assert_consistent(device: &str, exact: &Tallies, faulty: &Tallies, context: &str) {
    let counted_loss =
        faulty.stats["allocation_failures"] > 0 || faulty.stats["name_query_failures"] > 0;
    let mut lost = false;
    for (id, (name, got)) in &faulty.files {
        let Some((exact_name, did)) = exact.files.get(id) else {
            panic!("{context}: {device}: a tally of file {id} ({name:?}) the fault-free run lacks");
        };
        if name != exact_name {
            assert!(
                name.is_empty() && faulty.stats["name_query_failures"] > 0,
                "{context}: {device}: file {id} tallied as {name:?}, not {exact_name:?}, without a \
                 counted name query failure"
            );
            lost = true;
        }
        assert!(
            got.0 <= did.0 && got.1 <= did.1 && got.2 <= did.2 && got.3 <= did.3 && got.4 <= did.4,
            "{context}: {device}: {exact_name}: tallied {got:?}, more than the fault-free {did:?}"
        );
        assert!(
            (got.1 == did.1) == (got.3 == did.3) && (got.2 == did.2) == (got.4 == did.4),
            "{context}: {device}: {exact_name}: half-written tally {got:?} (fault-free {did:?})"
        );
        lost |= got != did;
    }
    lost |= faulty.files.len() < exact.files.len();
    assert!(
        !lost || counted_loss,
        "{context}: {device}: tallies lost without a counted allocation or name query failure: \
         {faulty:?}, fault-free {exact:?}"
    );
    // Every read and write the filter saw is either in a tally or counted as untracked.
    let sums = |t: &Tallies| {
        t.files.values().fold((0, 0, 0, 0), |s, (_, c)| {
            (s.0 + c.1, s.1 + c.2, s.2 + c.3, s.3 + c.4)
        })
    };
    let seen = |t: &Tallies| {
        let s = sums(t);
        (
            s.0 + t.stats["untracked_reads"],
            s.1 + t.stats["untracked_writes"],
            s.2 + t.stats["untracked_bytes_read"],
            s.3 + t.stats["untracked_bytes_written"],
        )
    };
    assert_eq!(
        seen(faulty),
        seen(exact),
        "{context}: {device}: reads and writes neither tallied nor counted as untracked"
    );
}

/// Asserts everything the sweep promises about the run that failed request `n`.
fn assert_survived(driver: Driver, n: u64, exact: &Outcome, faulty: &Outcome) {
    let context = format!("{driver:?}, request {n} failed");
    assert_eq!(
        faulty.injected, 1,
        "{context}: the failure point was not reached"
    );
    if faulty.load != STATUS_SUCCESS {
        assert!(
            faulty.load < 0,
            "{context}: DriverEntry returned {:#010x}, not an NTSTATUS error",
            faulty.load.cast_unsigned()
        );
        return;
    }
    assert_eq!(
        faulty.io, exact.io,
        "{context}: the workload saw other I/O results"
    );
    // The detached volume is the first; without an instance there, there is nothing to detach.
    let detach = if faulty.tallies.contains_key(VOLUMES[0].0) {
        exact.detach
    } else {
        STATUS_FLT_INSTANCE_NOT_FOUND
    };
    assert_eq!(
        (faulty.detach, faulty.unload),
        (detach, exact.unload),
        "{context}: detach or unload"
    );
    assert!(
        faulty.reset || faulty.injected == 1,
        "{context}: the port's reset failed without a fault"
    );
    assert!(
        faulty.reattach == exact.reattach || (faulty.reattach < 0 && faulty.setup_failed),
        "{context}: the second attach returned {:#010x} without a logged instance setup failure",
        faulty.reattach.cast_unsigned()
    );
    for (device, tallies) in &exact.tallies {
        match faulty.tallies.get(device) {
            Some(faulty) => assert_consistent(device, tallies, faulty, &context),
            None => assert!(
                faulty.setup_failed,
                "{context}: no instance on {device}, and no instance setup failure logged"
            ),
        }
    }
}

for_each_driver! {
    fn every_failure_point_of_a_lifecycle_is_survived(driver: Driver) {
        let never = FaultPlan::Nth { n: u64::MAX, tag: None };
        let exact = lifecycle(driver, never);
        assert_eq!(exact.load, STATUS_SUCCESS);
        assert_eq!(exact.injected, 0);
        assert_eq!(exact.leak, None, "the fault-free lifecycle leaks");
        assert!(!exact.port_failed && !exact.setup_failed && exact.reset);
        assert_eq!(exact.reattach, STATUS_SUCCESS, "the second attach");
        assert_eq!(exact.tallies.len(), VOLUMES.len(), "not attached to every volume");
        assert!(exact.io.iter().all(|(_, status, _)| *status >= 0), "{:?}", exact.io);
        let m = exact.eligible;
        assert!(m > 0, "the lifecycle makes no eligible request");
        assert_eq!(lifecycle(driver, never).eligible, m, "the lifecycle is not deterministic");
        let started = std::time::Instant::now();
        let (mut visited, mut survived, mut leaks) = (0_u64, 0_u64, Vec::new());
        let (mut failed_loads, mut failed_setups, mut failed_port_requests) = (0, 0, 0);
        for n in 1..=m {
            let run = std::panic::catch_unwind(|| lifecycle(driver, FaultPlan::Nth { n, tag: None }));
            let faulty = run.unwrap_or_else(|panic| {
                eprintln!("fault sweep ({driver:?}): the run that failed request {n} panicked");
                std::panic::resume_unwind(panic)
            });
            visited += u64::from(faulty.injected == 1);
            assert_survived(driver, n, &exact, &faulty);
            survived += 1;
            failed_loads += u32::from(faulty.load != STATUS_SUCCESS);
            failed_setups += u32::from(faulty.setup_failed);
            failed_port_requests += u32::from(faulty.port_failed || !faulty.reset);
            if let Some(leak) = faulty.leak {
                leaks.push(format!("request {n} failed: {leak}"));
            }
        }
        eprintln!(
            "fault sweep ({driver:?}): {visited} failure points visited, {survived} survived, {} \
             leaks ({failed_loads} failed DriverEntry, {failed_setups} failed an instance setup, \
             {failed_port_requests} a port request), in {:.1?}",
            leaks.len(),
            started.elapsed()
        );
        assert!(visited > 0, "no failure point visited");
        assert_eq!(visited, m, "failure points not reached");
        assert!(leaks.is_empty(), "{driver:?}: {}", leaks.join("\n"));
    }
}
