#!/usr/bin/env bash
# One command: is the density result visible in OHIF? (tests/viewer/ohif_check.py)
# Installs what it needs on Debian 12 (orthanc-dicomweb, chromium) when missing, fetches
# @ohif/app from npm on the first run, keeps screenshots under out/viewer/.
set -euo pipefail
cd "$(dirname "$0")/../.."
make -s viewer-deps
exec .venv/bin/python -m tests.viewer.ohif_check "$@"
