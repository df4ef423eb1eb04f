#!/usr/bin/env bash
# `make gpu-check`: the GPU path on the lent CUDA machine, in one call.
#
# That machine has Python 3.12 (python3), CuPy, torch, JAX, NumPy and pytest, but
# no TensorFlow, no Keras and no package registry. Before the call, here:
#     bash bench/fetch_carry.sh      # Keras wheels into .carry/wheels (git-ignored)
# then run `make gpu-check` (or `bash bench/gpu_check.sh`) there with `.carry`
# named in the run tool's carry list. Steps:
#   1. install the carried wheels into a scratch directory on PYTHONPATH (only
#      those whose module is missing: the image's own packages are never shadowed);
#   2. print nvidia-smi and versions;
#   3. pytest -m gpu tests/test_gpu.py with KERAS_BACKEND=jax;
#   4. the Keras fit test again with KERAS_BACKEND=torch;
#      each pytest step fails unless at least one GPU test passed (read from its
#      JUnit report): a run where every GPU test skipped checked nothing.
#   5. bench/device.py --json $OUT/device.json;
#   6. bench/device_fit.py --json $OUT/device_fit.json (Keras fit: seed, arrays, host, gpu).
# Every step runs even when an earlier one failed; the exit status is non-zero
# if any did. All output is also written to ${OUT:-bench/results}/gpu_check.log,
# with pytest's JUnit reports beside it.
#
# Whether a GPU is there is asked of CuPy directly (its device count), not of
# gpuloader's own probe, the code under test. When CuPy sees a device,
# GPULOADER_EXPECT_GPU=1 is exported, so that tests/test_gpu.py fails (rather
# than skips) a test that cannot run for want of a device or of Keras. Without
# a GPU (or CuPy) the tests skip with the reason and the check FAILS: nothing
# was checked. tests/test_gpu.py runs this script with a stand-in python.
#
# Environment: PYTHON (default: .venv/bin/python if present, else python3),
# OUT, GPU_CHECK_SITE (where carried wheels go, default /tmp/gpuloader-site),
# GPU_CHECK_STRICT_TARGETS=1 (a benchmark target FAIL fails the check), and the
# per-step time limits GPU_CHECK_PYTEST_TIMEOUT (150 s), GPU_CHECK_FIT_TIMEOUT
# (90 s), GPU_CHECK_BENCH_TIMEOUT (90 s), GPU_CHECK_FIT_BENCH_TIMEOUT (240 s: one
# round, about 2 minutes on an H100; 3 rounds, about 6 minutes, from 420 s up):
# together under the run tool's 10 minutes.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
repo=$(pwd)
out=${OUT:-$repo/bench/results}
mkdir -p "$out"
log=$out/gpu_check.log

if [[ -n "${PYTHON:-}" ]]; then
    py=$PYTHON
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python3
fi

failed=()
devices=0  # CUDA devices CuPy sees (cuda_devices)

step() {  # step NAME COMMAND...: run, report, remember a failure, go on
    local name=$1
    shift
    echo
    echo "=== $name"
    echo "+ $*"
    local start=$SECONDS
    "$@"
    local rc=$?
    if ((rc == 0)); then
        echo "=== $name: ok ($((SECONDS - start)) s)"
    else
        echo "=== $name: FAILED with exit status $rc ($((SECONDS - start)) s)"
        failed+=("$name (exit $rc)")
    fi
    return 0
}

cuda_devices() {  # the number of CUDA devices CuPy sees, asked directly; 0 when CuPy or a driver is missing
    local count
    count=$("$py" -c 'import cupy; print(cupy.cuda.runtime.getDeviceCount())' 2>/dev/null | tail -n 1)
    if [[ $count =~ ^[0-9]+$ ]]; then
        echo "$count"
    else
        echo 0
    fi
}

junit_count() {  # junit_count REPORT ATTRIBUTE: the attribute of the report's first <testsuite>, empty if none
    [[ -f $1 ]] || return 0
    grep -o '<testsuite [^>]*' "$1" | head -n 1 | grep -o " $2=\"[0-9]*\"" | grep -o '[0-9][0-9]*'
}

gpu_tests() {  # gpu_tests REPORT COMMAND...: run pytest, then require at least one GPU test to have passed
    local report=$1
    shift
    rm -f "$report"
    "$@"
    local rc=$?
    local tests failures errors skipped
    tests=$(junit_count "$report" tests)
    failures=$(junit_count "$report" failures)
    errors=$(junit_count "$report" errors)
    skipped=$(junit_count "$report" skipped)
    if [[ -z $tests || -z $failures || -z $errors || -z $skipped ]]; then
        echo "no JUnit report at $report: cannot tell whether any GPU test ran"
        return $((rc == 0 ? 1 : rc))
    fi
    local passed=$((tests - failures - errors - skipped))
    echo "GPU tests: $passed passed, $skipped skipped, $failures failed, $errors errors (CuPy sees $devices device(s))"
    if ((rc != 0)); then
        return "$rc"
    fi
    if ((passed == 0)); then
        if ((devices > 0)); then
            echo "no GPU test passed although CuPy sees $devices CUDA device(s): the check checked nothing"
        else
            echo "no GPU test passed: CuPy sees no CUDA device here, so nothing was checked on a GPU"
        fi
        return 1
    fi
    return 0
}

has_module() {
    "$py" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)' "$1" 2>/dev/null
}

module_of_wheel() {  # the import name of a wheel file's distribution
    local dist
    dist=$(basename "$1")
    dist=${dist%%-*}
    case ${dist,,} in
        absl_py) echo absl ;;
        markdown_it_py) echo markdown_it ;;
        *) echo "${dist,,}" ;;
    esac
}

