"""Rebuild the shipped face images from public-domain photos inside two PyPI wheels.

Not needed to run the tests (the outputs are committed); kept so their provenance can be checked:

    pip download --no-deps matplotlib scikit-image -d /tmp/w && cd /tmp/w && \
        unzip -o -q 'matplotlib-*.whl' 'matplotlib/mpl-data/sample_data/grace_hopper.jpg' && \
        unzip -o -q 'scikit_image-*.whl' 'skimage/data/astronaut.png'
    python tests/data/make_test_images.py /tmp/w
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def main(src: Path) -> None:
    astronaut = cv2.imread(str(src / "skimage/data/astronaut.png"))  # 512x512, face near (246..333, 74..160)
    hopper = cv2.imread(str(src / "matplotlib/mpl-data/sample_data/grace_hopper.jpg"))  # 512x600
    big = cv2.resize(astronaut, None, fx=1.5, fy=1.5, interpolation=cv2.INTER_CUBIC)  # face ~130 px
    one = big[0:480, 120:760]
    cv2.imwrite(str(HERE / "one_face.jpg"), one, [cv2.IMWRITE_JPEG_QUALITY, 88])
    left = cv2.resize(astronaut[0:480, 130:450], (320, 480))
    right = cv2.resize(hopper[40:600, 80:453], (320, 480), interpolation=cv2.INTER_AREA)
    two = np.concatenate([left, right], axis=1)
    cv2.imwrite(str(HERE / "two_faces.jpg"), two, [cv2.IMWRITE_JPEG_QUALITY, 88])
    ref = cv2.resize(hopper[60:460, 70:470], (288, 288), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(ROOT / "models/assets/reference_face.jpg"), ref, [cv2.IMWRITE_JPEG_QUALITY, 92])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
