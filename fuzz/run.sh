#!/usr/bin/env bash
# Runs the fuzz targets (see fuzz/README.md): one at a time, two at a time in CI.
#
#   fuzz/run.sh ci                 each target for 20 s (two at once) on a copy of its committed
#                                  corpus (what .ci/run does); any crash fails
#   fuzz/run.sh long [target...]   each target up to 10^8 executions or 4 hours,
#                                  whichever comes first, at nice 19, logging to
#                                  <target dir>/fuzz-logs/<target>.log; to resume a
#                                  target part way, FUZZ_RUNS and FUZZ_SECONDS
#                                  set what is left (default 100000000 and 14400)
#   fuzz/run.sh SECONDS [target...]  each target for SECONDS, new inputs kept
#                                  in <target dir>/fuzz-corpus/<target>
#
# cargo-fuzz is taken from PATH, else from <target dir>/tools/cargo-fuzz,
# where it is installed when missing. The targets build with nightly;
# FUZZ_NO_BUILD=1 runs what is already built.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir=${CARGO_TARGET_DIR:-$PWD/target}
mode=${1:?usage: fuzz/run.sh ci | long | SECONDS [target...]}
shift

if ! command -v cargo-fuzz >/dev/null; then
  tools="$target_dir/tools/cargo-fuzz"
  if [ ! -x "$tools/bin/cargo-fuzz" ]; then
    echo "== installing cargo-fuzz into $tools"
    cargo +stable install cargo-fuzz --locked --root "$tools"
  fi
  export PATH="$tools/bin:$PATH"
fi

# The dictionary each target uses, if any.
dict_for() {
  case $1 in
    xfcc | client_cert) echo fuzz/dict/xfcc.dict ;;
    policy_yaml) echo fuzz/dict/policy.dict ;;
    config_yaml) echo fuzz/dict/config.dict ;;
    posture_file) echo fuzz/dict/posture.dict ;;
    fleet_models) echo fuzz/dict/fleet.dict ;;
  esac
}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Build once, then run the binaries directly: `cargo fuzz run` would take
# cargo's lock on the target dir again before every target.
if [ -z "${FUZZ_NO_BUILD:-}" ]; then
  echo "== cargo fuzz build (${#targets[@]} targets)"
  # The target dir is named: cargo-fuzz's own default is fuzz/target.
  cargo +nightly fuzz build --target-dir "$target_dir"
fi
bin_dir="$target_dir/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"
fuzz() {
  local t=$1
  shift
  mkdir -p "fuzz/artifacts/$t"
  "$bin_dir/$t" -artifact_prefix="fuzz/artifacts/$t/" "$@"
}

# Outside CI the runs soak up idle CPU only.
[ "$mode" = ci ] || renice -n 19 -p $$ >/dev/null

# CI: one target for 20 s on a throw-away copy of its corpus (CI never
# adds files to the committed corpus); prints its totals, fails on a crash.
ci_target() {
  local t=$1
  shift
  local work="$target_dir/fuzz-corpus-ci/$t" log="$target_dir/fuzz-corpus-ci/$t.log" status=0
  rm -rf "$work" && mkdir -p "$work" && cp fuzz/corpus/"$t"/* "$work"/
  fuzz "$t" "$@" -max_total_time=20 -print_final_stats=1 "$work" >"$log" 2>&1 || status=$?
  echo "== fuzz $t: 20 s"
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ *DONE)' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 80 "$log"
    echo "!! fuzz target $t failed (exit $status); the input is under fuzz/artifacts/$t/"
    return 1
  fi
}

failed=0
running=0
for t in "${targets[@]}"; do
  args=(-timeout=25)
  dict=$(dict_for "$t")
  [ -n "$dict" ] && args+=("-dict=$dict")
  case $mode in
    ci)
      # Two at a time: the machine has two cores.
      ci_target "$t" "${args[@]}" &
      running=$((running + 1))
      if [ "$running" -ge 2 ]; then
        wait -n || failed=1
        running=$((running - 1))
      fi
      ;;
    long)
      mkdir -p "$target_dir/fuzz-logs" "$target_dir/fuzz-corpus/$t"
      runs=${FUZZ_RUNS:-100000000} secs=${FUZZ_SECONDS:-14400}
      echo "== fuzz $t: up to $runs runs or $secs s, log $target_dir/fuzz-logs/$t.log"
      # Appended: the log keeps every run's totals ("10^8 in all" spans runs).
      echo "== run started $(date -u +%FT%TZ) (-runs=$runs -max_total_time=$secs)" >>"$target_dir/fuzz-logs/$t.log"
      fuzz "$t" "${args[@]}" -runs="$runs" -max_total_time="$secs" -print_final_stats=1 \
        "$target_dir/fuzz-corpus/$t" fuzz/corpus/"$t" >>"$target_dir/fuzz-logs/$t.log" 2>&1 || echo "!! $t stopped early (a finding, or interrupted): see the log"
      ;;
    *)
      mkdir -p "$target_dir/fuzz-corpus/$t"
      echo "== fuzz $t: $mode s"
      fuzz "$t" "${args[@]}" -max_total_time="$mode" -print_final_stats=1 \
        "$target_dir/fuzz-corpus/$t" fuzz/corpus/"$t"
      ;;
  esac
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done
exit "$failed"
