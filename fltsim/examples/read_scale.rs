//! A fixed workload for counting instructions under callgrind: `FILES` files, all open, then
//! `READS` filtered reads on one of them.
//!
//! ```sh
//! cargo run --release -p fltsim --example read_scale -- 100000 10000
//! ```
//!
//! `fltsim/benches/read_scale.sh` runs it under callgrind with 0 and with `READS` reads and prints
//! the difference per read, at 1,000 and 100,000 files.

#[path = "../benches/support/mod.rs"]
mod support;

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let (Some(Ok(files)), Some(Ok(reads))) = (args.next(), args.next()) else {
        eprintln!("usage: read_scale FILES READS");
        std::process::exit(2);
    };
    let transferred = support::with_open_files(files, |handles| {
        let handle = handles.last_mut().expect("at least one file");
        (0..reads)
            .map(|_| handle.read(4096, 0).information)
            .sum::<usize>()
    });
    println!("{files} files: {reads} reads, {transferred} bytes");
}
