#!/usr/bin/env bash
# Instructions per filtered read in fltsim at 1,000 and 100,000 files (all open, each with a stream
# context), counted by callgrind: the workload runs with 0 and with READS reads, and the difference
# is divided by READS, so setup costs cancel out. Needs valgrind (apt-get install valgrind).
#
#   bash fltsim/benches/read_scale.sh [--check] [READS]
#
# With --check it fails unless a read at 100,000 files costs at most 1.5 times one at 1,000 (the
# simulator's lookups must not grow with the number of files, handles and contexts).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
check=false
if [[ ${1:-} == --check ]]; then
    check=true
    shift
fi
reads=${1:-2000}
cargo build --release --locked -p fltsim --example read_scale
binary=target/release/examples/read_scale

instructions() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$binary" "$1" "$2" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

declare -A per_read
for files in 1000 100000; do
    base=$(instructions "$files" 0)
    total=$(instructions "$files" "$reads")
    per_read[$files]=$(((total - base) / reads))
    echo "$files files: ${per_read[$files]} instructions per read"
done
if $check && ((per_read[100000] * 2 > per_read[1000] * 3)); then
    echo "a read at 100,000 files costs more than 1.5 times one at 1,000" >&2
    exit 1
fi
