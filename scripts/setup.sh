#!/usr/bin/env bash
# Installs, with apt, what the machine lacks of one of two sets (nothing when it lacks nothing):
#   bash scripts/setup.sh build   what compiling Flagstaff needs, which is RocksDB's C/C++ build:
#                                 libclang-dev (bindgen loads libclang at build time for the
#                                 RocksDB bindings, with clang's own headers) and g++ (the cc crate
#                                 compiles RocksDB's C++; gcc, binutils and the libc headers come
#                                 with it, and are all that ring's C needs). Without recommended
#                                 packages: they add only clang's sanitizer runtimes.
#                                 scripts/cluster-up.sh uses this set.
#   bash scripts/setup.sh [test]  the build set plus what the tests outside cargo need (the
#                                 default): curl, python3 with venv (OFREP providers,
#                                 schemathesis), Node.js with npm (the OFREP providers),
#                                 Debian's Chromium (the console's browser tests) and Debian's
#                                 Prometheus client for Python, whose parser reads /metrics in
#                                 node/tests/metrics.rs, systemd-analyze (deploy/'s unit) and
#                                 iproute2 (cluster/tests/netns.rs, run as root).
#                                 scripts/test.sh uses this set.
set -euo pipefail
set_name="${1:-test}"
case "$set_name" in
  build | test) ;;
  *) echo "usage: bash scripts/setup.sh [build|test]" >&2; exit 2 ;;
esac
build_need=()
dpkg -s libclang-dev >/dev/null 2>&1 || build_need+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || build_need+=(g++)
test_need=()
if [ "$set_name" = test ]; then
  command -v curl >/dev/null 2>&1 || test_need+=(curl)
  command -v python3 >/dev/null 2>&1 || test_need+=(python3)
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || test_need+=(python3-venv)
  command -v node >/dev/null 2>&1 || test_need+=(nodejs)
  command -v npm >/dev/null 2>&1 || test_need+=(npm)
  [ -x /usr/bin/chromium ] || test_need+=(chromium)
  /usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1 || test_need+=(python3-prometheus-client)
  command -v systemd-analyze >/dev/null 2>&1 || test_need+=(systemd)
  command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || test_need+=(iproute2)
fi
if [ $((${#build_need[@]} + ${#test_need[@]})) -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update
  if [ ${#build_need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${build_need[@]}"
  fi
  if [ ${#test_need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "${test_need[@]}"
  fi
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (install Rust with rustup)" >&2
  exit 1
fi
