#!/usr/bin/env bash
# Builds the profile-guided optimised bellwether (docs/building.md): build/pgo/bellwether.
#   1. the instrumented build (preset pgo-gen, build/pgo-gen);
#   2. its training run (scripts/pgo-train.sh, ~40 s), skipped while the instrumented objects are
#      those the current profile was recorded with;
#   3. the optimised build (preset pgo, build/pgo) with the profile copied next to its objects.
# A new profile recompiles every object of build/pgo (ccache hashes each object's profile: an
# object whose profile did not change is a cache hit). Usage: scripts/pgo-build.sh
#   env: TRAIN_SECONDS (scripts/pgo-train.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
gen=build/pgo-gen
use=build/pgo

bash scripts/build.sh pgo-gen --target bellwether

# The profile matches the instrumented objects it was recorded with. The build-info object (the
# commit's id) changes with every commit without changing the code's shape: it is left out.
objects_sum() {
  find "$gen" -name '*.o' ! -path '*bw_build_info*' -print0 | sort -z | xargs -0 sha256sum |
    sha256sum | cut -d' ' -f1
}
stamp="$gen/pgo-profile.stamp"
sum="$(objects_sum)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$sum" ]] &&
  [[ -n "$(find "$gen" -name '*.gcda' -print -quit)" ]]; then
  echo "pgo-build: the profile in $gen matches its objects; no training"
else
  rm -f "$stamp"
  find "$gen" -name '*.gcda' -delete
  echo "pgo-build: training $gen/bellwether"
  bash scripts/pgo-train.sh "$gen/bellwether"
  [[ -n "$(find "$gen" -name '*.gcda' -print -quit)" ]] ||
    { echo "pgo-build: the training wrote no profile" >&2; exit 1; }
  echo "$sum" >"$stamp"
fi

# Copy the profile next to the optimised build's objects (the same paths under $use). When it
# differs from the one there, every object is compiled again (ninja does not see .gcda files).
changed=0
while IFS= read -r -d '' f; do
  cmp -s "$f" "$use/${f#"$gen"/}" || changed=1
done < <(find "$gen" -name '*.gcda' -print0)
while IFS= read -r -d '' f; do
  [[ -f "$gen/${f#"$use"/}" ]] || changed=1
done < <(find "$use" -name '*.gcda' -print0 2>/dev/null)
if [[ "$changed" == 1 ]]; then
  echo "pgo-build: new profile; compiling $use again"
  [[ -f "$use/build.ninja" ]] && cmake --build "$use" --target clean >/dev/null
  find "$use" -name '*.gcda' -delete 2>/dev/null || true
  while IFS= read -r -d '' f; do
    mkdir -p "$(dirname "$use/${f#"$gen"/}")"
    cp "$f" "$use/${f#"$gen"/}"
  done < <(find "$gen" -name '*.gcda' -print0)
fi
bash scripts/build.sh pgo --target bellwether
echo "pgo-build: built $use/bellwether"
