#!/usr/bin/env bash
# Idempotent set-up used by the Makefile.
#   bootstrap.sh python  -> .venv with every pinned Python dependency (server, embedded engines, dev tools)
#   bootstrap.sh system  -> Debian packages the test tiers need (espeak-ng, Chromium, HAProxy, nftables, iptables); skipped when present
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "bootstrap: need root (or sudo) to run: $*" >&2; return 1; fi
}

case "${1:-python}" in
python)
    python3 -c 'import sys; assert sys.version_info >= (3, 11)' ||
        { echo "bootstrap: ringback needs Python >= 3.11" >&2; exit 1; }
    if ! python3 -c 'import ensurepip' 2>/dev/null; then
        echo "bootstrap: installing Debian's python3-venv"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends python3-venv
    fi
    # pesq (benchmark scoring) builds from source: it needs a C compiler and Python's headers.
    include=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    if [ ! -f "$include/Python.h" ] || ! command -v gcc >/dev/null; then
        echo "bootstrap: installing Debian's python3-dev and gcc"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends python3-dev gcc
    fi
    # NetfilterQueue (netem/'s delay handler) builds from source against libnetfilter_queue.
    if [ ! -f /usr/include/libnetfilter_queue/libnetfilter_queue.h ]; then
        echo "bootstrap: installing Debian's libnetfilter-queue-dev"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends libnetfilter-queue-dev
    fi
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet -e '.[tts,dev]'
    "$VENV/bin/python" -m agent.call.selfcheck
    touch "$VENV/.installed"
    ;;
system)
    missing=()
    command -v espeak-ng >/dev/null || missing+=(espeak-ng)
    command -v chromium >/dev/null || missing+=(chromium)
    command -v haproxy >/dev/null || missing+=(haproxy)  # deploy/haproxy.cfg and its test
    # netem/ (network degradation lab): namespaces, qdiscs, nftables loss, iptables NFQUEUE
    command -v ip >/dev/null && command -v tc >/dev/null || missing+=(iproute2)
    command -v nft >/dev/null || missing+=(nftables)
    command -v iptables >/dev/null || missing+=(iptables)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "bootstrap: installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
    ;;
*)
    echo "usage: $0 python|system" >&2; exit 2 ;;
esac
