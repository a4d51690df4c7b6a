"""Photos with EXIF metadata written by PIL (date taken, camera, GPS, orientation), for the
index's metadata, filter and sort tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

EXIF_IFD, GPS_IFD = 0x8769, 0x8825
MAKE, MODEL, ORIENTATION, DATETIME = 0x010F, 0x0110, 0x0112, 0x0132
DATETIME_ORIGINAL, OFFSET_TIME_ORIGINAL = 0x9003, 0x9011


def dms(degrees: float) -> tuple[float, float, float]:
    d = int(degrees)
    m = int((degrees - d) * 60)
    return (float(d), float(m), round((degrees - d - m / 60) * 3600, 4))


def exif_photo(
    path: Path,
    colour: tuple[int, int, int],
    *,
    taken: str | None = None,
    modified: str | None = None,
    offset: str | None = None,
    make: str | None = None,
    model: str | None = None,
    gps: tuple[float, float] | None = None,
    orientation: int | None = None,
    size: tuple[int, int] = (48, 32),
    seed: int = 0,
) -> Path:
    """A JPEG of `size` (width, height) in `colour`, with the given EXIF fields. Dates are
    ISO (`2022-07-14T18:03:22`) and written in EXIF's `YYYY:MM:DD HH:MM:SS`."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 40, (size[1], size[0], 3)) + np.array(colour) * 0.8
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    exif = Image.Exif()

    def exif_date(iso: str) -> str:
        return iso.replace("-", ":").replace("T", " ")

    if make:
        exif[MAKE] = make
    if model:
        exif[MODEL] = model
    if modified:
        exif[DATETIME] = exif_date(modified)
    if orientation:
        exif[ORIENTATION] = orientation
    if taken or offset:
        ifd = exif.get_ifd(EXIF_IFD)
        if taken:
            ifd[DATETIME_ORIGINAL] = exif_date(taken)
        if offset:
            ifd[OFFSET_TIME_ORIGINAL] = offset
    if gps:
        lat, lon = gps
        ifd = exif.get_ifd(GPS_IFD)
        ifd[1] = "N" if lat >= 0 else "S"
        ifd[2] = dms(abs(lat))
        ifd[3] = "E" if lon >= 0 else "W"
        ifd[4] = dms(abs(lon))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, exif=exif.tobytes(), quality=90)
    return path
