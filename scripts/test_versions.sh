#!/usr/bin/env bash
# The Ascend-relevant tests on the older MindSpore releases setup.cfg accepts, each in its own virtualenv:
#   bash scripts/test_versions.sh [--prepare] [VERSION ...]   (default: 2.7.2 2.8.0 2.9.0; the main run covers 2.10)
# A virtualenv per version is created under $GLM_MS_VENV_ROOT (default ~/.cache/glm_ms/venvs/mindspore-VERSION)
# and reused while its MindSpore still imports at that version; mindspore==VERSION comes from the package
# registry (set PIP_FIND_LINKS=/folder/of/wheels to install downloaded wheels instead). ~2.7 GB per version.
# --prepare only creates the virtualenvs and installs MindSpore (downloads, mostly I/O: CI runs it alongside the
# main suite); the test run then installs the project itself, which fails if setup.cfg's range excludes VERSION.
# Tests: the oldest release (2.7.2) runs parity (both families), compiled decoding, sampling graph, graph lint,
# selfcheck and device choices; the releases between it and the main run's 2.10 run ChatGLM-6B's parity, the
# sampling graph, the graph lint, the selfcheck (compiled == eager included) and the device choices: a third of
# the time (~2.5 against ~7.5 min each on 2 cores), keeping CI well under an hour. GLM_MS_VERSION_TESTS=all runs
# the whole set on every release.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${GLM_MS_VENV_ROOT:-$HOME/.cache/glm_ms/venvs}"
prepare_only=false
if [ "${1:-}" = "--prepare" ]; then
    prepare_only=true
    shift
fi
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(2.7.2 2.8.0 2.9.0)
oldest=2.7.2
all_tests=(tests/models/test_chatglm_parity.py tests/models/test_chatglm2_parity.py tests/test_decoding.py
           tests/test_sampling_graph.py tests/test_compile_budget.py tests/test_graph_lint.py tests/test_selfcheck.py
           tests/test_device.py)
between_tests=(tests/models/test_chatglm_parity.py tests/test_sampling_graph.py tests/test_graph_lint.py
               tests/test_selfcheck.py tests/test_device.py)
for version in "${versions[@]}"; do
    venv="$root/mindspore-$version"
    start=$SECONDS
    if ! "$venv/bin/python" -c "import mindspore, sys; sys.exit(mindspore.__version__ != '$version')" 2>/dev/null; then
        echo "== MindSpore $version: creating $venv" >&2
        rm -rf "$venv"
        mkdir -p "$root"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install -q --upgrade pip
        "$venv/bin/python" -m pip install -q "mindspore==$version" pytest pytest-xdist
    fi
    if $prepare_only; then
        echo "== MindSpore $version: ready in $((SECONDS - start)) s" >&2
        continue
    fi
    # The project's own requirements with MindSpore pinned: fails if setup.cfg's range excludes this version.
    "$venv/bin/python" -m pip install -q "mindspore==$version" -e . pytest pytest-xdist
    tests=("${between_tests[@]}")
    if [ "$version" = "$oldest" ] || [ "${GLM_MS_VERSION_TESTS:-}" = all ]; then
        tests=("${all_tests[@]}")
    fi
    echo "== MindSpore $version: ready in $((SECONDS - start)) s; testing ${#tests[@]} files" >&2
    PYTHONPATH="$PWD" "$venv/bin/python" -m pytest -q -p no:cacheprovider -n "${GLM_MS_TEST_WORKERS:-2}" --dist loadfile \
        "${tests[@]}"
    echo "== MindSpore $version: done in $((SECONDS - start)) s" >&2
done
