//! Fixed, seeded workloads whose instruction and byte counts are iotally's performance budgets.
//!
//! `cargo xtask perf` and `cargo xtask budget` build this binary (profile `callgrind`) and run it,
//! under callgrind for instruction counts and natively for pool accounting; it prints one
//! `figure <name> <value>` line per measurement. Under callgrind, instrumentation is off until the
//! measured operations start (client requests below; `--instr-atstart=no`), so that filling a table
//! with a million files costs little; outside valgrind the requests do nothing.
//!
//! ```text
//! workload read FILES OPS           OPS tracked reads over FILES open files (pre-read)
//! workload write FILES OPS          the same with writes (pre-write)
//! workload reopen FILES OPS         opens of files whose stream is open (post-create, shared lock)
//! workload driver-evict FILL OPS    OPS new-file opens into a full driver table of FILL files
//!                                   (post-create), one callgrind dump per open
//! workload table-evict FILL OPS     the same on a Table<PagedAllocator> alone (record_open)
//! workload table-memory N           pool bytes of a table of N files (tags ItTb, ItFn)
//! workload driver-memory N          pool bytes of the driver with N files tallied on one volume
//! workload sizes                    size_of of the push lock, its guards and the table types
//! ```
//!
//! `cargo bench` runs it with `--bench`: every workload once, small, as a smoke test.

use std::hint::black_box;

use fltsim::registry::{self, Value};
use fltsim::{FileHandle, FileSystem, OpenOptions, Sim, Volume, VolumeSpec};
use iotally::pool::{PagedAllocator, tags};
use iotally::sync::{PushLock, PushLockReadGuard, PushLockWriteGuard};
use iotally::table::{CAPACITY, FileKey, Table, Tally};

/// Callgrind's client requests (valgrind's `callgrind.h`), issued with the magic instruction
/// sequence of valgrind's `valgrind.h` for amd64: a no-op on a real processor.
mod callgrind {
    /// `VG_USERREQ_TOOL_BASE('C', 'T')`.
    const BASE: u64 = (b'C' as u64) << 24 | (b'T' as u64) << 16;
    const DUMP_STATS: u64 = BASE;
    const START_INSTRUMENTATION: u64 = BASE + 4;

