#!/usr/bin/env bash
# One command for the whole test set-up on a fresh machine: browser for the UI test, Python deps, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "warning: could not install chromium; the browser test will be skipped" >&2
fi
python3 -m pip install -q -e ".[app,serve,ray,test]"
python3 -m pytest -q "$@"
