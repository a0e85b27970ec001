"""Frame bookkeeping and the JPEG helpers."""

from __future__ import annotations

import numpy as np
import pytest

from ooblex import jpeg
from ooblex.frame import Frame

from .media import numbered_frame


def test_header_round_trip_keeps_everything_but_pixels() -> None:
    f = Frame(image=numbered_frame(3), stream_id="s", seq=3, thread="t", params={"k": 1}, result={"a": 2},
              deadline=5.0, reply_to="r")
    f.stamp("received", 1.0)
    g = Frame.from_header(f.header(), f.image)
    assert g.header() == f.header() and g.image is f.image


def test_durations_follow_stage_order() -> None:
    f = Frame(image=None)
    for stage, t in [("sent", 1.010), ("received", 1.000), ("started", 1.002), ("finished", 1.007)]:
        f.stamp(stage, t)
    d = f.durations()
    assert list(d) == ["received->started", "started->finished", "finished->sent", "total"]
    assert d["total"] == pytest.approx(10.0)
    assert f.captured == 1.0


def test_expiry() -> None:
    assert not Frame(image=None).expired()
    assert Frame(image=None, deadline=1.0).expired()


def test_jpeg_round_trip_is_close() -> None:
    img = numbered_frame(9, 64, 48)
    back = jpeg.decode(jpeg.encode(img, quality=95))
    assert back.shape == img.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - img.astype(int)).mean() < 4
    assert jpeg.image_size(jpeg.encode(img)) == (64, 48)


def test_png_decodes_too() -> None:
    import cv2

    img = numbered_frame(2, 32, 16)
    ok, png = cv2.imencode(".png", img[:, :, ::-1])
    assert ok and (jpeg.decode(png.tobytes()) == img).all()


@pytest.mark.parametrize("body", [b"", b"hello", b"\xff\xd8garbage"])
def test_undecodable_bodies_name_the_problem(body: bytes) -> None:
    with pytest.raises(jpeg.ImageDecodeError):
        jpeg.decode(body)


def test_encode_rejects_wrong_images() -> None:
    with pytest.raises(TypeError, match="uint8"):
        jpeg.encode(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="HxWx3"):
        jpeg.encode(np.zeros((4, 4), np.uint8))
