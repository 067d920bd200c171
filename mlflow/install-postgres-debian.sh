#!/usr/bin/env bash
# Placeholder until the engine lands: installs nothing yet.
set -euo pipefail
