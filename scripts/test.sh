#!/usr/bin/env bash
# The whole test suite, from a clean checkout: set-up, formatting, lints, build, tests (Rust's,
# then the Python package's).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The tests drive the `lmc` binary and link the runtime's C library, so build those first.
cargo build --workspace --all-targets
cargo test --workspace
# The Python package: its wheel built and installed into a fresh virtualenv, and pytest there.
bash scripts/test_python.sh
