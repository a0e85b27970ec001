"""Face demo threads on shipped photos whose face positions are known (tests/data/README.md)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import ooblex_models
from ooblex import Engine
from ooblex_models.detect import face_detect
from ooblex_models.privacy import face_blur, face_pixelate
from ooblex_models.swap import LandmarkSmoother, face_swap

DATA = Path(__file__).parent / "data"
#: nose tips (x, y) per image, from tests/data/README.md, left to right
NOSES = {"one_face.jpg": [(217, 191)], "two_faces.jpg": [(95, 127), (479, 169)]}


def load(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(DATA / name)), cv2.COLOR_BGR2RGB)


def no_face() -> np.ndarray:
    """A textured scene with no face in it."""
    rng = np.random.default_rng(0)
    img = cv2.resize(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)
    cv2.rectangle(img, (100, 100), (300, 300), (200, 30, 30), -1)
    return img


def contains(box: list[int], point: tuple[int, int]) -> bool:
    x, y, w, h = box
    return x <= point[0] <= x + w and y <= point[1] <= y + h


def outside_mask(shape: tuple[int, ...], boxes: list[list[int]], grow: float) -> np.ndarray:
    """True where no (grown) face box is."""
    m = np.ones(shape[:2], bool)
    for x, y, w, h in boxes:
        dx, dy = int(w * grow), int(h * grow)
        m[max(0, y - dy):y + h + dy, max(0, x - dx):x + w + dx] = False
    return m


@pytest.mark.parametrize("name", ["one_face.jpg", "two_faces.jpg"])
def test_face_detect_finds_the_known_faces(name: str) -> None:
    res = face_detect(load(name))
    faces = sorted(res["faces"], key=lambda f: f["box"][0])
    assert res["count"] == len(NOSES[name]) == len(faces)
    for face, nose in zip(faces, NOSES[name], strict=False):
        assert contains(face["box"], nose)
        assert 50 <= face["box"][2] <= 220
        assert len(face["landmarks"]) == 68
        assert np.hypot(*(np.array(face["landmarks"][30]) - nose)) < 12  # landmark 30 is the nose tip


def test_face_detect_finds_nothing_without_a_face_and_draws_an_overlay() -> None:
    assert face_detect(no_face())["count"] == 0
    img = load("one_face.jpg")
    out, res = face_detect(img, overlay=True, landmarks=False)
    assert "landmarks" not in res["faces"][0]
    changed = np.any(out != img, axis=2)
    assert changed.any() and not changed[outside_mask(img.shape, [f["box"] for f in res["faces"]], 0.05)].any()


def test_bad_frames_are_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        face_detect(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        face_blur(np.zeros((10, 10, 3), np.float32))


def sharpness(img: np.ndarray, box: list[int]) -> float:
    x, y, w, h = box
    return float(cv2.Laplacian(cv2.cvtColor(img[y:y + h, x:x + w], cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


@pytest.mark.parametrize("name", ["one_face.jpg", "two_faces.jpg"])
def test_face_blur_hides_faces_and_nothing_else(name: str) -> None:
    img = load(name)
    out, res = face_blur(img)
    boxes = [f["box"] for f in res["faces"]]
    assert res["count"] == len(NOSES[name])
    assert all(any(contains(b, n) for b in boxes) for n in NOSES[name])
    for b in boxes:
        assert sharpness(out, b) < 0.2 * sharpness(img, b)
    keep = outside_mask(img.shape, boxes, 0.26)
    assert np.array_equal(out[keep], img[keep])


def test_upsample_finds_small_faces_for_distant_cameras() -> None:
    small = cv2.resize(load("two_faces.jpg"), None, fx=0.4, fy=0.4, interpolation=cv2.INTER_AREA)  # faces ~36, ~72 px
    noses = [(int(x * 0.4), int(y * 0.4)) for x, y in NOSES["two_faces.jpg"]]
    assert face_blur(small)[1]["count"] == 1
    out, res = face_blur(small, upsample=1)
    assert res["count"] == 2 and all(any(contains(f["box"], n) for f in res["faces"]) for n in noses)


def test_face_pixelate_makes_blocks_and_reports_boxes() -> None:
    img = load("one_face.jpg")
    out, res = face_pixelate(img, blocks=6)
    (box,) = [f["box"] for f in res["faces"]]
    assert contains(box, NOSES["one_face.jpg"][0])
    x, y, w, h = box
    face = out[y:y + h, x:x + w].reshape(-1, 3)
    assert len(np.unique(face, axis=0)) <= 36 < len(np.unique(img[y:y + h, x:x + w].reshape(-1, 3), axis=0))
    keep = outside_mask(img.shape, [box], 0.21)
    assert np.array_equal(out[keep], img[keep])


@pytest.mark.parametrize("blend", ["seamless", "feather"])
def test_face_swap_changes_the_face_and_not_the_rest(blend: str) -> None:
    img = load("one_face.jpg")
    out, res = face_swap(img, blend=blend, smooth=0.0)
    assert res["swapped"] == 1
    (box,) = [f["box"] for f in res["faces"]]
    x, y, w, h = box
    diff = np.abs(out.astype(int) - img).sum(axis=2)
    assert diff[y + h // 4:y + 3 * h // 4, x + w // 4:x + 3 * w // 4].mean() > 15
    keep = outside_mask(img.shape, [box], 0.3)
    assert np.array_equal(out[keep], img[keep])
    # the pasted face is the reference one: a detector still finds a face where the old one was
    again = face_detect(out)
    assert again["count"] == 1 and contains(again["faces"][0]["box"], NOSES["one_face.jpg"][0])


def test_face_swap_pair_mode_trades_two_faces() -> None:
    img = load("two_faces.jpg")
    out, res = face_swap(img, mode="pair", smooth=0.0)
    assert res["swapped"] == 2
    for x, y, w, h in (f["box"] for f in res["faces"]):
        diff = np.abs(out.astype(int) - img).sum(axis=2)
        assert diff[y + h // 4:y + 3 * h // 4, x + w // 4:x + 3 * w // 4].mean() > 15
    one = load("one_face.jpg")
    out1, res1 = face_swap(one, mode="pair")
    assert res1["swapped"] == 0 and np.array_equal(out1, one)


def test_face_swap_is_steadier_with_smoothing() -> None:
    """Sensor noise moves raw landmarks a little every frame; smoothing keeps the pasted face still."""
    img = load("one_face.jpg")
    rng = np.random.default_rng(2)
    noisy = [np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8) for _ in range(8)]

    def flicker(smooth: float) -> float:
        time.sleep(1.1)  # let tracks from earlier calls expire
        outs = [face_swap(f, smooth=smooth, blend="feather")[0].astype(int) - f for f in noisy]
        return float(np.mean([np.abs(a - b)[100:280, 130:310].mean() for a, b in zip(outs, outs[1:], strict=False)]))

    assert flicker(0.9) < 0.8 * flicker(0.0)


def test_landmark_smoother_damps_jitter_and_follows_real_motion() -> None:
    smooth = LandmarkSmoother()
    base = np.stack(np.meshgrid(np.linspace(100, 200, 17), [150, 250]), -1).reshape(-1, 2).astype(np.float32)
    rng = np.random.default_rng(1)
    noisy = [base + rng.normal(0, 1.5, base.shape).astype(np.float32) for _ in range(40)]
    out = [smooth((640, 480), p, 0.7) for p in noisy]
    assert np.std([o - base for o in out[10:]]) < 0.7 * np.std([p - base for p in noisy[10:]])
    moved = base + 60  # a head turn: followed at once, not dragged behind
    assert np.allclose(smooth((640, 480), moved, 0.7), moved)


def test_demo_threads_load_with_licences() -> None:
    names = [t.name for t in ooblex_models.load_demo_threads()]
    assert {"face_detect", "face_blur", "face_pixelate", "face_swap"} <= set(names)
    for t in ooblex_models.load_demo_threads():
        d = t.describe()
        assert d["description"] and d["licence"], t.name


def test_a_demo_with_missing_dependencies_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog) -> None:
    (tmp_path / "needs_missing.py").write_text("import not_installed_anywhere_xyz\nthread = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(ooblex_models.DEMOS, "needs_missing", "needs_missing:thread")
    with caplog.at_level(logging.WARNING, "ooblex.models"):
        names = [t.name for t in ooblex_models.load_demo_threads()]
    assert "needs_missing" not in names and "face_blur" in names
    assert "needs_missing skipped" in caplog.text and "not_installed_anywhere_xyz" in caplog.text
    sys.modules.pop("needs_missing", None)


async def test_face_blur_through_the_engine_returns_boxes_as_json() -> None:
    async with Engine("memory://", threads=[face_blur, face_swap]) as engine:
        stream = engine.open("face_blur", params={"strength": 1.0}, mode="every")
        await stream.submit(load("one_face.jpg"), captured=time.time())
        frame = await stream.get(timeout=30)
        assert frame.error is None and frame.result["count"] == 1
        assert contains(frame.result["faces"][0]["box"], NOSES["one_face.jpg"][0])
        await stream.close()
        with pytest.raises(ValueError, match="mode"):
            engine.open("face_swap", params={"mode": "nope"})


async def test_face_swap_serves_two_live_streams_at_once() -> None:
    """One shared instance, two streams of different sizes: each keeps its own landmark tracks."""
    big = load("one_face.jpg")
    small = cv2.resize(load("two_faces.jpg"), (320, 240), interpolation=cv2.INTER_AREA)
    async with Engine("memory://", threads=[face_swap]) as engine:
        a = engine.open("face_swap", params={"blend": "feather"}, mode="every")
        b = engine.open("face_swap", params={"mode": "pair", "scale": 2.0}, mode="every")  # small faces
        outs_a, outs_b = [], []
        for _ in range(3):  # both streams in flight at once, interleaved on the one instance
            await a.submit(big, captured=time.time())
            await b.submit(small, captured=time.time())
            outs_a.append(await a.get(timeout=30))
            outs_b.append(await b.get(timeout=30))
        await a.close()
        await b.close()
    assert all(f.error is None and f.result["swapped"] == 1 for f in outs_a)
    assert all(f.error is None and f.image.shape == small.shape and f.result["swapped"] == 2 for f in outs_b)
