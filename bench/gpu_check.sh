#!/usr/bin/env bash
# The prepared GPU run of issue 18: kernels, benchmarks and NanoChat training, measured in one call.
#
#   OUT=/some/folder bash bench/gpu_check.sh            # on the GPU box, from the repository root
#   OUT=/tmp/check bash bench/gpu_check.sh --dry-run    # on a CPU: tiny sizes, Triton's interpreter (CI)
#
# Stages, each under its own `timeout`, each run whatever the previous one did:
#   1 install   pip install --no-deps --no-build-isolation -e . (--dry-run: pip's own --dry-run); if the
#               checkout is then not what `import fusedgate` finds (an old setuptools refuses the pyproject,
#               say), a link tree on PYTHONPATH stands in; then the versions and nvidia-smi
#   2 pytest    pytest -m gpu on the test files that carry the gpu marker
#   3 bench     python -m fusedgate.bench.gpu_check bench (the rows that answer the targets)
#   4 train     fusedgate train --preset small --device cuda, one process per --compare entry
#               (baseline, fusedgate:nanochat, fusedgate:gated), shortened to fit
#   5 profile   a torch.profiler table of one FusedGate step at d20, if time is left
#   6 probe     python -m fusedgate.bench.gpu_probe (host, graph and kernel time of the steps, Newton–Schulz
#               tilings, ...) in the time still left, its tables appended to profile.txt
# then a report (train.json, train.md, bench.md with the targets, bench.png). All of it goes flat into $OUT,
# 8 files: env.txt (versions, nvidia-smi, each stage's log and exit status), pytest.log, bench.json,
# bench.md, bench.png, train.json, train.md, profile.txt. Every stage writes as it goes, so a stage that is
# killed leaves what it had done. The whole run keeps inside GPU_CHECK_BUDGET seconds (default 480): each
# stage gets the smaller of its own limit and the time left, less a reserve for the report.
# Environment: OUT (required), PYTHON (default python3), GPU_CHECK_BUDGET, GPU_CHECK_WORK (scratch folder,
# default a new one under /tmp), GPU_CHECK_STAGES (e.g. "3 4": rerun only those), GPU_CHECK_INSTALL=links
# (skip pip, use the link tree), GPU_CHECK_LIMIT_<STAGE> (seconds, e.g. GPU_CHECK_LIMIT_BENCH=60).
set -u

MODE=gpu
if [ "${1:-}" = "--dry-run" ]; then MODE=dry; shift; fi
if [ $# -gt 0 ]; then echo "usage: OUT=DIR bash bench/gpu_check.sh [--dry-run]" >&2; exit 2; fi
if [ -z "${OUT:-}" ]; then echo "gpu_check: error: set OUT to the folder for the results" >&2; exit 2; fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-480}
RESERVE=20                       # seconds kept for the report
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$WORK/logs"
STAGES=${GPU_CHECK_STAGES:-"1 2 3 4 5 6"}
ENTRIES="baseline fusedgate:nanochat fusedgate:gated"
ENV_TXT="$OUT/env.txt"
LOG_CAP=2000000                  # bytes of one stage's log copied into env.txt (head and tail)
export PYTHONUNBUFFERED=1

if [ "$MODE" = dry ]; then
    export TRITON_INTERPRET=1
    LIMIT_INSTALL=120 LIMIT_PYTEST=120 LIMIT_BENCH=120 LIMIT_TRAIN=60 LIMIT_PROFILE=60 LIMIT_PROBE=120
    DRY=--dry-run
    TRAIN_ARGS=(--preset test --device cpu --steps 3 --eval-every 3 --threads 1 --data "$ROOT/fusedgate")
else
    LIMIT_INSTALL=60 LIMIT_PYTEST=90 LIMIT_BENCH=180 LIMIT_TRAIN=45 LIMIT_PROFILE=45 LIMIT_PROBE=170
    DRY=
    TRAIN_ARGS=(--preset small --device cuda --steps 300 --eval-every 100)
