#!/usr/bin/env bash
# The project's test command (the README names it; .ci/run calls it).
# Installs what the tests drive (SIPp), builds the node binary the integration tests
# spawn, then runs every test with nextest in one pass.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --locked -p carillon
cargo nextest run --locked --workspace --no-fail-fast "$@"
