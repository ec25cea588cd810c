#!/usr/bin/env bash
# Start the dashboard on http://127.0.0.1:8501 (sets up .venv on first use).
# With no data configured it generates the SYNTHETIC demo dataset into ./workspace (or $PCAM_WORKSPACE).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/streamlit run streamlit_app.py "$@"
