#!/usr/bin/env bash
# Write deploy/local.env for the local stack (deploy/compose.yaml) once: random secrets of 32
# bytes (hex), never committed (.gitignore). Prints the API key to use.
set -euo pipefail
cd "$(dirname "$0")/.."
env_file=deploy/local.env
if [ ! -f "$env_file" ]; then
  secret() { python3 -c 'import secrets; print(secrets.token_hex(32))'; }
  umask 077
  cat > "$env_file" <<ENV
REDIS_PASSWORD=$(secret)
POSTGRES_PASSWORD=$(secret)
MINIO_ROOT_USER=moderation-$(python3 -c 'import secrets; print(secrets.token_hex(4))')
MINIO_ROOT_PASSWORD=$(secret)
CALLBACK_SECRET=$(secret)
API_KEYS=[{"tenant":"local","key":"$(secret)"}]
REVIEW_SESSION_SECRET=$(secret)
REVIEW_PSEUDONYM_SECRET=$(secret)
GRAFANA_ADMIN_PASSWORD=$(secret)
ENV
  echo "wrote $env_file (keep it: the pseudonym secret must never change)" >&2
fi
# A local.env written before PostgreSQL joined the stack gets its password once.
if ! grep -q '^POSTGRES_PASSWORD=' "$env_file"; then
  echo "POSTGRES_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(32))')" >> "$env_file"
fi
grep '^API_KEYS=' "$env_file" >&2
