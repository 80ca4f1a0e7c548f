"""Packaging: the twistd plugin is found after install, from any directory; CI runs README's command."""

import importlib.metadata
import json
import subprocess
from pathlib import Path

from tests.processes import TWISTD, child_env
from tests.support import skip_or_fail

REPO = Path(__file__).resolve().parent.parent


def _editable():
    dist = importlib.metadata.distribution("udpgateway")
    direct = dist.read_text("direct_url.json")
    return bool(direct and json.loads(direct).get("dir_info", {}).get("editable"))


def test_twistd_lists_the_plugin_from_another_directory(tmp_path):
    """`twistd --help`, run outside the repository, lists the udpgateway plugin."""
    env = child_env()
    env.pop("PYTHONPATH")
    done = subprocess.run([str(TWISTD), "--help"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "udpgateway" in done.stdout


def test_plugin_directories_have_no_init():
    """twisted/ and twisted/plugins/ are Twisted's namespace: no __init__.py of ours."""
    assert not (REPO / "twisted" / "__init__.py").exists()
    assert not (REPO / "twisted" / "plugins" / "__init__.py").exists()


def test_installed_copy_is_a_real_install():
    """After `pip install .` the plugin and packages live in site-packages (CI installs non-editable)."""
    if _editable():
        skip_or_fail("udpgateway is installed editable here (pip install -e): only a real install can be checked")
    dist = importlib.metadata.distribution("udpgateway")
    files = {str(f) for f in dist.files}
    assert "twisted/plugins/udpgateway.py" in files
    assert "gateway/service.py" in files and "listeners/multicast.py" in files


def test_ci_runs_exactly_the_readme_test_command():
    """.ci/run's test line appears verbatim in README.rst."""
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    command = next(line for line in ci if line.startswith("python3 -m venv"))
    assert command in (REPO / "README.rst").read_text()
