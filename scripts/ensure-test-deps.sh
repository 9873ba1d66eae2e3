#!/usr/bin/env bash
# System packages the test-suite needs that pip cannot provide: Debian's chromium for the
# reviewer-page browser tests (Playwright drives /usr/bin/chromium; browser downloads are not used).
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser tests" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
