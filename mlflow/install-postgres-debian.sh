#!/usr/bin/env bash
# Debian's PostgreSQL for the `postgres` tests (tests/postgres/conftest.py), the backend store of the
# team MLflow server that mlflow/docker-compose.yml describes. Idempotent and install-only: no
# cluster is started here (the fixture runs its own cluster in a temp dir as the `postgres` user, and
# stops it). Needs root, as `make browser` does.
set -euo pipefail

dpkg-query -W -f='${Status}' postgresql 2>/dev/null | grep -q "install ok installed" && exit 0

# policy-rc.d 101: the package's postinst must not start the cluster it creates (the tests run their own).
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
