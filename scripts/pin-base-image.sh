#!/usr/bin/env bash
# Pin deploy/Dockerfile's base image by digest: resolve the tag of PYTHON_IMAGE to the digest of
# its multi-platform index and write `tag@sha256:...` back. Needs docker (buildx) and the
# registry; run it where both are reachable, review the diff, commit.
set -euo pipefail
cd "$(dirname "$0")/.."
current=$(sed -n 's/^ARG PYTHON_IMAGE=//p' deploy/Dockerfile)
tag=${current%@*}
digest=$(docker buildx imagetools inspect "$tag" --format '{{json .Manifest.Digest}}' | tr -d '"')
[[ $digest =~ ^sha256:[0-9a-f]{64}$ ]] || { echo "no digest for $tag: $digest" >&2; exit 1; }
sed -i "s|^ARG PYTHON_IMAGE=.*|ARG PYTHON_IMAGE=$tag@$digest|" deploy/Dockerfile
echo "pinned $tag@$digest"
