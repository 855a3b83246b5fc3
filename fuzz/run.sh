#!/usr/bin/env bash
# Runs Chorus's fuzz targets one after another, SECONDS each (default 240), at the lowest
# priority (nice 19, or $NICE), one libFuzzer process (no -jobs),
# keeping each target's corpus in corpus/<target> (seeded from seeds/<target>) and its log in
# logs/<target>.log. Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Builds with overflow checks and debug assertions on (-a) and without a sanitizer (-s none):
# Chorus forbids unsafe code, so the sanitizer would mostly watch dependencies, at about half
# the speed. Crashes land in artifacts/<target>/; reproduce one with
#   cargo +nightly fuzz run -s none -a <target> artifacts/<target>/<crash-file>
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-240}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(signal_message jwt sdp route datagram call rtp_rtcp codecs containers relay)
fi
mkdir -p logs
for t in "${targets[@]}"; do
  dict=()
  case $t in
    sdp) dict=(-dict=dicts/sdp.dict) ;;
    signal_message | jwt) dict=(-dict=dicts/json.dict) ;;
  esac
  mkdir -p "corpus/$t"
  echo "== $t: ${secs}s"
  nice -n "${NICE:-19}" cargo +nightly fuzz run -s none -a "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 "${dict[@]}" >"logs/$t.log" 2>&1 || {
    echo "   $t stopped (crash or error): see logs/$t.log and artifacts/$t/"
  }
  grep -E "^#[0-9]+.*(DONE|INITED)|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb" "logs/$t.log" | tail -n 5 || true
done
