#!/usr/bin/env bash
# Create (once) the isolated venv holding the FHIR R4 test server sekmet-fhir, and print the
# absolute path of its `sekmet` executable on stdout (the only thing written to stdout).
#
# The server's pinned dependencies must not mix with the project's .venv, hence a venv of its own:
#   ${CRS_FHIR_VENV:-.venv-fhir}   (a relative path is taken relative to the repository root)
# Interpreter: ${CRS_FHIR_PYTHON:-python3.11}. Idempotent; concurrent runs are serialised by flock.
set -euo pipefail

SEKMET_VERSION="0.1.1"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CRS_FHIR_VENV:-.venv-fhir}"
case "$venv" in
    /*) ;;
    *) venv="$repo_root/$venv" ;;
esac
python="${CRS_FHIR_PYTHON:-python3.11}"
exe="$venv/bin/sekmet"

installed() {
    [ -x "$exe" ] && [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$SEKMET_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    sys.exit(0 if version("sekmet-fhir") == sys.argv[1] else 1)
except PackageNotFoundError:
    sys.exit(1)
EOF
}

if ! installed; then
    mkdir -p "$venv"
    exec 9>"$venv/.install.lock"
    if command -v flock >/dev/null 2>&1; then
        flock 9
    fi
    if ! installed; then  # another run may have finished the install while we waited
        echo "fhir-server-venv: installing sekmet-fhir==$SEKMET_VERSION into $venv" >&2
        if [ ! -x "$venv/bin/python" ]; then
            "$python" -m venv "$venv" >&2
        fi
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "sekmet-fhir==$SEKMET_VERSION" >&2
        installed || { echo "fhir-server-venv: install of sekmet-fhir failed" >&2; exit 1; }
    fi
    exec 9>&-
fi

echo "$exe"
