#!/usr/bin/env bash
# Debian's PostgreSQL for the `postgres` tests (tests/postgres/conftest.py), the backend store of the
# team MLflow server that mlflow/docker-compose.yml describes. Idempotent and install-only: no
# cluster is started here (the fixture runs its own cluster in a temp dir as the `postgres` user, and
# stops it). Needs root, as `make browser` does.
set -euo pipefail
exec bash "$(dirname "$0")/../deploy/apt-install.sh" postgresql
