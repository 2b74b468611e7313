//! fltsim at scale: a filtered read with 1,000 and with 100,000 files, handles and stream contexts
//! on the volume (criterion). Every simulated lookup is indexed, so the two should cost the same;
//! the ratio is printed by criterion as the two results of the `read` group.
//!
//! ```sh
//! cargo bench -p fltsim --bench scale
//! ```
//!
//! For a count that does not depend on the machine's load, `fltsim/benches/read_scale.sh` counts
//! instructions per read under callgrind.

#[path = "support/mod.rs"]
mod support;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn reads(c: &mut Criterion) {
    let mut group = c.benchmark_group("read");
    for files in [1_000, 100_000] {
        support::with_open_files(files, |handles| {
            let handle = handles.last_mut().expect("at least one file");
            group.bench_function(BenchmarkId::from_parameter(files), |b| {
                b.iter(|| handle.read(4096, 0));
            });
        });
    }
    group.finish();
}

criterion_group!(benches, reads);
criterion_main!(benches);
