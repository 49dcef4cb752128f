#!/usr/bin/env bash
# One entry point for a fresh machine.
#   ./run.sh         set up .venv, then train the demo model on the embedded corpus and print its
#                    held-out bits per byte next to gzip's and LZMA2's (a few minutes on 2 cores)
#   ./run.sh test    set up .venv, then `ruff format --check`, `ruff check` and the test suite
# Extra arguments after `test` go to pytest; after anything else, to train.py.
set -euo pipefail
cd "$(dirname "$0")"

find_python() {
  # jax 0.11 needs Python >= 3.12: take the first interpreter that is new enough.
  local candidates=(python3.13 python3.12)
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)"/versions/3.1[2-9]*/bin/python3)
  fi
  candidates+=(python3)
  for c in "${candidates[@]}"; do
    if command -v "$c" >/dev/null 2>&1 &&
      "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      echo "$c"
      return
    fi
  done
  echo "run.sh: no Python >= 3.12 found (jax 0.11 needs it); install one, e.g. 'pyenv install 3.12'." >&2
  exit 1
}

setup() {
  local stamp=.venv/.requirements.sha256
  local want
  want=$(sha256sum requirements.txt | cut -d' ' -f1)
  if [[ -x .venv/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    return
  fi
  local py
  py=$(find_python)
  echo "Setting up .venv with $("$py" --version) ..." >&2
  [[ -x .venv/bin/python ]] || "$py" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -r requirements.txt >&2
  echo "$want" >"$stamp"
}

setup
export PYTHONUNBUFFERED=1
if [[ ${1:-} == test ]]; then
  shift
  .venv/bin/ruff format --check .
  .venv/bin/ruff check .
  # Two workers, each taking whole test files (module fixtures are built once per file); most
  # of a test's time is XLA compiling, one core each. LMC_TEST_WORKERS=0 runs in one process.
  exec .venv/bin/python -m pytest -n "${LMC_TEST_WORKERS:-2}" --dist loadfile "$@"
fi
exec .venv/bin/python train.py --config=configs/demo.py --workdir=runs/demo-pydocs-200K "$@"
