#!/usr/bin/env bash
# System packages the test-suite needs that pip cannot provide: Debian's chromium for the
# reviewer-page browser tests (Playwright drives /usr/bin/chromium; browser downloads are not
# used), promtool (Debian's prometheus package) for the alerting-rule tests, and kubectl (its
# built-in kustomize renders deploy/k8s) for the manifest tests.
set -euo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
updated=""
install() {  # install PACKAGE [apt-get options...]
  local package="$1"; shift
  echo "installing Debian's $package for the tests" >&2
  if [ -z "$updated" ]; then $SUDO apt-get update -qq; updated=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" "$package" >/dev/null
}
command -v chromium >/dev/null 2>&1 || install chromium
command -v promtool >/dev/null 2>&1 || install prometheus --no-install-recommends
# kubectl: the machine image's package when its repository is configured, else Debian's
# kubernetes-client (the manifest tests need kustomize v5 and say so when it is older).
command -v kubectl >/dev/null 2>&1 || install kubectl 2>/dev/null || install kubernetes-client
# OpenCV (inside rapidocr-onnxruntime: the text signal's OCR) loads libGL and GLib; the OCR tests
# and bench/ocr.py write text in the DejaVu faces (Pillow's own font when they are missing).
ldconfig -p | grep -q "libGL.so.1 " || install libgl1 --no-install-recommends
ldconfig -p | grep -q "libgthread-2.0.so.0 " || install libglib2.0-0 --no-install-recommends
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || install fonts-dejavu-core
