#!/usr/bin/env bash
# Build every fuzz target and run each one for a bounded time from the committed seed corpus.
# Prints executions and crashes per target; exits non-zero if any target crashed (or failed to
# build or run).
#
# Works on stable Rust: the targets are built without a sanitizer (`-s none`). The code under
# test forbids `unsafe`, so AddressSanitizer finds little that a panic would not; set
# FUZZ_SANITIZER=address to use it anyway. -Zsanitizer is a nightly flag: on a stable toolchain
# this script then sets RUSTC_BOOTSTRAP=1, the documented way to unlock it on stable.
#
# Environment (all optional):
#   FUZZ_SECONDS=20          seconds per target (libFuzzer -max_total_time)
#   FUZZ_RUNS=N              also stop a target after N executions (libFuzzer -runs)
#   FUZZ_TARGETS="a b"       only these targets (default: every target `cargo fuzz list` shows)
#   FUZZ_SANITIZER=none      none | address
#   FUZZ_UPDATE_CORPUS=1     add to corpus/<target> a smallest set of the new inputs that covers
#                            the new edges (libFuzzer -set_cover_merge=1 -use_counters=0); review
#                            and keep the corpus small before committing. Off by default: a smoke
#                            run never writes to the corpus.
#
# Crashing inputs are kept in fuzz/artifacts/<target>/ (ignored by git). Reproduce one with
#   cargo fuzz run -s none <target> artifacts/<target>/crash-...     (from fuzz/)
set -euo pipefail

cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-20}
sanitizer=${FUZZ_SANITIZER:-none}
update_corpus=${FUZZ_UPDATE_CORPUS:-0}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "smoke: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

if [[ $sanitizer != none ]] && ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
    # Cargo caches what rustc answered to its probe, failures included, and the cache does not
    # look at RUSTC_BOOTSTRAP: a probe that failed without it would keep failing.
    rm -f target/.rustc_info.json
fi

# Build once, then run exactly what was built (`cargo fuzz run` would rebuild first).
triple=$(rustc -vV | sed -n 's/^host: //p')
echo "smoke: building (sanitizer: $sanitizer, target $triple)"
# -a (--debug-assertions): overflow checks too; Cargo.toml sets both for this profile as well.
cargo fuzz build -s "$sanitizer" -a --target "$triple"
bin_dir=target/$triple/release
if [[ $sanitizer == address ]]; then
    export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0 # as cargo fuzz run
fi

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
if [[ -n ${FUZZ_RUNS:-} ]]; then
    args+=(-runs="$FUZZ_RUNS")
fi

failed=0
summary=()
for target in $targets; do
    mkdir -p "corpus/$target" "artifacts/$target" "$work/$target"
    log="$work/$target.log"
    before=$(find "artifacts/$target" -type f | wc -l)
    start=$SECONDS
    # New inputs go to the scratch directory first; the committed corpus is only read.
    status=0
    "$bin_dir/$target" -artifact_prefix="artifacts/$target/" "${args[@]}" \
        "$work/$target" "corpus/$target" >"$log" 2>&1 || status=$?
    elapsed=$((SECONDS - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if [[ -z $execs ]]; then # no final stats after a crash: take the last status line's count
        execs=$(grep -Eo '^#[0-9]+' "$log" | tail -n 1 | tr -d '#' || true)
    fi
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2 || true)
    crashes=$(( $(find "artifacts/$target" -type f | wc -l) - before ))
    line=$(printf '%-16s %12s execs %6ss  cov %6s  crashes %s' \
        "$target" "${execs:-?}" "$elapsed" "${cov:-?}" "$crashes")
    if [[ $status -ne 0 || $crashes -ne 0 ]]; then
        failed=1
        line+="  FAILED (exit $status)"
        echo "---- $target: what failed ----"
        grep -E -A4 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | grep -Ev '^ +[0-9]+: |^ +at ' |
            head -n 30 || true
        grep -E 'Test unit written to|^Base64:' "$log" || tail -n 20 "$log"
        echo "----"
    fi
    echo "$line"
    summary+=("$line")

    if [[ $update_corpus == 1 && $status -eq 0 ]]; then
        "$bin_dir/$target" -set_cover_merge=1 -use_counters=0 "corpus/$target" "$work/$target" \
            >"$work/$target.merge.log" 2>&1
        grep -E 'MERGE-OUTER: [0-9]+ new files' "$work/$target.merge.log" || true
    fi
done

echo
echo "smoke summary (${seconds}s per target):"
printf '  %s\n' "${summary[@]}"
if [[ $failed -ne 0 ]]; then
    echo "smoke: a fuzz target crashed or failed; see above and fuzz/artifacts/" >&2
    exit 1
fi
echo "smoke: no crash"
