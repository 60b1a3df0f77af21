#!/usr/bin/env bash
# Builds and runs ringfold's loom models (loom-tests/tests/*.rs).
#
#   loom-tests/run.sh                          # all models
#   loom-tests/run.sh --test high_water_wake_up_is_never_lost
#   LOOM_MAX_PREEMPTIONS=3 loom-tests/run.sh --test interner_agrees_and_snapshots_are_whole
#   loom-tests/run.sh -- --nocapture           # also print interleavings explored
#
# Extra arguments go to `cargo test` (a `--test <model>` selector, a name
# filter, `-- --nocapture`, ...). loom builds into its own target directory
# (LOOM_TARGET_DIR, default <repo>/loom-target) so it never invalidates the
# normal build. Extra RUSTFLAGS (e.g. a mutation switch) can be appended
# with LOOM_EXTRA_RUSTFLAGS:
#   LOOM_EXTRA_RUSTFLAGS='--cfg ringfold_mutation="ring_relaxed"' \
#     LOOM_TARGET_DIR=/tmp/loom-mut loom-tests/run.sh --test spsc_ring_delivers_every_value_once_in_order
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

export RUSTFLAGS="--cfg ringfold_loom -C debug-assertions${LOOM_EXTRA_RUSTFLAGS:+ $LOOM_EXTRA_RUSTFLAGS}"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
export CARGO_TARGET_DIR="${LOOM_TARGET_DIR:-$repo/loom-target}"

echo "loom: RUSTFLAGS='$RUSTFLAGS' LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS CARGO_TARGET_DIR=$CARGO_TARGET_DIR" >&2
exec cargo test -p loom-tests --release "$@"
