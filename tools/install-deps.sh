#!/bin/sh
# Install the Debian packages qrun needs to build and test (run as root or
# with sudo available). The CUDA Toolkit is optional and not installed here.
set -eu
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    build-essential pkg-config meson ninja-build \
    libcjson-dev libpcre2-dev libsentencepiece-dev check libsubunit-dev \
    python3 python3-venv python3-pip ca-certificates >/dev/null
echo "install-deps: done"
