#!/usr/bin/env bash
# Create .venv (Python 3.11) and install exactly the locked dependencies: requirements/dev.txt,
# every file checked against its hash (see scripts/lock), then the project itself, editable.
# Idempotent and fast: nothing runs when pyproject.toml, setup.py and requirements/ are
# unchanged since the last install. `--no-sync` only makes sure .venv and uv exist.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${CRS_PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ ! -x .venv/bin/uv ]; then
  # uv, pinned by hash, installs the rest (much faster than pip for ~150 packages).
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes \
    --no-deps -r requirements/bootstrap.txt
fi
if [ "${1:-}" = --no-sync ]; then
  exit 0
fi
stamp=.venv/.installed-$(cat pyproject.toml setup.py requirements/*.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  export UV_LINK_MODE=copy  # the uv cache may live on another file system than .venv
  uv=(.venv/bin/uv pip --quiet)
  # sync: exactly the lock (removes what the lock no longer lists), hashes required.
  "${uv[@]}" sync --python .venv/bin/python --require-hashes requirements/dev.txt
  "${uv[@]}" install --python .venv/bin/python --no-deps --editable . \
    --build-constraints requirements/build.txt
  rm -f .venv/.installed-* && touch "$stamp"
fi
