"""The layer contracts in ``.importlinter`` hold: imports point one way (docs/architecture.md).

Runs ``lint-imports`` (import-linter) on the repository; a broken contract fails the test
with import-linter's report, which names every offending import and its line.
"""

import os
import subprocess
import sys
import unittest
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# import-linter is in the ``test`` extra; its command sits next to this interpreter.
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


class LayerContractTests(unittest.TestCase):
    def test_every_import_linter_contract_is_kept(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        result = subprocess.run(
            [str(LINT_IMPORTS), "--config", str(REPO_ROOT / ".importlinter"), "--no-cache"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            self.fail(f"import contracts broken:\n{result.stdout}\n{result.stderr}")
        self.assertIn("0 broken", result.stdout)
