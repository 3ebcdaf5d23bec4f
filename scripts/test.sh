#!/usr/bin/env bash
# Runs every test of mqlink. Installs what the tests need on a fresh
# Debian machine (Mosquitto, its clients, openssl, PostgreSQL's server
# binaries, a Rust toolchain check).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The broker-limits test builds the libmosquitto publisher (bench/cpub.c).
command -v gcc >/dev/null 2>&1 || need+=(gcc)
[ -f /usr/include/mosquitto.h ] || need+=(libmosquitto-dev)
# The pipeline tests start their own PostgreSQL (initdb into a temporary
# directory, run as the postgres user through setpriv).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
# The InfluxDB sink's tests start their own InfluxDB 1.x (influxd).
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
# The interoperability tests (crates/mqlink/tests/interop.rs) start their own
# RabbitMQ (MQTT plugin), NATS (MQTT listener) and aedes (Node.js).
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need+=(rabbitmq-server)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
# The web console's browser test (crates/mqlink-cli/tests/console.rs) drives
# Debian's headless Chromium with playwright-core.
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
# ejabberd (mod_mqtt) for the same tests and the CLI's hang-up tests
# (crates/mqlink-cli/tests/hangups.rs); they run it as `erl -s ejabberd`.
[ -x /usr/sbin/ejabberdctl ] || need+=(ejabberd)
# The Python package's tests (python/) run in a virtualenv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3 python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "Installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian starts the ejabberd service it installs (XMPP, and MQTT on
  # 1883); the tests run their own.
  if [[ " ${need[*]} " == *" ejabberd "* ]] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now ejabberd >/dev/null 2>&1 || true
  fi
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust from https://rustup.rs (or apt-get install cargo)" >&2
  exit 1
fi

# rumqttd for the interoperability tests. `--locked` fails to build on
# current Rust (metrics 0.22.1, E0521), so its dependencies are resolved
# anew; about 8 minutes on 2 cores, once.
if ! command -v rumqttd >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/rumqttd" ]; then
  echo "Installing rumqttd (cargo install rumqttd --version 0.20.0)"
  cargo install rumqttd --version 0.20.0 --quiet
fi
# aedes, from package-lock.json (the tests would do it too, on first use).
[ -f crates/testkit/aedes/node_modules/aedes/package.json ] ||
  (cd crates/testkit/aedes && npm ci --no-audit --no-fund --silent)
# playwright-core for the console's browser test, likewise.
[ -f crates/testkit/console/node_modules/playwright-core/package.json ] ||
  (cd crates/testkit/console && npm ci --no-audit --no-fund --silent)

# amqtt (Python) for the interoperability tests, in a virtualenv (the
# tests make it too, on first use).
amenv=target/amqtt-venv
[ -x "$amenv/bin/python" ] || python3 -m venv "$amenv"
[ -x "$amenv/bin/amqtt" ] ||
  "$amenv/bin/pip" install -q --disable-pip-version-check 'amqtt==0.12.0'

# The Parquet sink's tests read its files back with pyarrow from PyPI, in a
# virtualenv of their own (the tests make it too, on first use; kept).
[ -x target/pyarrow-venv/bin/python ] || python3 -m venv target/pyarrow-venv
target/pyarrow-venv/bin/python -c 'import pyarrow' 2>/dev/null ||
  target/pyarrow-venv/bin/pip install -q --disable-pip-version-check 'pyarrow>=17,<27'
# The Sparkplug B test's edge node (crates/mqlink-cli/tests/sparkplug.rs):
# pysparkplug's payloads over paho-mqtt, in a virtualenv (the test makes it
# too, on first use).
spenv=target/sparkplug-venv
[ -x "$spenv/bin/python" ] || python3 -m venv "$spenv"
"$spenv/bin/python" -c 'import pysparkplug' 2>/dev/null ||
  "$spenv/bin/pip" install -q --disable-pip-version-check 'pysparkplug==0.6.1'

cargo fmt --all -- --check
# The binary as users build it: a plain build resolves features without
# the dev-dependencies' (tests turn on mqlink's `codec` feature), so a use
# of something private to mqlink fails here and not only in a user's build.
cargo build -p mqlink-cli --quiet
cargo fmt --manifest-path python/Cargo.toml -- --check
# --no-fail-fast: a failing test binary does not hide the others' results.
cargo test --workspace --all-targets --no-fail-fast
# The library's quick start: doctests that run against the embedded broker.
cargo test --workspace --doc --no-fail-fast

# The Python package (python/, PyO3 + maturin): built into a virtualenv with
# quixstreams and paho-mqtt from PyPI, its pytest suite run against
# Mosquitto. The first build takes about 4 minutes on 2 cores, later ones
# seconds (python/target is kept).
pyenv=target/pyenv
[ -x "$pyenv/bin/python" ] || python3 -m venv "$pyenv"
"$pyenv/bin/pip" install -q --disable-pip-version-check \
  'maturin>=1.5,<2' pytest 'quixstreams==3.28.1' 'paho-mqtt>=2,<3'
# The wheel a user installs (target/wheels/mqlink-*.whl: no Rust needed to
# install it), built by maturin from the virtualenv (no download).
PATH="$PWD/$pyenv/bin:$PATH" "$pyenv/bin/maturin" build --release --quiet \
  -m python/Cargo.toml -o target/wheels
wheel=$(ls -t target/wheels/mqlink-*.whl | head -1)
# Installed into a fresh virtualenv with nothing else, it imports.
fresh=$(mktemp -d)
python3 -m venv "$fresh"
"$fresh/bin/pip" install -q --disable-pip-version-check "$wheel"
(cd "$fresh" && bin/python -c 'import mqlink, mqlink.quix; mqlink.Publisher')
rm -rf "$fresh"
"$pyenv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
"$pyenv/bin/python" -m pytest -q -p no:cacheprovider python/tests
