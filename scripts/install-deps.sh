#!/usr/bin/env bash
# Installs the external tools Carillon's integration tests and benchmarks drive:
# SIPp (Debian package `sip-tester`) for SIP callers and agent phones, and sox (Debian
# package `sox`) to check call recordings.
# Idempotent: installs only what is missing, and runs `apt-get update` at most once.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "install-deps: not root and no sudo; install these Debian packages by hand: sip-tester sox" >&2
    exit 1
  fi
fi

missing=()
command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
command -v sox >/dev/null 2>&1 || missing+=(sox)

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all present (sipp: $(command -v sipp), sox: $(command -v sox))"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
command -v sipp >/dev/null 2>&1 || { echo "install-deps: sipp still missing after install" >&2; exit 1; }
command -v sox >/dev/null 2>&1 || { echo "install-deps: sox still missing after install" >&2; exit 1; }
echo "install-deps: done (sipp: $(command -v sipp))"
