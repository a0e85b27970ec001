"""The console's vendored chart library is the npm package the lockfile pins, unchanged, with its licence."""

from __future__ import annotations

import json

import pytest

from .netns import ROOT

VENDOR = ROOT / "ooblex" / "gateway" / "static" / "vendor"
UPLOT = ROOT / "labextension" / "node_modules" / "uplot"
FILES = {"uPlot.iife.min.js": "dist/uPlot.iife.min.js", "uPlot.min.css": "dist/uPlot.min.css",
         "uPlot.LICENSE": "LICENSE"}


def test_vendored_uplot_is_the_locked_package() -> None:
    lock = json.loads((ROOT / "labextension" / "package-lock.json").read_text())
    locked = lock["packages"]["node_modules/uplot"]["version"]
    head = (VENDOR / "uPlot.iife.min.js").read_text()[:80]
    assert f"(v{locked})" in head, head
    assert "MIT License" in (VENDOR / "uPlot.LICENSE").read_text()
    if not UPLOT.exists():
        pytest.skip("labextension/node_modules is not installed (make setup runs npm ci)")
    for ours, theirs in FILES.items():
        assert (VENDOR / ours).read_bytes() == (UPLOT / theirs).read_bytes(), f"{ours}: run npm run vendor"


def test_the_console_page_loads_only_its_own_files() -> None:
    page = (ROOT / "ooblex" / "gateway" / "static" / "console.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script>" not in page  # CSP: no inline script
