#!/usr/bin/env bash
# The project's two entry points, each self-contained on a fresh Linux machine with Python 3.11:
#   bash scripts/run.sh app    install the runtime set and launch the app (builds the demo store on first start)
#   bash scripts/run.sh test   install everything (plus Debian's Chromium for the browser tests) and run the suite
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip() { .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@"; }

case "${1:-}" in
  app)
    pip -r requirements.txt
    shift
    exec .venv/bin/python -m streamlit run app/streamlit_app.py "$@"
    ;;
  test)
    pip -r requirements-dev.txt
    if [ ! -x /usr/bin/chromium ]; then
      sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
      $sudo apt-get install -y -q chromium >/dev/null 2>&1 \
        || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q chromium >/dev/null; }
    fi
    shift
    exec .venv/bin/python -m pytest "$@"
    ;;
  *)
    echo "usage: bash scripts/run.sh app|test [extra arguments]" >&2
    exit 2
    ;;
esac
