#!/usr/bin/env bash
# Deterministic companion of benches/http.rs, table 1: user-space
# instructions per successful GET (client and server threads together) for
# each contender, counted by valgrind's cachegrind. Wall time on a shared
# 2-core machine moves by more than the overhead being measured; instruction
# counts do not. Needs valgrind (apt-get install valgrind).
#
#   bash crates/bench/benches/http-instructions.sh
#
# Each contender runs twice (1 and 3 rounds of 1,000 requests, after the same
# warm-up); the difference divided by 2,000 is the per-request count, free of
# start-up costs (building clients, loading certificates).
set -euo pipefail
cd "$(dirname "$0")/../../.."

bin=$(cargo bench -p selfheal-bench --bench http --no-run 2>&1 |
  sed -n 's/.*Executable benches\/http.rs (\(.*\))$/\1/p' | tail -1)
[ -x "$bin" ] || { echo "bench binary not found" >&2; exit 1; }

count() {
  SELFHEAL_BENCH_ONLY="$1" SELFHEAL_BENCH_ROUNDS="$2" SELFHEAL_BENCH_BATCH=1000 \
    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null "$bin" --bench 2>&1 |
    awk '/I[ ]+refs/ { gsub(",", "", $4); print $4 }'
}

contenders=(
  "reqwest"
  "reqwest, 30 s timeout"
  "reqwest-middleware (empty)"
  "reqwest-retry"
  "selfheal"
  "selfheal, no timeout or deadline"
)

echo "| contender | instructions/request | vs reqwest | vs reqwest, 30 s timeout |"
echo "|---|---:|---:|---:|"
base=""
base_timeout=""
for c in "${contenders[@]}"; do
  one=$(count "$c" 1)
  three=$(count "$c" 3)
  per=$(((three - one) / 2000))
  [ -n "$base" ] || base=$per
  [ "$c" != "reqwest, 30 s timeout" ] || base_timeout=$per
  vs_timeout="n/a"
  [ -z "$base_timeout" ] || vs_timeout=$(awk -v a="$per" -v b="$base_timeout" 'BEGIN { printf "%+.1f%%", (a / b - 1) * 100 }')
  printf '| %s | %d | %s | %s |\n' "$c" "$per" \
    "$(awk -v a="$per" -v b="$base" 'BEGIN { printf "%+.1f%%", (a / b - 1) * 100 }')" "$vs_timeout"
done