install_carried_wheels() {
    local site=${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/gpuloader-site}
    if [[ ! -d .carry/wheels ]]; then
        echo "no .carry/wheels: nothing to install (run bench/fetch_carry.sh here and carry .carry)"
        return 0
    fi
    local wheel module wanted=()
    for wheel in .carry/wheels/*.whl .carry/wheels/fallback/*.whl; do
        [[ -e $wheel ]] || continue
        module=$(module_of_wheel "$wheel")
        if has_module "$module"; then
            echo "  $module: already importable, carried wheel not installed"
        else
            echo "  $module: missing, installing $(basename "$wheel")"
            wanted+=("$wheel")
        fi
    done
    if ((${#wanted[@]} == 0)); then
        return 0
    fi
    mkdir -p "$site"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    # One wheel at a time: a wheel this Python cannot take fails alone, the rest install.
    local status=0
    for wheel in "${wanted[@]}"; do
        if ! "$py" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" "$wheel"; then
            echo "  FAILED to install $(basename "$wheel")"
            status=1
        fi
    done
    echo "  installed into $site (on PYTHONPATH)"
    return "$status"
}

show_environment() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi || echo "nvidia-smi failed"
    else
        echo "nvidia-smi: not found (no NVIDIA driver here)"
    fi
    echo "python: $py"
    "$py" - <<'EOF'
import importlib
import importlib.metadata as metadata
import platform
import sys

print(f"Python {platform.python_version()} at {sys.executable}")
distributions = {
    "numpy": ["numpy"], "cupy": ["cupy-cuda13x", "cupy-cuda12x", "cupy"], "torch": ["torch"],
    "jax": ["jax"], "jaxlib": ["jaxlib"], "keras": ["keras"], "optree": ["optree"], "namex": ["namex"],
    "pytest": ["pytest"], "tensorflow": ["tensorflow", "tensorflow-cpu"],
}
for name, candidates in distributions.items():
    version = None
    for candidate in candidates:
        try:
            version = f"{metadata.version(candidate)} ({candidate})"
            break
        except metadata.PackageNotFoundError:
            continue
    extra = ""
    if version and name in ("cupy", "torch", "jax"):  # imported only for what they see
        try:
            module = importlib.import_module(name)
            if name == "cupy":
                runtime = module.cuda.runtime
                extra = f", CUDA runtime {runtime.runtimeGetVersion()}, driver {runtime.driverGetVersion()}"
            elif name == "torch":
                extra = f", CUDA {module.version.cuda}, cuda available: {module.cuda.is_available()}"
            else:
                extra = f", devices: {module.devices()}"
        except Exception as error:
            extra = f" ({type(error).__name__}: {error})"
    print(f"  {name:10s} {version or '-- not installed'}{extra}")

from gpuloader import _cuda

status = _cuda.probe()
print(f"gpuloader probe: usable={status.usable}: {status.reason}; {status.name or 'no device'}, "
      f"free {status.free_bytes / 2**30:.1f} GiB of {status.total_bytes / 2**30:.1f} GiB")
EOF
}

main() {
    echo "gpu_check: $(date -u '+%Y-%m-%dT%H:%M:%SZ') on $(hostname), repo $repo, output in $out"
    export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
    export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX would take 75% of the GPU from CuPy
    export TF_CPP_MIN_LOG_LEVEL=2
    export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1  # machines run us as root

    step "install carried wheels" install_carried_wheels
    step "environment" show_environment
    devices=$(cuda_devices)
    if ((devices > 0)); then
        export GPULOADER_EXPECT_GPU=1  # tests/test_gpu.py: a GPU test that cannot run fails, never skips
        echo "CuPy sees $devices CUDA device(s): every GPU test must run"
    else
        echo "CuPy sees no CUDA device: the GPU tests will skip, and the check will fail"
    fi
    local pytest_args=(-m gpu -v -p no:cacheprovider tests/test_gpu.py)
    step "pytest -m gpu, KERAS_BACKEND=jax" gpu_tests "$out/pytest_jax.xml" \
        env KERAS_BACKEND=jax timeout -k 10 "${GPU_CHECK_PYTEST_TIMEOUT:-150}" \
        "$py" -m pytest "${pytest_args[@]}" --junitxml="$out/pytest_jax.xml"
    step "pytest -m gpu -k keras_fit, KERAS_BACKEND=torch" gpu_tests "$out/pytest_torch.xml" \
        env KERAS_BACKEND=torch timeout -k 10 "${GPU_CHECK_FIT_TIMEOUT:-90}" \
        "$py" -m pytest "${pytest_args[@]}" -k keras_fit --junitxml="$out/pytest_torch.xml"
    local bench_args=(--json "$out/device.json")
    if [[ ${GPU_CHECK_STRICT_TARGETS:-0} == 1 ]]; then
        bench_args+=(--strict)
    fi
    step "device benchmark" timeout -k 10 "${GPU_CHECK_BENCH_TIMEOUT:-90}" "$py" bench/device.py "${bench_args[@]}"
    local fit_limit=${GPU_CHECK_FIT_BENCH_TIMEOUT:-240} rounds=1
    if ((fit_limit >= 420)); then
        rounds=3
    fi
    step "device fit benchmark" env KERAS_BACKEND=jax timeout -k 10 "$fit_limit" \
        "$py" bench/device_fit.py --rounds "$rounds" --json "$out/device_fit.json"

    echo
    if ((${#failed[@]} == 0)); then
        echo "gpu_check: all steps passed"
        return 0
    fi
    echo "gpu_check: ${#failed[@]} step(s) failed:"
    printf '  - %s\n' "${failed[@]}"
    return 1
}

main 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
