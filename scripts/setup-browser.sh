#!/usr/bin/env bash
# A real browser for the viewer's tests (tests/viewer/): Debian's chromium and
# chromium-driver, driven headless by Selenium. Installed when missing; any
# failure stops the test run here, saying which part is missing.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    echo "setup-browser: installing ${missing[*]} from Debian's packages" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
fi
for tool in chromium chromedriver; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "setup-browser: $tool is still missing after the install" >&2
        exit 1
    fi
done
chromium --headless --no-sandbox --version >&2 || {
    echo "setup-browser: chromium is installed but does not start" >&2
    exit 1
}
