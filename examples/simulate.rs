//! iotally at work without Windows: loads the driver into fltsim, replays a workload over a few
//! volumes from several threads, and shows what `iotallyctl` prints for it, through the driver's
//! communication port.
//!
//! `cargo run --example simulate` (add `--release` for a faster run; `-- --ops N` to change the
//! amount of I/O).

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fltsim::{Caller, FileSystem, OpenOptions, Sim, Volume, VolumeSpec};
use iotallyctl::cli::{Batch, Cli, run};
use iotallyctl::client::Client;
use iotallyctl::sim::SimPort;

/// A small deterministic generator (xorshift64*), so every run replays the same workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n`, skewed towards small values (a few files get most of the I/O): the
    /// product of two uniform draws, scaled back into range.
    fn skewed(&mut self, n: u64) -> u64 {
        let a = self.next() % n;
        let b = self.next() % n;
        a * b / (n - 1).max(1)
    }
}

/// One kind of activity on one volume.
struct Scenario {
    label: &'static str,
    volume: usize,
    dir: &'static str,
    extension: &'static str,
    files: u64,
    read_size: u32,
    write_size: u32,
    /// Out of 10: how many operations are writes.
    writes_in_ten: u64,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        label: "build",
        volume: 0,
        dir: r"\src\kernel",
        extension: "rs",
        files: 400,
        read_size: 8192,
        write_size: 4096,
        writes_in_ten: 1,
    },
    Scenario {
        label: "logs",
        volume: 0,
        dir: r"\Windows\Logs",
        extension: "log",
        files: 12,
        read_size: 512,
        write_size: 256,
        writes_in_ten: 9,
    },
    Scenario {
        label: "database",
        volume: 1,
        dir: r"\db",
        extension: "mdf",
        files: 6,
        read_size: 65_536,
        write_size: 16_384,
        writes_in_ten: 3,
    },
    Scenario {
        label: "photos",
        volume: 2,
        dir: r"\DCIM\100CANON",
        extension: "jpg",
        files: 900,
        read_size: 32_768,
        write_size: 1_048_576,
        writes_in_ten: 5,
    },
];

fn main() {
    let ops: u64 = std::env::args()
        .skip_while(|a| a != "--ops")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(120_000);
    let sim = Sim::new();
    // Installed from its INF first, as Windows Setup would: Filter Manager reads the instance
    // definitions (altitude) from the service key.
    if let Err(error) = fltsim::inf::install(include_str!("../inf/iotally.inx")) {
        panic!("inf/iotally.inx does not install: {error}");
    }
    let status = sim.load("iotally", iotally::DriverEntry);
    assert_eq!(status, 0, "DriverEntry failed: {status:#x}");
    let volumes = [
        (
            "C:",
            sim.add_volume(VolumeSpec::new(
                r"\Device\HarddiskVolume2",
                FileSystem::Ntfs,
            )),
        ),
        (
            "D:",
            sim.add_volume(VolumeSpec::new(
                r"\Device\HarddiskVolume3",
                FileSystem::Refs,
            )),
        ),
        (
            "E:",
            sim.add_volume(VolumeSpec::new(
                r"\Device\HarddiskVolume4",
                FileSystem::ExFat,
            )),
        ),
        (
            "Z:",
            sim.add_volume(VolumeSpec::new(
                r"\Device\Mup\fileserver\share",
                FileSystem::Network,
            )),
        ),
    ];
    for (letter, volume) in volumes {
        let attached = if sim.instance(volume).is_some() {
            "attached"
        } else {
            "not attached (policy)"
        };
        println!("{letter} {attached}");
    }
    for scenario in &SCENARIOS {
        make_dirs(&sim, volumes[scenario.volume].1, scenario.dir);
    }
    replay(&sim, &volumes.map(|(_, v)| v), ops);
    let drives = [
        ("C:", r"\Device\HarddiskVolume2"),
        ("D:", r"\Device\HarddiskVolume3"),
        ("E:", r"\Device\HarddiskVolume4"),
    ];
    let port = SimPort::connect(&sim, Caller::Administrator, &drives)
        .unwrap_or_else(|e| panic!("iotallyctl: {e}"));
    let mut client = Client::new(port);
    for args in [
        &["instances"][..],
        &["top", "C:"],
        &["top", "D:", "-n", "3"],
        &["top", "E:", "--by", "writes", "-n", "5"],
    ] {
        println!("\n$ iotallyctl {}", args.join(" "));
        let cli = Cli::from_args(args.iter().copied()).unwrap_or_else(|e| panic!("{e}"));
        let mut out = std::io::stdout();
        run(&cli, &mut client, &mut out, &mut Batch(std::io::stdout()))
            .unwrap_or_else(|e| panic!("iotallyctl: {e}"));
    }
    drop(client);
    assert_eq!(sim.unload(false), 0, "unload failed");
    let report = sim.verifier_report();
    println!("\n{report}");
    report.assert_clean();
}

/// Creates `dir` and its parents on `volume` in the simulated file system.
fn make_dirs(sim: &Sim, volume: Volume, dir: &str) {
    let mut path = String::new();
    for component in dir.split('\\').filter(|c| !c.is_empty()) {
        path.push('\\');
        path.push_str(component);
        if sim.file_id(volume, &path).is_none() {
            sim.create_directory(volume, &path);
        }
    }
}

/// Replays `ops` operations over the scenarios from four threads, showing progress.
fn replay(sim: &Sim, volumes: &[Volume], ops: u64) {
    const THREADS: u64 = 4;
    let done = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let done = &done;
            scope.spawn(move || worker(sim, volumes, thread, ops / THREADS, done));
        }
        loop {
            let finished = done.load(Ordering::Relaxed);
            progress(finished, ops, start.elapsed());
            if finished >= ops / THREADS * THREADS {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    eprintln!();
}

fn progress(done: u64, total: u64, elapsed: Duration) {
    const WIDTH: u64 = 40;
    let filled = (done * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    #[allow(clippy::cast_precision_loss)] // a display figure
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { '.' })
        .collect();
    eprint!("\r[{bar}] {done:>7}/{total} I/O operations  {rate:>9.0} op/s");
    let _ = std::io::stderr().flush();
}

/// One thread's share: open a file of a scenario, do a few reads or writes, close it.
fn worker(sim: &Sim, volumes: &[Volume], thread: u64, ops: u64, done: &AtomicU64) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (thread + 1));
    let mut issued = 0;
    while issued < ops {
        let scenario = &SCENARIOS[usize::try_from(rng.next() % 4).unwrap_or(0)];
        let volume = volumes[scenario.volume];
        let file = rng.skewed(scenario.files);
        let path = format!(
            r"{}\{}-{file:04}.{}",
            scenario.dir, scenario.label, scenario.extension
        );
        let mut handle = match sim.open(volume, &path, OpenOptions::create()) {
            Ok(handle) => handle,
            Err(status) => panic!("open {path} failed: {status:#x}"),
        };
        let burst = 1 + rng.next() % 8;
        for i in 0..burst {
            let offset = i * u64::from(scenario.read_size);
            if rng.next() % 10 < scenario.writes_in_ten {
                handle.write(scenario.write_size, offset);
            } else {
                handle.read(scenario.read_size, offset);
            }
        }
        let _ = handle.close();
        issued += burst + 2;
        done.fetch_add(burst + 2, Ordering::Relaxed);
    }
}
