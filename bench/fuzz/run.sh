#!/usr/bin/env bash
# A time-bounded libFuzzer session for one target, built with clang + ASan + UBSan (the `fuzz`
# preset). New inputs go to a scratch copy of the corpus; crashes, leaks and timeouts are written
# to fuzz/findings/<target>/ (copy each one into fuzz/corpus/<target>/ once fixed, so the regular
# test suite replays it).
#
#   bench/fuzz/run.sh TARGET SECONDS        e.g. bench/fuzz/run.sh http_session 600
#   bench/fuzz/run.sh list
#
# Needs clang-16 and libfuzzer-16-dev (not part of the regular build):
#   apt-get install -y clang-16 libfuzzer-16-dev libclang-rt-16-dev
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
# The list may span lines: everything between "set(BW_FUZZ_TARGETS" and the closing parenthesis.
targets=$(sed -n '/^set(BW_FUZZ_TARGETS/,/)/p' fuzz/CMakeLists.txt | tr '\n' ' ' |
  sed 's/^set(BW_FUZZ_TARGETS *\([^)]*\)).*/\1/' | tr -s ' ' | sed 's/ *$//')
if [[ "${1:-}" == "list" || $# -lt 2 ]]; then
  echo "usage: $0 TARGET SECONDS; targets: $targets" >&2
  [[ "${1:-}" == "list" ]] && exit 0 || exit 2
fi
target=$1 seconds=$2
[[ " $targets " == *" $target "* ]] || { echo "unknown target '$target' ($targets)" >&2; exit 2; }
command -v clang++-16 >/dev/null || { echo "clang++-16 is missing (see the header of $0)" >&2; exit 2; }

# Build through the machine lock when it exists (shared build machines), else directly.
if command -v bw-build >/dev/null; then
  PRESET=fuzz bw-build --target "bw_fuzz_$target"
else
  cmake --preset fuzz >/dev/null && cmake --build --preset fuzz --target "bw_fuzz_$target"
fi

work=$(mktemp -d "/tmp/bw-fuzz-$target.XXXXXX")
cp -r "fuzz/corpus/$target/." "$work/"
findings="fuzz/findings/$target"
mkdir -p "$findings"
dict=()
[[ -f "fuzz/dict/$target.dict" ]] && dict=(-dict="fuzz/dict/$target.dict")
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
echo "fuzzing $target for ${seconds}s; corpus copy in $work, findings in $findings" >&2
set +e
nice -n 19 "build/fuzz/fuzz/bw_fuzz_$target" "$work" "fuzz/corpus/$target" "${dict[@]}" \
  -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
  -artifact_prefix="$findings/" -print_final_stats=1 2>&1 | tee "$work.log" | grep -E \
  "^#[0-9]+ *(INITED|DONE|pulse)|ERROR|SUMMARY|stat::|artifact" 
rc=${PIPESTATUS[0]}
set -e
echo "log: $work.log; new corpus inputs: $(ls "$work" | wc -l) in $work" >&2
exit "$rc"
