#!/usr/bin/env bash
# Debian's Slurm for the `slurm` tests (tests/slurm/conftest.py): controller, node daemon, client
# tools, munge for authentication, slurmdbd + MariaDB for the accounting `sacct` reads.
# Idempotent and install-only: no service is enabled or started here (the fixture runs the daemons
# with its own config in a temp dir, and stops them). Needs root, as `make browser` does.
set -euo pipefail
exec bash "$(dirname "$0")/../apt-install.sh" slurm-wlm slurm-client slurmctld slurmd slurmdbd munge mariadb-server
