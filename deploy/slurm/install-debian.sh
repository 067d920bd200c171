#!/usr/bin/env bash
# Debian's Slurm for the `slurm` tests (tests/slurm/conftest.py): controller, node daemon, client
# tools, munge for authentication, slurmdbd + MariaDB for the accounting `sacct` reads.
# Idempotent and install-only: no service is enabled or started here (the fixture runs the daemons
# with its own config in a temp dir, and stops them). Needs root, as `make browser` does.
set -euo pipefail

PACKAGES=(slurm-wlm slurm-client slurmctld slurmd slurmdbd munge mariadb-server)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

# policy-rc.d 101: the packages' postinst scripts must not start their services (the tests do).
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
