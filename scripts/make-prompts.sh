#!/usr/bin/env bash
# Writes the IVR prompts of examples/ivr-utility.toml to examples/prompts/ivr/, and the
# word prompts of place-in-line announcements ([announcements], node/src/announce.rs) to
# examples/prompts/announce/, as 8 kHz mono 16-bit WAV. Spoken by espeak-ng (Debian package `espeak-ng`) when it is installed,
# converted by sox; otherwise each prompt is a short tone of its own pitch (sox only), so
# the example runs either way. The project ships no third-party recordings.
# Usage: scripts/make-prompts.sh [IVR_OUT_DIR [ANNOUNCE_OUT_DIR]]
set -euo pipefail

out="${1:-$(dirname "$0")/../examples/prompts/ivr}"
words_out="${2:-$(dirname "$0")/../examples/prompts/announce}"
mkdir -p "$out" "$words_out"
command -v sox >/dev/null 2>&1 || { echo "make-prompts: needs sox (scripts/install-deps.sh)" >&2; exit 1; }

# name|text|fallback tone in Hz
prompts=(
  "welcome|Welcome to City Power and Water.|523"
  "menu|To report an outage, press 1. For a question about your bill, press 2. To speak to an agent, press 3. To hear these options again, press 0.|440"
  "account|Please type your account number, then the pound key.|660"
  "balance_due|Your account has an overdue balance. We will put you through to billing now.|880"
  "balance_ok|Your account is up to date. We will put you through to billing now.|784"
)

# The announcement words: numbers 0-19, the tens, "hundred", and the phrases.
words=()
names=(zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
  fifteen sixteen seventeen eighteen nineteen)
for n in $(seq 0 19); do words+=("$n|${names[$n]}|$((300 + n * 20))"); done
tens=(x x twenty thirty forty fifty sixty seventy eighty ninety)
for t in $(seq 2 9); do words+=("$((t * 10))|${tens[$t]}|$((700 + t * 20))"); done
words+=(
  "hundred|hundred|900"
  "you_are_caller|You are caller number|950"
  "expected_wait|Your expected wait is about|1000"
  "minute|minute|1050"
  "minutes|minutes|1100"
  "less_than_a_minute|less than a minute|1150"
  "more_than_an_hour|more than an hour|1200"
)

# say NAME TEXT HZ DIR: speak TEXT into DIR/NAME.wav, or a tone of HZ without espeak-ng.
say() {
  local wav="$4/$1.wav"
  if command -v espeak-ng >/dev/null 2>&1; then
    raw="$(mktemp --suffix=.wav)"
    espeak-ng -v en -s 150 -w "$raw" "$2"
    sox "$raw" -r 8000 -c 1 -b 16 -e signed-integer "$wav"
    rm -f "$raw"
  else
    sox -n -r 8000 -c 1 -b 16 -e signed-integer "$wav" synth 0.3 sine "$3" vol 0.3
  fi
}

for entry in "${prompts[@]}"; do
  IFS='|' read -r name text hz <<<"$entry"
  say "$name" "$text" "$hz" "$out"
  echo "make-prompts: $out/$name.wav"
done
for entry in "${words[@]}"; do
  IFS='|' read -r name text hz <<<"$entry"
  say "$name" "$text" "$hz" "$words_out"
done
echo "make-prompts: ${#words[@]} announcement words in $words_out"
