//! Exact totals under a seeded multi-threaded workload mixing every transfer kind (cached,
//! non-cached, fast I/O with seeded refusals, MDL, paging) on NTFS, ReFS, FAT and exFAT.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;

use common::{Loaded, totals};
use fltsim::{FastIo, FileSystem, OpenOptions};

/// A small seeded generator (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const THREADS: u64 = 4;
const FILES_PER_THREAD: u64 = 3;
const ROUNDS: u64 = 150;

#[test]
fn totals_are_exact_on_every_file_system() {
    let t = Loaded::new();
    let volumes = [
        (t.volume(2, FileSystem::Ntfs), 11),
        (t.volume(3, FileSystem::Refs), 12),
        (t.volume(4, FileSystem::Fat), 13),
        (t.volume(5, FileSystem::ExFat), 14),
    ];
    let expected = Mutex::new(BTreeMap::<(usize, String), (u64, u64, u64, u64, u64)>::new());
    for (v, (volume, seed)) in volumes.iter().enumerate() {
        t.sim.set_fast_io(
            *volume,
            FastIo::Seeded {
                seed: *seed,
                one_in: 4,
            },
        );
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let (sim, expected) = (&t.sim, &expected);
                let volume = *volume;
                scope.spawn(move || {
                    let mut rng = Rng(seed * 1000 + thread + 1);
                    let mut mine = BTreeMap::new();
                    for _ in 0..ROUNDS {
                        let name = format!(r"\t{thread}-{}", rng.below(FILES_PER_THREAD));
                        let mut h = sim.open(volume, &name, OpenOptions::create()).unwrap();
                        let e: &mut (u64, u64, u64, u64, u64) = mine.entry(name).or_default();
                        e.0 += 1;
                        for _ in 0..rng.below(6) {
                            let length = u32::try_from(1 + rng.below(4096)).unwrap();
                            let offset = rng.below(16384);
                            // Every request counts, failed or not (a fast I/O refused by the
                            // file system counts once, as the IRP it is reissued as).
                            let read = match rng.below(8) {
                                0 => {
                                    h.read(length, offset);
                                    true
                                }
                                1 => {
                                    h.write(length, offset);
                                    false
                                }
                                2 => {
                                    h.fast_read(length, offset);
                                    true
                                }
                                3 => {
                                    h.fast_write(length, offset);
                                    false
                                }
                                4 => {
                                    h.mdl_read(length, offset);
                                    true
                                }
                                5 => {
                                    h.mdl_write(length, offset);
                                    false
                                }
                                6 => {
                                    h.read_noncached(length, offset);
                                    true
                                }
                                _ => {
                                    // Paging I/O is never counted.
                                    h.read_paging(length, offset);
                                    continue;
                                }
                            };
                            if read {
                                e.1 += 1;
                                e.3 += u64::from(length);
                            } else {
                                e.2 += 1;
                                e.4 += u64::from(length);
                            }
                        }
                        drop(h);
                    }
                    let mut all = expected.lock().unwrap();
                    for (name, counts) in mine {
                        all.insert((v, name), counts);
                    }
                });
            }
        });
    }
    let expected = expected.into_inner().unwrap();
    for (v, (volume, _)) in volumes.iter().enumerate() {
        let tallies = t.tallies(*volume).unwrap();
        let wanted: BTreeMap<&str, _> = expected
            .iter()
            .filter(|((i, _), _)| *i == v)
            .map(|((_, name), counts)| (name.as_str(), *counts))
            .collect();
        let got: BTreeMap<&str, _> = tallies
            .iter()
            .map(|(name, counts)| (name.as_str(), totals(counts)))
            .collect();
        assert_eq!(got, wanted, "volume {v}");
    }
    t.unload_clean();
}
