#!/usr/bin/env bash
# Instructions per filtered read in fltsim at 1,000 and 100,000 files (all open, each with a stream
# context), counted by callgrind: the workload runs with 0 and with READS reads, and the difference
# is divided by READS, so setup costs cancel out. Needs valgrind (apt-get install valgrind).
#
#   bash fltsim/benches/read_scale.sh [READS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
reads=${1:-2000}
cargo build --release --locked -p fltsim --example read_scale
binary=target/release/examples/read_scale

instructions() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$binary" "$1" "$2" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

for files in 1000 100000; do
    base=$(instructions "$files" 0)
    total=$(instructions "$files" "$reads")
    echo "$files files: $(((total - base) / reads)) instructions per read"
done
