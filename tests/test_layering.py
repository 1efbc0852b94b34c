"""The import contracts in pyproject.toml hold on the real import graph, checked by import-linter: the engine
(rayft_core) never imports ray or rayft, nothing outside rayft.cli imports the command line, and any added later."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_rayft_core_never_imports_ray_or_rayft():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([lint, str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    counts = re.search(r"Contracts: (\d+) kept, (\d+) broken", result.stdout)
    assert counts, result.stdout
    contracts = re.findall(r"^\[\[tool\.importlinter\.contracts\]\]", (REPO / "pyproject.toml").read_text(), re.M)
    assert int(counts[2]) == 0, result.stdout
    assert int(counts[1]) == len(contracts) >= 2, result.stdout
