#!/usr/bin/env bash
# One command for the whole test set-up on a fresh machine: a C++ compiler for the CPU kernels, a browser for the
# UI test, Python deps, pytest on two workers (each test file runs whole in one of them; $GLM_MS_TEST_WORKERS sets
# how many, 0 runs in this process).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
        || echo "warning: could not install ${missing[*]}; without g++ the kernel tests fail; without chromium the browser test is skipped" >&2
fi
python3 -m pip install -q -e ".[app,serve,ray,test]"
python3 -m pytest -q -n "${GLM_MS_TEST_WORKERS:-2}" --dist loadfile "$@"
