#!/usr/bin/env bash
# Try streamchat on the newest releases of its dependencies, past the upper bounds in
# pyproject.toml, in a throwaway venv: prints which versions differ from constraints.txt, which
# speed-ups step aside on them (each checks what it patches), and runs the fast test tier, with
# speed-ups on and off. Nothing in the project changes; a bound moves only after this passes.
#
#   scripts/try-latest.sh            # the fast tier ("not slow")
#   scripts/try-latest.sh -m ""      # everything (extra arguments go to pytest)
set -euo pipefail
cd "$(dirname "$0")/.."

venv="$(mktemp -d)/venv"
python3 -m venv "$venv"
. "$venv/bin/activate"
pip install -q --upgrade pip

# The project without its pinned ranges, then every declared dependency at its newest release.
pip install -q --no-deps -e .
mapfile -t names < <(python3 - <<'PY'
import re, tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
requirements = project["dependencies"] + project["optional-dependencies"]["test"]
for requirement in requirements:
    if ";" in requirement:  # an environment marker: keep it, drop the version range
        spec, marker = requirement.split(";", 1)
        name = re.match(r"[A-Za-z0-9_.\-\[\]]+", spec.strip()).group(0)
        print(f"{name}; {marker.strip()}")
    else:
        print(re.match(r"[A-Za-z0-9_.\-\[\]]+", requirement.strip()).group(0))
PY
)
pip install -q --upgrade "${names[@]}"

echo "== versions that differ from constraints.txt"
pip freeze --exclude-editable | sort -f > "$venv/../latest.txt"
comm -13 <(grep -v '^#' constraints.txt | sort -f) "$venv/../latest.txt" || true

echo "== speed-ups on these versions"
python3 -c "
import chainlit.cli  # what chainlit run has imported before it loads app.py
import app  # installs the speed-ups, each checking what it patches
from streamchat import speedups
speedups.fast_stream_module()
print('\\n'.join(s.describe() for s in speedups.status()))" || true

status=0
echo "== fast tier, speed-ups on"
python -m pytest -q -m "not slow" "$@" || status=1
echo "== integration tests, speed-ups off (public APIs only)"
STREAM_SPEEDUPS=off python -m pytest -q -m "integration and not slow" "$@" || status=1
exit $status
