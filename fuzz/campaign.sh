#!/bin/sh
# The fuzz campaign of docs/hardening.md: every target for a fixed number of
# executions, first a short pass under AddressSanitizer, then the bulk without a
# sanitizer (the crate forbids unsafe code; the bulk looks for panics, hangs
# and unbounded allocation, which need no sanitizer, at 2-3x the speed).
#
#   cd fuzz && ./campaign.sh [scale]      # scale 1 (default): 10^8 executions
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and, on a stable toolchain,
# RUSTC_BOOTSTRAP=1 (set here) for the -Z flags cargo-fuzz passes to rustc.
# Logs go to $LOGS (default ./logs); the executions of each run are summed at
# the end. A crash leaves its input under artifacts/<target>/ and stops the
# campaign.
set -eu
scale=${1:-1}
LOGS=${LOGS:-logs}
export RUSTC_BOOTSTRAP=1
mkdir -p "$LOGS"
# -timeout: one input may take 10 s at most (a hang); -rss_limit_mb: the process
# may hold 2 GiB at most; -malloc_limit_mb (sanitizer pass only): no single
# allocation over 64 MiB (an unbounded one).
common="-timeout=10 -rss_limit_mb=2048 -print_final_stats=1"

run() { # sanitizer target runs extra...
    san=$1; t=$2; n=$3; shift 3
    mkdir -p "corpus/$t"
    echo "== $t sanitizer=$san runs=$n" | tee -a "$LOGS/summary.txt"
    # The sanitizer-free build lives beside the default one: no rebuild each way.
    if [ "$san" = none ]; then td="--target-dir=target/none"; else td=""; fi
    nice -n 10 cargo fuzz run -O -s "$san" $td "$t" \
        "corpus/$t" "seeds/$t" -- -runs="$n" $common "$@" \
        > "$LOGS/$t.$san.log" 2>&1
    grep -E "stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb|Done " \
        "$LOGS/$t.$san.log" | tee -a "$LOGS/summary.txt"
}

targets="framing syslog_header json_payload csv_payload convert"
for t in $targets; do
    run address "$t" $((500000 * scale)) -malloc_limit_mb=64
done
run none syslog_header $((40000000 * scale))
run none framing $((15000000 * scale))
run none json_payload $((15000000 * scale))
run none csv_payload $((15000000 * scale))
run none convert $((15000000 * scale))
awk '/number_of_executed_units/ { s += $2 } END { print "total executions:", s }' \
    "$LOGS/summary.txt" | tee -a "$LOGS/summary.txt"
