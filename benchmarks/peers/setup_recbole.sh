#!/usr/bin/env bash
# Build (or refresh) the RecBole 1.2.1 peer environment in <repo>/.venv-recbole.
#
# Idempotent: re-running reuses the venv, pip skips what is already satisfied, and the
# torch.load patch is applied only where it is missing. RecBole is a peer we compare
# against, never a dependency of reaseq, so it lives in its own virtual environment.
#
# Usage: bash benchmarks/peers/setup_recbole.sh        (PYTHON=python3.11 by default)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="$REPO/.venv-recbole"
CONSTRAINTS="$HERE/recbole-constraints.txt"
PYTHON="${PYTHON:-python3.11}"
start=$(date +%s)

log() { echo "[setup_recbole] $*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || { log "ERROR: $VENV is not a Python 3.11 environment; delete it and re-run"; exit 1; }

PIP=(pip_install -c "$CONSTRAINTS")
# pip warns once per missing directory of the machine's local file:// index; drop only those lines.
pip_install() {
    "$PY" -m pip install --quiet "$@" 2> >(grep -v "^WARNING: Location 'file://.*' is ignored" >&2)
}

# 1. torch first (CPU wheel from the local wheel directory), then the pinned stack.
#    numpy<2: recbole's configurator aliases np.float_ & co, which numpy 2 removed.
log "installing torch / numpy / pandas / scipy"
"${PIP[@]}" torch==2.13.0 "numpy<2" "pandas<2.2" "scipy<1.12"

# 2. RecBole's real runtime requirements, listed explicitly. tensorboard is needed because
#    recbole/utils/utils.py imports torch.utils.tensorboard at import time.
log "installing recbole's runtime requirements"
"${PIP[@]}" tqdm colorlog==4.7.2 colorama==0.4.4 scikit-learn pyyaml thop tabulate \
    texttable psutil tensorboard

# 3. recbole itself without its metadata deps: ray (<=2.6.3) is imported only by
#    recbole.quick_start, plotly/hyperopt only by hyper-parameter tuning.
log "installing recbole==1.2.1 (--no-deps)"
"${PIP[@]}" --no-deps recbole==1.2.1

# 4. Patch: torch>=2.6 defaults torch.load(weights_only=True), but RecBole's checkpoints
#    pickle its Config object, so resume_checkpoint() and evaluate(load_best_model=True)
#    fail with UnpicklingError. Add weights_only=False to exactly those two calls.
log "patching recbole/trainer/trainer.py (torch.load weights_only=False)"
"$PY" - <<'PYEOF'
import re
import sys
import sysconfig
from pathlib import Path

path = Path(sysconfig.get_paths()["purelib"]) / "recbole" / "trainer" / "trainer.py"
if not path.is_file():
    sys.exit(f"ERROR: {path} not found; is recbole installed?")
src = path.read_text()
targets = [
    "torch.load(resume_file, map_location=self.device",
    "torch.load(checkpoint_file, map_location=self.device",
]
changed = False
for t in targets:
    patched = t + ", weights_only=False)"
    if src.count(patched) == 1:
        continue  # already patched
    if src.count(t + ")") != 1:
        sys.exit(f"ERROR: expected exactly one `{t})` in {path}; recbole version mismatch?")
    src = src.replace(t + ")", patched)
    changed = True
# Verify: every torch.load call in the file now passes weights_only=False.
calls = re.findall(r"torch\.load\([^)]*\)", src)
if len(calls) != 2 or not all("weights_only=False" in c for c in calls):
    sys.exit(f"ERROR: patch verification failed in {path}: {calls}")
if changed:
    path.write_text(src)
print(f"{'patched' if changed else 'already patched'}: {path}", file=sys.stderr)
PYEOF

# 5. Smoke import (never recbole.quick_start: it imports ray, which is not installed).
"$PY" - <<'PYEOF'
import warnings
warnings.filterwarnings("ignore")
import numpy, pandas, torch
import recbole, recbole.config, recbole.data, recbole.model, recbole.trainer, recbole.utils
assert recbole.__version__ == "1.2.1", recbole.__version__
assert int(numpy.__version__.split(".")[0]) < 2, numpy.__version__
print(f"recbole {recbole.__version__} torch {torch.__version__} numpy {numpy.__version__} "
      f"pandas {pandas.__version__}", end=" ")
PYEOF
echo "ready: $VENV ($(( $(date +%s) - start ))s)"
