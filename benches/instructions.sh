#!/usr/bin/env bash
# Instruction counts (callgrind) per event for ringfold's publish_key and
# the flusher's fold; see benches/instructions.rs for what is counted and
# why it is measured this way. Prints:
#   publish_key: X Ir/event
#   fold: Y Ir/event
# Needs valgrind (Debian: apt-get install valgrind). publish_key is
# deterministic. The fold is not quite: how many events each sweep takes
# depends on how the two threads interleave under valgrind, and the
# per-sweep costs move the per-event figure by a few instructions, so it is
# measured FOLD_RUNS times (default 5) and reported as the median with its
# range.
#   N1, N2: event counts of the two fold runs (difference / (N2 - N1)).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 1; }

N_PUBLISH="${N_PUBLISH:-100000}"
N1="${N1:-100000}"
N2="${N2:-300000}"

bin="$(cargo bench --bench instructions --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)"
[ -x "$bin" ] || { echo "could not build the instructions bench" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Total Ir of the callgrind output files matching $1 (a glob).
ir() {
    local sum=0 f v
    for f in $1; do
        v="$(grep -m1 -E '^(summary|totals):' "$f" | awk '{print $2}')"
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

# $1: mode, $2: events, $3: output name, rest: extra valgrind options.
grind() {
    local mode="$1" n="$2" out="$3"
    shift 3
    RINGFOLD_CALLGRIND="$mode" RINGFOLD_CALLGRIND_EVENTS="$n" \
        valgrind --tool=callgrind --callgrind-out-file="$tmp/$out.%p" "$@" "$bin" \
        >"$tmp/$out.log" 2>&1 || { cat "$tmp/$out.log" >&2; exit 1; }
}

# publish_key: only the instructions inside publish_chunk (toggled on by
# name, per thread), minus the same loop without the publish.
grind publish "$N_PUBLISH" pub --collect-atstart=no '--toggle-collect=*publish_chunk*'
grind baseline "$N_PUBLISH" base --collect-atstart=no '--toggle-collect=*baseline_chunk*'
pub_ir="$(ir "$tmp/pub.*[0-9]")"
base_ir="$(ir "$tmp/base.*[0-9]")"

# fold: every thread but the main one (thread 1), i.e. the flusher, for two
# event counts; the difference cancels setup, shutdown and final windows.
FOLD_RUNS="${FOLD_RUNS:-5}"
folds=()
for run in $(seq 1 "$FOLD_RUNS"); do
    grind fold "$N1" "fold1-$run" --separate-threads=yes
    grind fold "$N2" "fold2-$run" --separate-threads=yes
    f1=0; f2=0
    for f in "$tmp"/fold1-"$run".*-*; do case "$f" in *-01) ;; *) f1=$((f1 + $(ir "$f"))) ;; esac; done
    for f in "$tmp"/fold2-"$run".*-*; do case "$f" in *-01) ;; *) f2=$((f2 + $(ir "$f"))) ;; esac; done
    folds+=("$(awk -v a="$f1" -v b="$f2" -v n1="$N1" -v n2="$N2" 'BEGIN { printf "%.2f", (b - a) / (n2 - n1) }')")
done

awk -v p="$pub_ir" -v b="$base_ir" -v n="$N_PUBLISH" \
    'BEGIN { printf "publish_key: %.2f Ir/event (loop %.2f Ir/event subtracted; %d events)\n", (p - b) / n, b / n, n }'
printf '%s\n' "${folds[@]}" | sort -n | awk -v n1="$N1" -v n2="$N2" -v runs="$FOLD_RUNS" '
    { v[NR] = $1 }
    END { printf "fold: %.2f Ir/event (median of %d runs, range %.2f-%.2f; flusher thread, (Ir(%d) - Ir(%d)) / %d events)\n",
          v[int((NR + 1) / 2)], runs, v[1], v[NR], n2, n1, n2 - n1 }'
