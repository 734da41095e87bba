#!/usr/bin/env bash
# Regenerates docs/screenshots/{cozmic-dashboard,admin-health}.png: starts
# cozmic (release, a temporary data dir, an unreachable AI provider so the
# healing shows), signs up a student, finishes lessons, asks the tutor, then
# photographs the dashboard and the admin health page in headless Chromium.
# Needs: chromium (apt-get install chromium), node + npm.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
data=$(mktemp -d)
port=18181
token="screenshot-admin-token-$(date +%s)"
cargo build --release -p cozmic
COZMIC_BIND=127.0.0.1:$port COZMIC_DATA_DIR="$data" ADMIN_TOKEN="$token" \
  OPENAI_API_KEY=sk-demo OPENAI_BASE_URL=http://127.0.0.1:9/v1 COZMIC_LOG=warn \
  ./target/release/cozmic >"$data/cozmic.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
(cd scripts/screenshots && npm install --silent --no-audit --no-fund)
COZMIC_URL="http://127.0.0.1:$port" ADMIN_TOKEN="$token" OUT_DIR="$root/docs/screenshots" \
  node scripts/screenshots/shoot.mjs
echo "wrote docs/screenshots/cozmic-dashboard.png and docs/screenshots/admin-health.png"
