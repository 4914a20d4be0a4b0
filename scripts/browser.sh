#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/web/test_browser.py, driven by Playwright
# for Python with executable_path=/usr/bin/chromium; Playwright's own browser download is
# never used). Installed with apt-get when missing and running as root (CI is root on a
# fresh machine); otherwise the browser tests skip locally and fail under CI=true.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "browser.sh: Chromium missing; install it as root: apt-get install chromium" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
/usr/bin/chromium --version
