#!/usr/bin/env bash
# Runs every fuzz target for a fixed budget, one after the other (the
# machine is shared: one libFuzzer process at a time), and prints each
# target's executions, coverage and crashes.
#
#   fuzz/run.sh                # 60 s per target
#   fuzz/run.sh 180            # 180 s per target
#   fuzz/run.sh 60 form config # only these targets
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# New interesting inputs land in a scratch copy of the corpus; with
# MINIMIZE=1 the committed corpus and the new inputs are reduced to a small
# set that covers every edge either reached (libFuzzer's -set_cover_merge=1
# with -use_counters=0: edges, not hit counts) in fuzz/corpus/<target>/,
# ready to commit. A crash leaves its
# input in fuzz/artifacts/<target>/: fix the bug, then keep the input in
# fuzz/regressions/<target>/ (the stable test replays it).
#
# Without AddressSanitizer (`--sanitizer none`): the code under test is
# safe Rust, and the fuzzers run several times faster without it.
set -euo pipefail
cd "$(dirname "$0")"

budget="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(session_bytes session_json http_hints form config chaos_plan)
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo +nightly fuzz build --sanitizer none

mkdir -p logs
printf '| target | seconds | executions | exec/s | coverage (edges) | features | corpus | crashes |\n'
printf '| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n'
status=0
for target in "${targets[@]}"; do
    scratch="$(mktemp -d)"
    cp -r "corpus/$target/." "$scratch/" 2>/dev/null || true
    log="logs/$target.log"
    set +e
    cargo +nightly fuzz run --sanitizer none "$target" "$scratch" -- \
        -max_total_time="$budget" -rss_limit_mb=2048 -max_len=4096 \
        -print_final_stats=1 >"$log" 2>&1
    code=$?
    set -e
    # The last status line: "#123456 DONE cov: 812 ft: 2345 corp: 140/9Kb ... exec/s: 2057 ..."
    last="$(grep -E '^#[0-9]+' "$log" | tail -1)"
    execs="$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || true)"
    speed="$(grep -oE '^stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || true)"
    cov="$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || true)"
    ft="$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || true)"
    corp="$(grep -oE 'corp: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || true)"
    crashes=0
    if [ "$code" -ne 0 ]; then
        crashes=1
        status=1
        echo "$target: crashed (exit $code); see $log and artifacts/$target/" >&2
    fi
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' \
        "$target" "$budget" "${execs:-?}" "${speed:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes"
    if [ "${MINIMIZE:-0}" = "1" ] && [ "$code" -eq 0 ]; then
        merged="$(mktemp -d)"
        cargo +nightly fuzz run --sanitizer none "$target" "$merged" "corpus/$target" "$scratch" -- \
            -set_cover_merge=1 -use_counters=0 -rss_limit_mb=2048 -max_len=4096 \
            >"logs/$target.merge.log" 2>&1
        rm -rf "corpus/$target"
        mv "$merged" "corpus/$target"
    fi
    rm -rf "$scratch"
done
exit "$status"
