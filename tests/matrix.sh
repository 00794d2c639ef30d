#!/usr/bin/env bash
# The tests that assert a NaN or a finite run, under each torch thread count and each CPU
# kernel set, in one run: what a machine with other cores or without AVX-512 would see.
#
#   bash tests/matrix.sh                  # the NaN-asserting test files, 1 and 2 threads x default, avx2
#   bash tests/matrix.sh tests/           # the whole suite instead (any pytest arguments)
#   CAPS="default avx2 avx512" THREADS="1 2" bash tests/matrix.sh
#
# Each kernel set (ATEN_CPU_CAPABILITY) first builds the demo checkpoints twice, under 1 and
# 2 threads, and checks that both builds hold the same bytes (their SHA-256 in build.json);
# every cell of that kernel set then tests against that build. A kernel set this CPU lacks
# is skipped and said so. Exits non-zero if a build differs or a cell fails.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
CAPS=${CAPS:-default avx2}
THREADS=${THREADS:-1 2}
FILES=(
    tests/test_demo.py tests/test_runner.py tests/test_factors.py tests/test_phases.py
    tests/test_overhead_equivalence.py tests/test_audit_config.py tests/test_audit_checkpoint.py
    tests/test_audit_batch.py tests/test_targets.py tests/test_diagnostics.py tests/test_rerun.py
    tests/test_warning.py tests/test_sweep.py
)
if [ $# -gt 0 ]; then FILES=("$@"); fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/nansearch-matrix.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT" || exit 2

failed=0
summary=()
for cap in $CAPS; do
    got=$(ATEN_CPU_CAPABILITY=$cap "$PY" -c "import torch; print(torch.backends.cpu.get_cpu_capability())")
    if [ "${got,,}" != "${cap,,}" ]; then
        summary+=("$cap: skipped, this CPU runs $got")
        continue
    fi
    hashes=()
    for t in $THREADS; do
        cache="$WORK/$cap-$t"
        ATEN_CPU_CAPABILITY=$cap OMP_NUM_THREADS=$t NANSEARCH_CACHE="$cache" "$PY" -c \
            "from nansearch.demo import demo_checkpoint; demo_checkpoint('opt-lm')" || exit 2
        hash=$("$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); \
print(r['sha256']['opt-lm'][:16], r['sha256']['blip2-full'][:16], 'loss %.4f' % r['final_loss'])" \
            "$cache"/demo-*/build.json)
        hashes+=("$hash")
        summary+=("$cap, built under $t threads: $hash")
    done
    if [ "$(printf '%s\n' "${hashes[@]}" | sort -u | wc -l)" -ne 1 ]; then
        summary+=("$cap: FAILED, the demo builds differ between thread counts")
        failed=1
    fi
    first=$(echo "$THREADS" | awk '{print $1}')
    for t in $THREADS; do
        echo "== ATEN_CPU_CAPABILITY=$cap OMP_NUM_THREADS=$t"
        log="$WORK/$cap-$t.log"
        ATEN_CPU_CAPABILITY=$cap OMP_NUM_THREADS=$t NANSEARCH_TEST_CACHE="$WORK/$cap-$first" \
            "$PY" -m pytest -q -p no:cacheprovider "${FILES[@]}" 2>&1 | tee "$log"
        status=${PIPESTATUS[0]}
        line=$(grep -E '(passed|failed|error)' "$log" | tail -n 1)
        summary+=("$cap, $t threads: ${line:-no result} (exit $status)")
        [ "$status" -eq 0 ] || failed=1
    done
done

echo
echo "== matrix summary"
printf '%s\n' "${summary[@]}"
exit $failed
