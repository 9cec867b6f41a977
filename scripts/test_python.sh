#!/usr/bin/env bash
# The Python package's tests (python/tests), part of the README's test command: builds the wheel
# with maturin (the dev profile, which reuses the workspace build scripts/test.sh just made),
# installs it into a fresh virtualenv with what the tests and examples use (pytest, torch,
# transformers, pandas, matplotlib: pip's cache makes later runs quick), and runs pytest there.
set -euo pipefail
cd "$(dirname "$0")/.."

# maturin lives in a build venv of its own, kept between runs.
TOOLS="$HOME/.cache/lmc/python-build"
if [ ! -x "$TOOLS/bin/maturin" ]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q --disable-pip-version-check "maturin>=1.9.4,<2"
fi
rm -rf target/wheels
(cd python && "$TOOLS/bin/maturin" build --profile dev --out ../target/wheels --quiet)
wheel=$(ls target/wheels/lmc_compiler-*.whl)

VENV=target/python-test-venv
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "$wheel[test]" torch transformers matplotlib

# From outside the repository, so that `import lmc` is the installed wheel, not python/lmc.
cd "$VENV"
LMC_REQUIRE_TORCH=1 LMC_REQUIRE_EXAMPLES=1 ./bin/python -m pytest -q -p no:cacheprovider ../../python/tests
