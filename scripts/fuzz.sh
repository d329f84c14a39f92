#!/usr/bin/env bash
# Fuzz knotd's decoders and validators with cargo-fuzz (libFuzzer).
#
#   scripts/fuzz.sh [seconds-per-target]        default: 10
#
# Builds every target in fuzz/ once, then runs each for the given number of
# seconds, starting from the seed inputs in fuzz/seeds/<target>/ copied into a
# scratch corpus. Exits non-zero if any target crashes, after printing the
# path of the input that crashed it (under fuzz/artifacts/<target>/).
#
# cargo-fuzz needs rustc flags that are nightly-only (-Zsanitizer, sancov
# passes). RUSTC_BOOTSTRAP=1 makes a stable rustc accept them, so no nightly
# toolchain is required.
#
# Environment:
#   FUZZ_SANITIZER=address|none   sanitizer (default address); `none` builds
#                                 faster and runs faster, but misses memory
#                                 errors in unsafe code
#   FUZZ_TARGETS="a b"            run only these targets
#   FUZZ_CORPUS=DIR               keep the corpus in DIR/<target> instead of a
#                                 scratch directory, so runs build on each other
#   FUZZ_JOBS=N                   parallel libFuzzer jobs per target (default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

secs=${1:-10}
if ! [[ $secs =~ ^[0-9]+$ ]] || [ "$secs" -eq 0 ]; then
    echo "usage: scripts/fuzz.sh [seconds-per-target]" >&2
    exit 2
fi
sanitizer=${FUZZ_SANITIZER:-address}
jobs=${FUZZ_JOBS:-1}
all_targets=(announcement manifest record_json admin_command ticket repo_id ref_name pack_index)
read -r -a targets <<<"${FUZZ_TARGETS:-${all_targets[*]}}"

export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

target_dir="$root/fuzz/target"
host=$(rustc -vV | sed -n 's/^host: //p')
bin_dir="$target_dir/$host/release"

echo "== building ${#targets[@]} fuzz targets (sanitizer: $sanitizer)"
build_start=$(date +%s)
build=(cargo fuzz build --sanitizer "$sanitizer" --debug-assertions --target-dir "$target_dir")
if [ -z "${FUZZ_TARGETS:-}" ]; then
    "${build[@]}"
else
    for t in "${targets[@]}"; do
        "${build[@]}" "$t"
    done
fi
build_secs=$(($(date +%s) - build_start))
echo "== build took ${build_secs}s"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/knotd-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

failed=()
summary=()
for t in "${targets[@]}"; do
    if [ -n "${FUZZ_CORPUS:-}" ]; then
        corpus="$FUZZ_CORPUS/$t"
    else
        corpus="$scratch/corpus/$t"
    fi
    mkdir -p "$corpus" "$root/fuzz/artifacts/$t"
    if [ -d "$root/fuzz/seeds/$t" ]; then
        cp -n "$root/fuzz/seeds/$t"/* "$corpus"/ 2>/dev/null || true
    fi
    log="$scratch/$t.log"
    extra=()
    if [ -f "$root/fuzz/seeds/$t.dict" ]; then
        extra+=("-dict=$root/fuzz/seeds/$t.dict")
    fi
    if [ "$jobs" -gt 1 ]; then
        extra+=("-jobs=$jobs" "-workers=$jobs")
    fi
    echo "== fuzzing $t for ${secs}s"
    status=0
    (cd "$scratch" && "$bin_dir/$t" "$corpus" \
        -max_total_time="$secs" \
        -rss_limit_mb=2048 \
        -timeout=10 \
        -print_final_stats=1 \
        -artifact_prefix="$root/fuzz/artifacts/$t/" \
        "${extra[@]}") >"$log" 2>&1 || status=$?
    if [ "$jobs" -gt 1 ]; then
        cat "$scratch"/fuzz-*.log >>"$log" 2>/dev/null || true
        rm -f "$scratch"/fuzz-*.log
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | awk '{s += $1} END {print s + 0}')
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | awk '{s += $1} END {print s + 0}')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    units=$(ls "$corpus" | wc -l)
    if [ "$status" -ne 0 ]; then
        artifact=$(grep -o 'Test unit written to .*' "$log" | tail -n 1 | sed 's/^Test unit written to //')
        echo "!! $t failed (exit $status); input: ${artifact:-none written}"
        grep -m 1 -A 16 -E 'panicked at|ERROR: AddressSanitizer|ERROR: LeakSanitizer|ERROR: libFuzzer' "$log" ||
            tail -n 40 "$log"
        failed+=("$t:${artifact:-no-artifact}")
    fi
    summary+=("$(printf '%-14s %12s execs %8s/s  cov %6s  corpus %5s  %s' \
        "$t" "$execs" "$rate" "${cov:-?}" "$units" "$([ "$status" -eq 0 ] && echo ok || echo CRASH)")")
done

echo "== summary (${secs}s per target, build ${build_secs}s, sanitizer $sanitizer)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "== crashes:"
    printf '  %s\n' "${failed[@]}"
    echo "reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer $sanitizer --debug-assertions <target> <input>"
    exit 1
fi
