"""Settings: strict parsing of OOBLEX_* variables, warnings for unknown ones, ``ooblex config``, docs in sync."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ooblex.gateway import settings as settings_module
from ooblex.gateway.settings import OTHER_VARIABLES, Settings, unknown_variables
from ooblex.gateway.settings_docs import field_docs, reference

from .docs import DOCS, code_blocks

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("OOBLEX_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(("name", "raw", "message"), [
    ("OOBLEX_FEC", "flase", "OOBLEX_FEC expects bool, got 'flase'"),
    ("OOBLEX_AUDIO", "2", "OOBLEX_AUDIO expects bool, got '2'"),
    ("OOBLEX_MAX_SESSIONS", "4.5", "OOBLEX_MAX_SESSIONS expects int, got '4.5'"),
    ("OOBLEX_MAX_LATENCY_MS", "fast", "OOBLEX_MAX_LATENCY_MS expects float, got 'fast'"),
    ("OOBLEX_MAX_JOBS", "-1", "OOBLEX_MAX_JOBS must be >= 0, got -1"),
    ("OOBLEX_ICE_SERVERS", "[{", "OOBLEX_ICE_SERVERS is not JSON"),
])
def test_a_bad_value_is_an_error_naming_the_variable(monkeypatch, name, raw, message) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValueError) as exc:
        Settings.from_env()
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_good_values_are_parsed_and_keywords_win(monkeypatch) -> None:
    monkeypatch.setenv("OOBLEX_FEC", "off")
    monkeypatch.setenv("OOBLEX_MAX_SESSIONS", "32")
    monkeypatch.setenv("OOBLEX_ALLOWED_HOSTS", "a.example, *.b.example,")
    monkeypatch.setenv("OOBLEX_ICE_SERVERS", '[{"urls": "stun:stun.example.org:3478"}]')
    s = Settings.from_env(max_sessions=None, max_jobs=2)
    assert s.fec is False and s.max_sessions == 32 and s.max_jobs == 2
    assert s.allowed_hosts == ["a.example", "*.b.example"]
    assert s.ice_servers == [{"urls": "stun:stun.example.org:3478"}]
    assert Settings(max_sessions=3).max_sessions == 3  # a keyword beats the variable
    with pytest.raises(ValueError, match="max_sessions expects int, got 'x'"):  # a keyword is named as such
        Settings(max_sessions="x")
    with pytest.raises(ValueError, match="no_such_setting"):
        Settings(no_such_setting=1)


def test_an_unknown_variable_is_warned_about_with_the_closest_name(monkeypatch, caplog) -> None:
    monkeypatch.setattr(settings_module, "_warned", set())
    monkeypatch.setenv("OOBLEX_MAX_SESION", "3")
    monkeypatch.setenv("OOBLEX_ZZZZZZZZ", "1")
    for name in OTHER_VARIABLES:  # read elsewhere: never reported
        monkeypatch.setenv(name, "x")
    with caplog.at_level(logging.WARNING, "ooblex.settings"):
        assert Settings.from_env().max_sessions == 16
    assert "OOBLEX_MAX_SESION is not an Ooblex setting and is ignored; did you mean OOBLEX_MAX_SESSIONS?" \
        in caplog.text
    assert "OOBLEX_ZZZZZZZZ is not an Ooblex setting and is ignored (" in caplog.text
    assert [n for n, _ in unknown_variables(os.environ)] == ["OOBLEX_MAX_SESION", "OOBLEX_ZZZZZZZZ"]


def test_every_other_variable_is_read_somewhere() -> None:
    """The list of non-setting variables names only variables the code, deploy files or tests use."""
    text = "".join(p.read_text(errors="ignore") for d in ("ooblex", "server_ext", "tests", "deploy", "notebooks")
                   for p in (ROOT / d).rglob("*") if p.is_file()
                   and (p.suffix in (".py", ".yml", ".yaml", ".ipynb", ".sh") or p.name == "Dockerfile")
                   and p.name not in ("settings.py", "test_settings.py"))
    assert [n for n in OTHER_VARIABLES if n not in text] == []


def _config(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OOBLEX_")}
    return subprocess.run([sys.executable, "-m", "ooblex", "config", *args], capture_output=True, text=True,
                          env={**clean, "PYTHONPATH": str(ROOT), **env}, timeout=60)


def test_ooblex_config_prints_the_settings_with_secrets_masked() -> None:
    out = _config(OOBLEX_SECRET="hunter2-secret", OOBLEX_TURN_SECRET="hunter2-turn",
                  OOBLEX_TURN_URLS="turn:t.example.com:3478", OOBLEX_MAX_JOBS="7", OOBLEX_FCE="1")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["secret"] == shown["turn_secret"] == "***" and "hunter2" not in out.stdout + out.stderr
    assert shown["max_jobs"] == 7 and shown["turn_urls"] == ["turn:t.example.com:3478"]
    assert set(shown) == set(Settings.model_fields)
    assert "did you mean OOBLEX_FEC?" in out.stderr
    bad = _config(OOBLEX_FEC="flase")
    assert bad.returncode == 2 and "ooblex: OOBLEX_FEC expects bool, got 'flase'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_settings_reference_is_generated_from_the_model() -> None:
    docs = field_docs()
    assert [n for n, d in docs.items() if not d] == [], "every field needs a #: comment"
    assert docs["fec"].startswith("Forward error correction for video")
    page = (DOCS / "settings.md").read_text()
    assert reference() in page, "docs/settings.md is out of date: regenerate with `ooblex config --reference`"
    assert _config("--reference").stdout == reference()


def test_the_settings_page_example_runs(capsys) -> None:
    (block,) = code_blocks("settings.md")
    exec(compile(block, "docs/settings.md", "exec"), {})  # noqa: S102 - our own documentation
    out = capsys.readouterr().out
    assert "max_sessions expects int, got 'many'" in out and "['a.example', 'b.example']" in out
