#!/usr/bin/env bash
# Build the sandbox image with no image registry at all: a minimal Debian rootfs made
# by debootstrap (from the machine's own apt mirror) is imported as the base image,
# then the usual Dockerfile is built on top of it.
#
#   images/build-offline.sh [IMAGE]           default: rlm-sandbox:latest
#
# Environment: RLM_BASE_IMAGE (default rlm-base:bookworm), RLM_BASE_SUITE (bookworm),
# RLM_ROOTFS_CACHE (/var/cache/rlm), RLM_APT_MIRROR (default: read from apt sources).
# The base image is kept, so reruns only rebuild the thin top layers.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
image="${1:-rlm-sandbox:latest}"
base="${RLM_BASE_IMAGE:-rlm-base:bookworm}"
suite="${RLM_BASE_SUITE:-bookworm}"
cache="${RLM_ROOTFS_CACHE:-/var/cache/rlm}"

say() { printf '[build-offline] %s\n' "$*" >&2; }
die() { printf '[build-offline] ERROR: %s\n' "$*" >&2; exit 1; }

# The first Debian mirror the machine's apt already uses for $suite.
apt_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # deb822 stanzas: pick URIs from a "Types: deb" stanza whose Suites has $suite.
        awk -v suite="$suite" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uris != "") {
                    split(uris, u, " "); print u[1]; found = 1; exit
                }
                types = ""; suites = ""; uris = ""
            }
            /^[[:space:]]*$/ { flush(); next }
            /^[[:space:]]*#/ { next }
            tolower($1) == "types:"  { $1 = ""; types = $0 }
            tolower($1) == "suites:" { $1 = ""; suites = $0 }
            tolower($1) == "uris:"   { $1 = ""; uris = $0 }
            END { if (!found) flush() }
        ' "$f" | sed 's/^ *//' | head -n1
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # "deb [opts] URI suite components..."
        awk -v suite="$suite" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }
        ' "$f"
    done
}

if docker image inspect "$base" >/dev/null 2>&1; then
    say "base image $base already present"
else
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing: apt-get install debootstrap"
    [ "$(id -u)" -eq 0 ] || die "debootstrap needs root; rerun as root"
    mirror="${RLM_APT_MIRROR:-$(apt_mirror | head -n1)}"
    [ -n "$mirror" ] || die "no apt mirror for $suite in /etc/apt/sources.list{,.d/}; set RLM_APT_MIRROR"
    rootfs="$cache/rootfs-$suite"
    if [ ! -f "$rootfs/.rlm-complete" ]; then
        say "debootstrap $suite from $mirror into $rootfs (about a minute)"
        rm -rf "$rootfs"
        mkdir -p "$rootfs"
        # python3, not python3-minimal: the runner needs json and friends.
        debootstrap --variant=minbase --include=python3 "$suite" "$rootfs" "$mirror" >&2 \
            || die "debootstrap failed; see $rootfs/debootstrap/debootstrap.log"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        touch "$rootfs/.rlm-complete"
    fi
    say "importing $rootfs as $base"
    tar --exclude=./.rlm-complete -C "$rootfs" -c . | docker import - "$base" >/dev/null
fi

"$here/build.sh" "$image" "$base"
