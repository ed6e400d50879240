#!/usr/bin/env bash
# The system tools that the book and the tests need, each installed only when it is missing:
#   chromium  headless browser checks of the built book (Debian's package: /usr/bin/chromium)
#   qemu-user runs a training step under an emulated AMD CPUID (tests/test_portable.py): the same
#             bytes as on this CPU, or gflnb's numbers depend on the machine's vendor
#   npm       fetches MathJax for offline math; any npm on PATH is used as it is (Node.js from outside
#             Debian conflicts with Debian's npm, so Debian's is installed only when there is none)
# Each install is its own apt transaction, so one that fails cannot take the other down with it.
set -uo pipefail

apt_install() {  # apt_install WHAT PACKAGE: one package, one transaction; a failure says what to do
    local what=$1 pkg=$2 log
    log=$(mktemp "${TMPDIR:-/tmp}/gflnb-apt-$pkg.XXXXXX")
    echo "gflnb tools: installing $pkg ($what) with apt-get (log: $log)" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg"; } >"$log" 2>&1; then
        tail -n 5 "$log" >&2
        echo "gflnb tools: error: 'apt-get install $pkg' failed; $what needs it (log: $log)." >&2
        echo "gflnb tools: install $pkg by hand (or put an existing one on PATH) and run make again." >&2
        return 1
    fi
}

status=0
if ! command -v chromium >/dev/null 2>&1; then
    apt_install "the browser tests of the book" chromium || status=1
fi
if ! command -v qemu-x86_64 >/dev/null 2>&1; then
    apt_install "the emulated-CPU test of the numerics" qemu-user || status=1
fi
if ! command -v npm >/dev/null 2>&1; then
    apt_install "MathJax for the book" npm || status=1
fi
exit $status
