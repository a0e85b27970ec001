"""What installs: the ``models/`` and ``server_ext/`` folders ship as ``ooblex_models`` and
``ooblex_server_ext``, so a user's own ``models`` or ``server_ext`` package and ours never collide."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: A user's packages with our folders' old names; ooblex must never import them.
USER_PACKAGE = """
WHO = "user"

def load_demo_threads():
    raise AssertionError("ooblex imported the user's {name} package")
"""


def user_packages(where: Path) -> Path:
    for name in ("models", "server_ext"):
        (where / name).mkdir(parents=True)
        (where / name / "__init__.py").write_text(USER_PACKAGE.format(name=name))
        (where / name / "live.py").write_text("raise AssertionError('user module imported by ooblex')\n")
    return where


def run_python(code: str, tmp_path: Path, user_dir: Path) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter with only the user's folder added to the path (not the repository)."""
    env = {**os.environ, "PYTHONPATH": str(user_dir)}
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


def test_user_packages_named_models_and_server_ext_are_the_users(tmp_path):
    """Both orders: ours imported first, then the user's; the demo still serves our shipped threads."""
    user = user_packages(tmp_path / "user")
    code = """
import json, sys
import ooblex_models, ooblex_server_ext
ooblex_models.DEMOS = {"face_detect": ooblex_models.DEMOS["face_detect"]}  # the one demo without a framework
from ooblex.gateway.demo import demo_threads
names = [t.name for t in demo_threads()]
import models, server_ext
print(json.dumps({"models": models.WHO, "server_ext": server_ext.WHO, "names": names,
                  "ours": [ooblex_models.__file__, ooblex_server_ext.__file__]}))
"""
    res = run_python(code, tmp_path, user)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["models"] == out["server_ext"] == "user"
    assert out["ours"] == [str(ROOT / "models" / "__init__.py"), str(ROOT / "server_ext" / "__init__.py")]
    expected = {"edges", "invert", "cartoon"}
    if _has("dlib") and _has("face_recognition_models"):
        expected.add("face_detect")  # from ooblex_models, not from the user's models (which would raise)
    assert expected <= set(out["names"]), out["names"]

    res = run_python("import models; import ooblex.gateway.demo, ooblex_models, ooblex_server_ext;"
                     "import server_ext; print(models.WHO, server_ext.WHO)", tmp_path, user)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["user", "user"]


def test_nothing_of_ours_imports_as_models_or_server_ext(tmp_path):
    res = run_python("import importlib.util as u; print(u.find_spec('models'), u.find_spec('server_ext'))",
                     tmp_path, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["None", "None"]


def test_jupyter_lists_the_extension_enabled_beside_a_user_server_ext(tmp_path):
    """``jupyter server extension list`` with the config file a wheel install puts in etc/jupyter."""
    user = user_packages(tmp_path / "user")
    env = {**os.environ, "PYTHONPATH": str(user), "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_CONFIG_PATH": str(ROOT / "server_ext" / "jupyter-config"), "NO_COLOR": "1"}
    res = subprocess.run([sys.executable, "-m", "jupyter_server", "extension", "list"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    text = re.sub(r"\x1b\[[0-9;]*m", "", res.stdout + res.stderr)
    assert re.search(r"^\s*ooblex_server_ext enabled", text, re.M), text
    assert re.search(r"^\s*ooblex_server_ext\s+\S*\s*OK", text, re.M), text
    assert not re.search(r"^\s*server_ext enabled", text, re.M), text


def test_wheel_ships_our_packages_under_their_own_names(tmp_path):
    """Built from the tracked sources alone: every ``ooblex`` subpackage, ``ooblex_models`` with its weights
    and assets, ``ooblex_server_ext`` and its enabling config; no top-level ``models`` or ``server_ext``."""
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files", "pyproject.toml", "README.md", "ooblex", "models", "server_ext"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    for rel in tracked:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    panel = ROOT / "server_ext" / "labextension"  # the JupyterLab panel, built by make setup, shipped as data files
    shutil.copytree(panel, src / "server_ext" / "labextension")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (wheel,) = (tmp_path / "dist").glob("ooblex-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    for init in (ROOT / "ooblex").rglob("__init__.py"):
        assert init.relative_to(ROOT).as_posix() in names, f"{init.parent.name} is missing from the packages list"
    for rel in tracked:
        folder, _, inner = rel.partition("/")
        if folder in ("models", "server_ext") and not inner.startswith("jupyter-config/"):
            assert f"ooblex_{folder}/{inner}" in names
    assert "ooblex/py.typed" in names
    assert any(n.startswith("ooblex/gateway/static/") for n in names)
    config = [n for n in names if n.endswith("etc/jupyter/jupyter_server_config.d/ooblex_server_ext.json")]
    assert len(config) == 1
    enabled = json.loads(zipfile.ZipFile(wheel).read(config[0]))["ServerApp"]["jpserver_extensions"]
    assert enabled == {"ooblex_server_ext": True}
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"ooblex", "ooblex_models", "ooblex_server_ext"}


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
