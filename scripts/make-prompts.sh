#!/usr/bin/env bash
# Writes the IVR prompts of examples/ivr-utility.toml to examples/prompts/ivr/ as 8 kHz
# mono 16-bit WAV. Spoken by espeak-ng (Debian package `espeak-ng`) when it is installed,
# converted by sox; otherwise each prompt is a short tone of its own pitch (sox only), so
# the example runs either way. The project ships no third-party recordings.
# Usage: scripts/make-prompts.sh [OUT_DIR]
set -euo pipefail

out="${1:-$(dirname "$0")/../examples/prompts/ivr}"
mkdir -p "$out"
command -v sox >/dev/null 2>&1 || { echo "make-prompts: needs sox (scripts/install-deps.sh)" >&2; exit 1; }

# name|text|fallback tone in Hz
prompts=(
  "welcome|Welcome to City Power and Water.|523"
  "menu|To report an outage, press 1. For a question about your bill, press 2. To speak to an agent, press 3. To hear these options again, press 0.|440"
  "account|Please type your account number, then the pound key.|660"
  "balance_due|Your account has an overdue balance. We will put you through to billing now.|880"
  "balance_ok|Your account is up to date. We will put you through to billing now.|784"
)

for entry in "${prompts[@]}"; do
  IFS='|' read -r name text hz <<<"$entry"
  wav="$out/$name.wav"
  if command -v espeak-ng >/dev/null 2>&1; then
    raw="$(mktemp --suffix=.wav)"
    espeak-ng -v en -s 150 -w "$raw" "$text"
    sox "$raw" -r 8000 -c 1 -b 16 -e signed-integer "$wav"
    rm -f "$raw"
  else
    sox -n -r 8000 -c 1 -b 16 -e signed-integer "$wav" synth 0.8 sine "$hz" vol 0.3
  fi
  echo "make-prompts: $wav"
done
