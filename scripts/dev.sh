#!/usr/bin/env bash
# effattn's two set-up commands, for a fresh Debian machine with git, cmake and g++:
#   scripts/dev.sh examples   install what is missing, build (Release), run the examples and a
#                             short benchmark
#   scripts/dev.sh test       install what is missing, build (Release), run the whole test suite
#   scripts/dev.sh report [--tiny|--full] [--out DIR]
#                             install what is missing, build the benchmark suite, run it and
#                             write a report folder (default bench-report/: summary.md + plots)
# Missing Debian packages are installed with apt-get when run as root; otherwise the exact
# apt-get line is printed and the script stops. BUILD_DIR (default build/) and JOBS (default 2)
# may be set in the environment.
set -euo pipefail

cd "$(dirname "$0")/.."
mode="${1:-}"
BUILD_DIR="${BUILD_DIR:-build}"
JOBS="${JOBS:-2}"

packages=(cmake g++ make libeigen3-dev libxsimd-dev nlohmann-json3-dev libgtest-dev
          libbenchmark-dev python3 python3-matplotlib)

install_missing() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ]; then
    echo "== installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "effattn needs these Debian packages; run as root:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
}

configure_and_build() {
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "$@"
  cmake --build "$BUILD_DIR" -j "$JOBS"
}

case "$mode" in
  examples)
    install_missing
    configure_and_build -DEFFATTN_BUILD_TESTS=OFF -DEFFATTN_BUILD_BENCH=ON \
      -DEFFATTN_BUILD_EXAMPLES=ON
    for ex in "$BUILD_DIR"/examples/*; do
      if [ -f "$ex" ] && [ -x "$ex" ]; then
        echo "== $(basename "$ex")"
        "$ex"
      fi
    done
    echo "== short benchmark: causal flash attention prefill beside the same-run roofline"
    OMP_NUM_THREADS=2 "$BUILD_DIR"/bench/attention \
      --benchmark_filter='roofline|prefill/T:2048/Hkv:2/threads:2/causal:1' \
      --benchmark_min_time=0.2
    ;;
  test)
    install_missing
    # Benchmarks are built too: the suite's tiny report run is one of the tests.
    configure_and_build -DEFFATTN_BUILD_TESTS=ON -DEFFATTN_BUILD_BENCH=ON \
      -DEFFATTN_BUILD_EXAMPLES=ON
    (cd "$BUILD_DIR" && ctest --output-on-failure -j "$JOBS")
    ;;
  report)
    install_missing
    shift
    cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DEFFATTN_BUILD_BENCH=ON
    cmake --build "$BUILD_DIR" -j "$JOBS" --target suite
    # Debian's python3 (where python3-matplotlib lives), not whatever python3 is first on PATH.
    PYTHON="${PYTHON:-$( [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3 )}"
    "$PYTHON" bench/report.py --suite-bin "$BUILD_DIR"/bench/suite "$@"
    ;;
  *)
    echo "usage: scripts/dev.sh examples|test|report [--tiny|--full] [--out DIR]" >&2
    exit 2
    ;;
esac