fi
LIMIT_INSTALL=${GPU_CHECK_LIMIT_INSTALL:-$LIMIT_INSTALL}
LIMIT_PYTEST=${GPU_CHECK_LIMIT_PYTEST:-$LIMIT_PYTEST}
LIMIT_BENCH=${GPU_CHECK_LIMIT_BENCH:-$LIMIT_BENCH}
LIMIT_TRAIN=${GPU_CHECK_LIMIT_TRAIN:-$LIMIT_TRAIN}
LIMIT_PROFILE=${GPU_CHECK_LIMIT_PROFILE:-$LIMIT_PROFILE}
LIMIT_PROBE=${GPU_CHECK_LIMIT_PROBE:-$LIMIT_PROBE}

note() { echo "$*" | tee -a "$ENV_TXT"; }
wanted() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
left() { echo $((BUDGET - RESERVE - SECONDS)); }

# run_stage NAME LIMIT CMD...: CMD under `timeout` (the smaller of LIMIT and the time left), its output in
# $WORK/logs/NAME.log, then copied (capped) into env.txt with the exit status and the seconds it took
run_stage() {
    local name=$1 limit=$2 log="$WORK/logs/${1//[:\/]/-}.log" t0=$SECONDS rc
    shift 2
    local seconds; seconds=$(left)
    if [ "$seconds" -lt 5 ]; then
        note "== stage $name: skipped, ${seconds}s left of the ${BUDGET}s budget"
        return 0
    fi
    [ "$limit" -lt "$seconds" ] && seconds=$limit
    echo "== stage $name (limit ${seconds}s): $*" >>"$ENV_TXT"
    timeout -k 5 "$seconds" "$@" >"$log" 2>&1
    rc=$?
    if [ "$(wc -c <"$log")" -le $((2 * LOG_CAP)) ]; then cat "$log" >>"$ENV_TXT"; else
        head -c "$LOG_CAP" "$log" >>"$ENV_TXT"; echo "[... cut ...]" >>"$ENV_TXT"; tail -c "$LOG_CAP" "$log" >>"$ENV_TXT"
    fi
    local why=""; [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && why=" (timed out)"
    note "== stage $name: exit $rc$why after $((SECONDS - t0))s (elapsed ${SECONDS}s)"
    return 0
}

# the checkout as the package fusedgate (kernels/, nanochat/, bench/ as its subpackages), without pip
link_tree() {
    local site="$WORK/site" entry
    mkdir -p "$site/fusedgate"
    for entry in "$ROOT"/fusedgate/*; do ln -sfn "$entry" "$site/fusedgate/"; done
    ln -sfn "$ROOT/kernels" "$site/fusedgate/kernels"
    ln -sfn "$ROOT/nanochat" "$site/fusedgate/nanochat"
    ln -sfn "$ROOT/bench" "$site/fusedgate/bench"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    # Python ≥ 3.11: no current folder first on sys.path, where ./fusedgate (without its subpackages) would
    # shadow the link tree for `python -m` and pytest
    export PYTHONSAFEPATH=1
}

imports_checkout() {   # where `import` would find the package and its subpackages (without importing torch)
    "$PY" - "$ROOT" <<'EOF' >/dev/null 2>&1
import importlib.util, os, sys
root = os.path.realpath(sys.argv[1])
for name in ("fusedgate", "fusedgate.bench", "fusedgate.kernels", "fusedgate.nanochat"):
    assert os.path.realpath(importlib.util.find_spec(name).origin).startswith(root + os.sep), name
EOF
}

versions() {
    "$PY" - <<'EOF'
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("torch", "triton", "numpy", "setuptools", "pytest", "pytest_timeout", "pytest_benchmark",
             "tabulate", "matplotlib", "tqdm", "fusedgate", "fusedgate.bench.gpu_check"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"), getattr(module, "__file__", ""))
    except Exception as exc:
        print(name, "MISSING", type(exc).__name__, exc)
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"sm_{p.major}{p.minor}", f"{p.total_memory / 2**30:.1f} GiB", p.multi_processor_count, "SMs")
EOF
    command -v nvidia-smi >/dev/null && nvidia-smi || echo "nvidia-smi: not found"
}

stage_install() {
    git -C "$ROOT" log -1 --format='commit %H %s' 2>/dev/null
    git -C "$ROOT" status --short 2>/dev/null | head -20
    if [ "${GPU_CHECK_INSTALL:-pip}" = links ]; then echo "GPU_CHECK_INSTALL=links: pip skipped"; return 0; fi
    # --no-index and no version check: the GPU box reaches no package registry, and pip must not wait for one
    local pip=("$PY" -m pip install --no-index --disable-pip-version-check --no-input --no-deps --no-build-isolation)
    [ "$MODE" = dry ] && pip+=(--dry-run)
    "${pip[@]}" -e "$ROOT"
}

stage_pytest() {   # the whole log into pytest.log as it runs; its summary line into the stage log
    local files timeout_flag=() rc
    files=$(grep -l "pytest.mark.gpu" "$ROOT"/tests/test_*.py)
    "$PY" -c "import pytest_timeout" 2>/dev/null && timeout_flag=(--timeout=60)
    # shellcheck disable=SC2086
    "$PY" -m pytest -m gpu -p no:cacheprovider -rA --continue-on-collection-errors "${timeout_flag[@]}" $files \
        >"$OUT/pytest.log" 2>&1
    rc=$?
    tail -n 1 "$OUT/pytest.log"
    return $rc
}

stage_train() {   # one process per --compare entry, each under its own limit (same seed, data and schedule)
    local entry optimizer spec args
    for entry in $ENTRIES; do
        optimizer=${entry%%:*}; spec=${entry#*:}
        args=(--optimizer "$optimizer")
        [ "$spec" != "$entry" ] && args+=(--spec "$spec")
        run_stage "train:$entry" "$LIMIT_TRAIN" "$PY" -m fusedgate train "${TRAIN_ARGS[@]}" "${args[@]}" \
            --checkpoint-every 0 --out "$WORK/train/${entry//:/-}" --overwrite --no-progress
    done
}
export -f stage_install stage_pytest versions
export ROOT MODE PY OUT

: >"$ENV_TXT"
note "# gpu_check ($MODE) $(date -u +%Y-%m-%dT%H:%M:%SZ) budget ${BUDGET}s, stages: $STAGES, scratch $WORK"
wanted 1 && run_stage install "$LIMIT_INSTALL" bash -c stage_install
if [ "${GPU_CHECK_INSTALL:-pip}" = links ] || ! imports_checkout; then
    link_tree
    note "== import fusedgate would not find this checkout (or GPU_CHECK_INSTALL=links): PYTHONPATH=$PYTHONPATH"
    imports_checkout || note "== the link tree does not import either: the stages below will fail"
fi
run_stage versions 60 bash -c versions
wanted 2 && run_stage pytest "$LIMIT_PYTEST" bash -c stage_pytest
wanted 3 && run_stage bench "$LIMIT_BENCH" "$PY" -m fusedgate.bench.gpu_check bench --out "$OUT" $DRY
wanted 4 && stage_train
wanted 5 && run_stage profile "$LIMIT_PROFILE" "$PY" -m fusedgate.bench.gpu_check profile --out "$OUT" $DRY
if wanted 6; then   # probe.txt is rewritten after each of its sections: a probe cut short keeps the ones done
    run_stage probe "$LIMIT_PROBE" "$PY" -m fusedgate.bench.gpu_probe --out "$WORK/probe" $DRY
    [ -f "$WORK/probe/probe.txt" ] && { echo; cat "$WORK/probe/probe.txt"; } >>"$OUT/profile.txt"
fi
BUDGET=$((BUDGET + RESERVE)) run_stage report "$RESERVE" "$PY" -m fusedgate.bench.gpu_check report --out "$OUT" \
    --runs "$WORK/train" --entries "${ENTRIES// /,}"
tail -n 40 "$WORK/logs/report.log"
note "# gpu_check done in ${SECONDS}s; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
