#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium for tests/test_browser.py (driven by playwright with
# executable_path=/usr/bin/chromium; playwright's own browser download needs internet we lack).
# Idempotent: does nothing when /usr/bin/chromium exists.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "[prompt-optim] /usr/bin/chromium is missing; run as root: apt-get install chromium" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
