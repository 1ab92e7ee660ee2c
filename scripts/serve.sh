#!/usr/bin/env bash
# Start the app with the project's settings from any folder (Streamlit reads .streamlit/config.toml only from the
# folder `streamlit run` is called in). Bound to this machine only unless CXR_ADDRESS says otherwise; extra
# arguments go to `streamlit run` (e.g. --server.port 8600).
set -euo pipefail
cd "$(dirname "$0")/.."
exec env STREAMLIT_BROWSER_GATHER_USAGE_STATS=false STREAMLIT_SERVER_MAX_UPLOAD_SIZE=50 \
  STREAMLIT_CLIENT_TOOLBAR_MODE=minimal STREAMLIT_RUNNER_POST_SCRIPT_GC=false \
  python -m streamlit run app.py --server.address "${CXR_ADDRESS:-127.0.0.1}" --server.headless true "$@"
