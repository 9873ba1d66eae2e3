#!/usr/bin/env bash
# System packages pip needs to build the dependencies that PyPI ships as source only for this
# platform: pdqhash (Meta's PDQ, C++) and weighted-levenshtein (pulled in by threatexchange) need a
# C++ compiler and the Python headers.
set -euo pipefail
PY="${1:-python3}"
missing=()
command -v c++ >/dev/null 2>&1 || missing+=(g++)
"$PY" - <<'PYEOF' || missing+=(python3-dev)
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PYEOF
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing ${missing[*]} to build pdqhash and weighted-levenshtein" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
