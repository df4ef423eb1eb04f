#!/usr/bin/env bash
# Download the wheels the lent GPU machine lacks into .carry/wheels (git-ignored).
#
# That machine has Python 3.12, CuPy, torch, JAX, NumPy and pytest but no Keras
# and no package registry, so Keras travels as wheels in the run tool's `carry`
# list (64 MiB at most). Run this here, where pip reaches the registry; running
# it again downloads nothing that is already there.
#
#   .carry/wheels/           keras, namex, optree: absent on the GPU machine's
#                            image; bench/gpu_check.sh always installs them.
#   .carry/wheels/fallback/  the rest of keras's requirements. The image has
#                            them (KINDS.md's package list); gpu_check.sh installs
#                            one only if its module does not import there, so the
#                            image's own builds (ml_dtypes under jaxlib) are never
#                            shadowed.
#
# Versions are the ones tested here in .venv (Keras 3.15.1; pyproject pins <3.16).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${PYTHON:-}" ]]; then
    py=$PYTHON
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python3
fi

dest=.carry/wheels
required=(keras==3.15.1 namex==0.1.0 optree==0.20.0)
fallback=(absl-py==2.5.1 rich==15.0.0 h5py==3.14.0 ml_dtypes==0.6.0 packaging==26.3
          markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0)

# pip matches manylinux tags exactly, so name every glibc level the target accepts.
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
           manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done

download() {  # download DIR SPEC...: fetch each spec not already present in DIR
    local dir=$1
    shift
    mkdir -p "$dir"
    local missing=()
    local spec name
    for spec in "$@"; do
        name=${spec%%==*}
        # Wheel file names use underscores for dashes and keep the version.
        if ! compgen -G "$dir/${name//-/_}-${spec##*==}-*.whl" >/dev/null \
            && ! compgen -G "$dir/${name}-${spec##*==}-*.whl" >/dev/null; then
            missing+=("$spec")
        fi
    done
    if ((${#missing[@]} == 0)); then
        echo "fetch_carry: $dir already holds ${*}"
        return
    fi
    echo "fetch_carry: downloading ${missing[*]} into $dir"
    "$py" -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
        "${platforms[@]}" -d "$dir" "${missing[@]}"
}

download "$dest" "${required[@]}"
download "$dest/fallback" "${fallback[@]}"

echo "fetch_carry: wheels in $dest:"
find "$dest" -name '*.whl' -printf '  %P  %s bytes\n' | sort
total=$(find "$dest" -name '*.whl' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
limit=$((64 * 1024 * 1024))
printf 'fetch_carry: total %d bytes (%.1f MiB of the 64 MiB a run may carry)\n' \
    "$total" "$(awk -v t="$total" 'BEGIN {print t / 1048576}')"
if ((total > limit)); then
    echo "fetch_carry: over the 64 MiB carry limit" >&2
    exit 1
fi