    #[cfg(target_arch = "x86_64")]
    fn request(code: u64) {
        let args: [u64; 6] = [code, 0, 0, 0, 0, 0];
        // SAFETY: four rotations of rdi by 128 bits in all leave it unchanged and `xchg rbx, rbx`
        // exchanges a register with itself: on a processor the sequence does nothing. Valgrind
        // recognizes it and reads the request from the six words at rax (alive for the call),
        // answering in rdx, which is declared clobbered.
        unsafe {
            core::arch::asm!(
                "rol rdi, 3", "rol rdi, 13", "rol rdi, 61", "rol rdi, 51",
                "xchg rbx, rbx",
                in("rax") args.as_ptr(),
                inout("rdx") 0_u64 => _,
                inout("rdi") 0_u64 => _,
                options(nostack),
            );
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn request(_code: u64) {}

    /// Turns instrumentation on (the run started with `--instr-atstart=no`).
    pub fn start() {
        request(START_INSTRUMENTATION);
    }

    /// Writes the counts since the last dump to a new profile file and zeroes them.
    pub fn dump() {
        request(DUMP_STATS);
    }
}

/// The registry key iotally reads its settings from under fltsim.
const PARAMETERS: &str = r"\REGISTRY\MACHINE\SYSTEM\ControlSet001\Services\iotally\Parameters";

fn figure(name: &str, value: impl std::fmt::Display) {
    println!("figure {name} {value}");
}

/// The path of file `i`: `\d<NNN>\f<NNNNNNN>`, 1,000 files per directory.
fn path(i: usize) -> String {
    format!(r"\d{:03}\f{i:07}", i / 1000)
}

/// The driver installed from its INF and loaded in fltsim with `max` entries per instance and one
/// NTFS volume.
fn driver(max: usize) -> (Sim, Volume) {
    let sim = Sim::new();
    fltsim::inf::install(include_str!("../inf/iotally.inx")).expect("inf/iotally.inx installs");
    registry::set_value(
        PARAMETERS,
        "MaxEntriesPerInstance",
        Value::Dword(u32::try_from(max).expect("at most 2^20")),
    );
    assert_eq!(sim.load("iotally", iotally::DriverEntry), 0, "DriverEntry");
    let volume = sim.add_volume(VolumeSpec::new(
        r"\Device\HarddiskVolume2",
        FileSystem::Ntfs,
    ));
    (sim, volume)
}

/// Creates files `range` (and their directories) on `volume`.
fn create_files(sim: &Sim, volume: Volume, range: std::ops::Range<usize>) {
    let start = range.start;
    for i in range {
        if i == start || i % 1000 == 0 {
            let dir = format!(r"\d{:03}", i / 1000);
            if sim.file_id(volume, &dir).is_none() {
                sim.create_directory(volume, &dir);
            }
        }
        sim.create_file(volume, &path(i), 1 << 20);
    }
}

/// Opens and closes files `range`: each becomes a tally.
fn open_and_close(sim: &Sim, volume: Volume, range: std::ops::Range<usize>) {
    for i in range {
        let handle = sim
            .open(volume, &path(i), OpenOptions::open())
            .expect("open");
        assert_eq!(handle.close(), 0);
    }
}

fn unload(sim: &Sim) {
    assert_eq!(sim.unload(false), 0, "unload");
    sim.verifier_report().assert_clean();
}

/// `ops` reads or writes (`write`) spread over `files` open files.
fn transfers(files: usize, ops: usize, write: bool) {
    let (sim, volume) = driver(files.max(1));
    create_files(&sim, volume, 0..files);
    let mut handles: Vec<FileHandle<'_>> = (0..files)
        .map(|i| {
            sim.open(volume, &path(i), OpenOptions::open())
                .expect("open")
        })
        .collect();
    callgrind::start();
    for op in 0..ops {
        let handle = &mut handles[op % files];
        let offset = (op as u64 * 4096) % (1 << 20);
        if write {
            handle.write(4096, offset);
        } else {
            handle.read(4096, offset);
        }
    }
    callgrind::dump();
    drop(handles);
    figure(if write { "write.ops" } else { "read.ops" }, ops);
    unload(&sim);
}

/// `ops` opens of files whose stream stays open (a second handle keeps the stream context).
fn reopens(files: usize, ops: usize) {
    let (sim, volume) = driver(files.max(1));
    create_files(&sim, volume, 0..files);
    let keep: Vec<FileHandle<'_>> = (0..files)
        .map(|i| {
            sim.open(volume, &path(i), OpenOptions::open())
                .expect("open")
        })
        .collect();
    callgrind::start();
    for op in 0..ops {
        let handle = sim
            .open(volume, &path(op % files), OpenOptions::open())
            .expect("reopen");
        assert_eq!(handle.close(), 0);
    }
    callgrind::dump();
    drop(keep);
    figure("reopen.ops", ops);
    unload(&sim);
}

/// `ops` opens of new files into a full driver table of `fill` files, each dumped on its own.
fn driver_evictions(fill: usize, ops: usize) {
    let (sim, volume) = driver(fill);
    create_files(&sim, volume, 0..fill + ops);
    open_and_close(&sim, volume, 0..fill);
    callgrind::start();
    callgrind::dump();
    for i in fill..fill + ops {
        let handle = sim
            .open(volume, &path(i), OpenOptions::open())
            .expect("open");
        callgrind::dump();
        assert_eq!(handle.close(), 0);
    }
    figure("driver-evict.fill", fill);
    figure("driver-evict.ops", ops);
    unload(&sim);
}

/// The measured call of `table-evict` (callgrind collects inside it only).
#[inline(never)]
fn measured_open(table: &mut Table<PagedAllocator>, key: FileKey, name: &[u16], now: i64) {
    black_box(table.record_open(black_box(key), black_box(name), now));
}

/// A table of `fill` files whose names are like the driver's (`\Device\HarddiskVolume2\d000\f...`).
fn filled_table(fill: usize) -> (Table<PagedAllocator>, Vec<u16>) {
    let mut table = Table::new_with_names_in(
        fill,
        PagedAllocator::new(tags::TABLE),
        PagedAllocator::new(tags::FILE_NAME),
    );
    let name: Vec<u16> = format!(r"\Device\HarddiskVolume2{}", path(0))
        .encode_utf16()
        .collect();
    for i in 0..fill {
        table.record_open(key(i), &name, i64::try_from(i).unwrap_or(i64::MAX));
    }
    (table, name)
}

/// The key of file `i`: NTFS-like file references (sequence number in the high 16 bits).
fn key(i: usize) -> FileKey {
    FileKey((1 << 48) | (i as u128 * 7 + 0x1000))
}

/// `ops` opens of new files into a full `Table` of `fill` files, each dumped on its own.
fn table_evictions(fill: usize, ops: usize) {
    let _sim = Sim::new();
    let (mut table, name) = filled_table(fill);
    callgrind::start();
    callgrind::dump();
    for i in fill..fill + ops {
        measured_open(&mut table, key(i), &name, i64::MAX);
        callgrind::dump();
    }
    figure("table-evict.fill", fill);
    figure("table-evict.ops", ops);
}

/// Outstanding pool per tag: `(paged, nonpaged)` bytes of `tag`.
fn pool_bytes(tag: iotally::pool::Tag) -> (usize, usize) {
    let mut bytes = (0, 0);
    for usage in fltsim::pool::outstanding_by_pool() {
        if usage.tag == tag.raw() {
            if usage.paged {
                bytes.0 += usage.bytes;
            } else {
                bytes.1 += usage.bytes;
            }
        }
    }
    bytes
}

/// Nonpaged bytes outstanding under every tag.
fn nonpaged_bytes() -> usize {
    fltsim::pool::outstanding_by_pool()
        .iter()
        .filter(|usage| !usage.paged)
        .map(|usage| usage.bytes)
        .sum()
}

/// The largest paged allocation made so far under one of iotally's tags.
fn largest_paged() -> usize {
    fltsim::pool::largest_allocations()
        .iter()
        .filter(|usage| usage.paged && usage.tag.to_le_bytes()[..2] == *b"It")
        .map(|usage| usage.bytes)
        .max()
        .unwrap_or(0)
}

#[allow(clippy::cast_precision_loss)] // figures
fn per(bytes: usize, n: usize) -> String {
    format!("{:.2}", bytes as f64 / n as f64)
}

/// Pool bytes of a table of `n` files, filled and bounded at `n` and at the limit.
fn table_memory(n: usize) {
    let _sim = Sim::new();
    for (label, max) in [("full", n), ("limit", CAPACITY)] {
        let mut table = Table::new_with_names_in(
            max,
            PagedAllocator::new(tags::TABLE),
            PagedAllocator::new(tags::FILE_NAME),
        );
        let name: Vec<u16> = "\\x".encode_utf16().collect();
        for i in 0..n {
            table.record_open(key(i), &name, 0);
        }
        let (paged, nonpaged) = pool_bytes(tags::TABLE);
        figure(
            &format!("table-memory.{label}.paged-per-entry"),
            per(paged, n),
        );
        figure(
            &format!("table-memory.{label}.nonpaged-per-entry"),
            per(nonpaged, n),
        );
        drop(table);
    }
    figure("table-memory.largest-paged", largest_paged());
    figure("table-memory.entries", n);
}

/// Pool bytes of the driver with `n` files tallied on one volume (`MaxEntriesPerInstance` = `n`).
fn driver_memory(n: usize) {
    let (sim, volume) = driver(n);
    let instance_nonpaged = nonpaged_bytes();
    let instance_paged = pool_bytes(tags::INSTANCE_CONTEXT).0 + pool_bytes(tags::VOLUME_NAME).0;
    create_files(&sim, volume, 0..n);
    open_and_close(&sim, volume, 0..n);
    let instance = sim.instance(volume).expect("attached");
    // SAFETY: `instance` is the live instance fltsim reports for the volume.
    let tallied = unsafe { iotally::inspect::with_instance(instance, |view| view.table().len()) };
    assert_eq!(tallied, Some(n));
    let table = pool_bytes(tags::TABLE);
    let names = pool_bytes(tags::FILE_NAME);
    figure("driver-memory.entries", n);
    figure("driver-memory.paged-per-entry", per(table.0, n));
    figure("driver-memory.name-bytes-per-entry", per(names.0, n));
    figure(
        "driver-memory.nonpaged-per-entry",
        per(nonpaged_bytes() - instance_nonpaged, n),
    );
    figure("driver-memory.nonpaged-per-instance", instance_nonpaged);
    figure("driver-memory.paged-per-instance", instance_paged);
    figure("driver-memory.largest-paged", largest_paged());
    unload(&sim);
}

fn sizes() {
    figure("size.push-lock-u64", size_of::<PushLock<u64>>());
    figure("size.read-guard", size_of::<PushLockReadGuard<'_, u64>>());
    figure("size.write-guard", size_of::<PushLockWriteGuard<'_, u64>>());
    figure("size.table", size_of::<Table<PagedAllocator>>());
    figure(
        "size.push-lock-table",
        size_of::<PushLock<Table<PagedAllocator>>>(),
    );
    figure("size.tally", size_of::<Tally>());
}

fn number(args: &[String], at: usize) -> usize {
    args.get(at)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("workload: argument {at} must be a number; see the source"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("read") => transfers(number(&args, 1), number(&args, 2), false),
        Some("write") => transfers(number(&args, 1), number(&args, 2), true),
        Some("reopen") => reopens(number(&args, 1), number(&args, 2)),
        Some("driver-evict") => driver_evictions(number(&args, 1), number(&args, 2)),
        Some("table-evict") => table_evictions(number(&args, 1), number(&args, 2)),
        Some("table-memory") => table_memory(number(&args, 1)),
        Some("driver-memory") => driver_memory(number(&args, 1)),
        Some("sizes") => sizes(),
        // `cargo bench` passes `--bench` (and maybe a filter): a quick run of everything.
        _ => {
            transfers(4, 100, false);
            transfers(4, 100, true);
            reopens(4, 100);
            driver_evictions(100, 10);
            table_evictions(1000, 10);
            table_memory(1000);
            driver_memory(100);
            sizes();
        }
    }
}
