#!/usr/bin/env bash
# Compares the dataflow spine of this working tree with that of an earlier commit, in one run:
# builds the `spine` benchmark of both (the earlier one in a git worktree under
# target/spine-compare), runs their cases interleaved round by round with the same flags, and
# prints each case's median obs/s and obs per CPU-second with the ratio this tree / BASE.
#
# Usage: benches/spine-compare.sh BASE [ROUNDS] [-- SPINE FLAGS]
#   e.g. benches/spine-compare.sh f5b2053 3 -- --cases w1,w2 --obs 200000
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 BASE [ROUNDS] [-- SPINE FLAGS]" >&2
  exit 2
fi
base=$1
shift
rounds=3
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  rounds=$1
  shift
fi
[ "${1:-}" = "--" ] && shift
flags=("$@")

top=$(git rev-parse --show-toplevel)
cd "$top"
base_commit=$(git rev-parse --short "$base")
work="$top/target/spine-compare"
base_tree="$work/base-$base_commit"
mkdir -p "$work"
if [ ! -d "$base_tree" ]; then
  git worktree add --detach "$base_tree" "$base_commit" >/dev/null
fi

echo "building the spine benchmark of $base_commit and of this tree (release)" >&2
(cd "$base_tree" && cargo build --release --locked -p tapio-benches --bin spine)
cargo build --release --locked -p tapio-benches --bin spine
base_bin="$base_tree/target/release/spine"
this_bin="${CARGO_TARGET_DIR:-$top/target}/release/spine"

results="$work/results-$base_commit.txt"
: >"$results"
for round in $(seq 1 "$rounds"); do
  for side in base this; do
    bin=$base_bin
    [ "$side" = this ] && bin=$this_bin
    echo "round $round of $rounds: $side" >&2
    # Each case runs in a child process whose RESULT line the benchmark relays on stderr.
    "$bin" "${flags[@]}" 2>&1 | grep -E '^[[:space:]]*RESULT ' \
      | sed -E "s/^[[:space:]]*RESULT /RESULT side=$side /" >>"$results"
  done
done

python3 - "$results" "$base_commit" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    key = (fields["case"], fields["side"])
    rows.setdefault(key, []).append(fields)
cases = sorted({case for case, _ in rows})
print(f"| case | {sys.argv[2]} obs/s | this tree obs/s | ratio | {sys.argv[2]} obs/CPU-s | this tree obs/CPU-s | ratio | changes (base → this) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for case in cases:
    base, this = rows.get((case, "base"), []), rows.get((case, "this"), [])
    if not base or not this:
        continue
    med = lambda runs, key: statistics.median(float(run[key]) for run in runs)
    b, t = med(base, "obs_per_s"), med(this, "obs_per_s")
    bc, tc = med(base, "obs_per_cpu_s"), med(this, "obs_per_cpu_s")
    print(f"| {case} | {b:,.0f} | {t:,.0f} | {t / b:.2f} | {bc:,.0f} | {tc:,.0f} | {tc / bc:.2f} | {base[0]['changes']} → {this[0]['changes']} |")
PY
