//! A seeded multi-volume, multi-thread workload.

use fltsim::{FileSystem, OpenOptions, Volume};
use windows_sys::Win32::Foundation::STATUS_SUCCESS;

use crate::harness::{Machine, for_each_driver};

/// `SplitMix64`: a small deterministic generator, so every run issues the same I/O.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What one thread of [`run`] did to one file: `(opens, reads, writes, bytes read, bytes written)`.
pub type Done = std::collections::BTreeMap<(usize, String), (u64, u64, u64, u64, u64)>;

/// Creates `files` files of 64 KiB on each volume, then runs `threads` threads of `operations`
/// seeded operations each over them: each operation opens a file, reads and writes random lengths a
/// few times and closes it. Asserts that every operation succeeds; returns what was done, per (volume index,
/// file).
pub fn run(
    machine: &Machine,
    volumes: &[Volume],
    threads: u64,
    operations: u64,
    files: u64,
) -> Done {
    let name = |index: u64| format!(r"\file-{index:03}.dat");
    for &volume in volumes {
        for index in 0..files {
            machine.sim.create_file(volume, &name(index), 0x1_0000);
        }
    }
    let results: Vec<Done> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let (sim, name) = (&machine.sim, &name);
                scope.spawn(move || {
                    let mut rng = Rng::new(0x10_7A11 + thread);
                    let mut done = Done::new();
                    for _ in 0..operations {
                        let v = usize::try_from(rng.below(volumes.len() as u64)).unwrap();
                        let path = name(rng.below(files));
                        let mut file = sim.open(volumes[v], &path, OpenOptions::open()).unwrap();
                        let tally = done.entry((v, path)).or_default();
                        tally.0 += 1;
                        for _ in 0..rng.below(4) {
                            let length = u32::try_from(1 + rng.below(8192)).unwrap();
                            if rng.below(3) == 0 {
                                assert_eq!(file.write(length, 0).status, STATUS_SUCCESS);
                                tally.2 += 1;
                                tally.4 += u64::from(length);
                            } else {
                                assert_eq!(file.read(length, 0).status, STATUS_SUCCESS);
                                tally.1 += 1;
                                tally.3 += u64::from(length);
                            }
                        }
                        assert_eq!(file.close(), STATUS_SUCCESS);
                    }
                    done
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut total = Done::new();
    for done in results {
        for (key, t) in done {
            let sum = total.entry(key).or_default();
            *sum = (
                sum.0 + t.0,
                sum.1 + t.1,
                sum.2 + t.2,
                sum.3 + t.3,
                sum.4 + t.4,
            );
        }
    }
    total
}

/// The device names of [`volumes`], in order.
pub const DEVICES: [&str; 3] = [
    r"\Device\HarddiskVolume2",
    r"\Device\HarddiskVolume3",
    r"\Device\HarddiskVolume4",
];

/// The three volumes the workload runs on.
pub fn volumes(machine: &Machine) -> [Volume; 3] {
    [
        machine.volume(2, FileSystem::Ntfs),
        machine.volume(3, FileSystem::Refs),
        machine.volume(4, FileSystem::ExFat),
    ]
}

for_each_driver! {
    fn a_multi_volume_multi_thread_workload_runs_clean(driver: Driver) {
        let machine = Machine::new(driver);
        let volumes = volumes(&machine);
        let done = run(&machine, &volumes, 4, 300, 40);
        assert!(done.len() > 100, "the workload touched only {} files", done.len());
        machine.unload_clean();
    }
}
