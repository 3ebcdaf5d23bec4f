#!/usr/bin/env bash
# The build steps of deploy/Dockerfile, runnable without docker (these
# machines cannot pull base images): from the repository's top directory,
#
#   deploy/build.sh            # deps, build, then check: the release binary runs the quickstart
#   FEATURES=sql deploy/build.sh
#   deploy/build.sh deps       # only the dependency layer (empty crates)
#   deploy/build.sh build      # only mqlink itself
#   deploy/build.sh check      # only the check of a built binary
#
# FEATURES is the CLI's cargo features (default: none; see deploy/Dockerfile).
# CARGO_TARGET_DIR is honoured (default: target).
set -euo pipefail
cd "$(dirname "$0")/.."
FEATURES="${FEATURES:-}"
TARGET="${CARGO_TARGET_DIR:-target}"
CRATES=(mqlink mqlink-pipeline mqlink-sql mqlink-cli testkit)
build() {
    cargo build --release --locked -p mqlink-cli --no-default-features --features "$FEATURES"
}

# The empty crates made by deps, removed however the script ends (a
# stub left behind would become a target of the real crate).
made=()
unmake() {
    local d
    for d in "${made[@]}"; do rm -rf "$d"; done
    made=()
    rmdir crates/*/examples 2>/dev/null || true
}
trap unmake EXIT

deps() {
    # Empty crates in place of the sources (only where a crate has none
    # yet, so that running it in a checkout changes nothing).
    for c in "${CRATES[@]}"; do
        if [ ! -d "crates/$c/src" ]; then
            mkdir -p "crates/$c/src"
            echo 'fn main() {}' > "crates/$c/src/main.rs"
            : > "crates/$c/src/lib.rs"
            made+=("crates/$c/src")
        fi
        # Examples a manifest names ([[example]] name = "…") must exist too.
        local ex
        for ex in $(grep -A3 '^\[\[example\]\]' "crates/$c/Cargo.toml" | sed -n 's/^name = "\(.*\)"/\1/p'); do
            if [ ! -e "crates/$c/examples/$ex.rs" ]; then
                mkdir -p "crates/$c/examples"
                echo 'fn main() {}' > "crates/$c/examples/$ex.rs"
                made+=("crates/$c/examples/$ex.rs")
            fi
        done
    done
    build
    # The empty crates' own artifacts go, their dependencies stay.
    for c in "${CRATES[@]}"; do
        cargo clean --release --locked -p "$c" >/dev/null 2>&1 || true
    done
    unmake
}

check() {
    local bin
    bin="$(realpath "$TARGET/release/mqlink")"
    "$bin" --version
    # The quickstart: generated readings through the embedded broker
    # into a file, until idle.
    local dir
    dir="$(mktemp -d)"
    trap 'rm -rf "$dir"' RETURN
    cp examples/quickstart.toml "$dir/"
    "$bin" validate "$dir/quickstart.toml"
    (cd "$dir" && timeout 60 "$bin" run quickstart.toml --until-idle 1 --quiet --http-listen off)
    local n
    n="$(wc -l < "$dir/out/telemetry.jsonl")"
    if [ "$n" -ne 100000 ]; then
        echo "deploy/build.sh: the quickstart wrote $n of 100000 records" >&2
        return 1
    fi
    echo "deploy/build.sh: $bin runs the quickstart"
}

case "${1:-all}" in
    deps) deps ;;
    build) build; strip "$TARGET/release/mqlink" 2>/dev/null || true ;;
    check) check ;;
    all) deps; build; check ;;
    *) echo "usage: deploy/build.sh [deps|build|check|all]" >&2; exit 2 ;;
esac
