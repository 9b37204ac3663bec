"""Draw the volunteer app's icons (dispatch/static/volunteer-icon-*.png) with Pillow.

Run once when the design changes (`.venv/bin/python scripts/make-icons.py`); the PNGs are
committed. A white cross on the page's alert red, and a "maskable" variant whose
picture keeps within the central 80 % safe zone (the launcher crops the rest).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

STATIC = Path(__file__).resolve().parent.parent / "dispatch" / "static"
RED = (220, 38, 38, 255)
NAVY = (15, 23, 42, 255)
WHITE = (255, 255, 255, 255)


def draw(size: int, maskable: bool) -> Image.Image:
    scale = 4  # drawn large, then scaled down: smooth edges
    s = size * scale
    img = Image.new("RGBA", (s, s), NAVY if maskable else (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    inset = s * (0.14 if maskable else 0.04)
    d.ellipse((inset, inset, s - inset, s - inset), fill=RED)
    arm, half = s * (0.34 if maskable else 0.42), s * (0.09 if maskable else 0.11)
    c = s / 2
    d.rounded_rectangle((c - half, c - arm, c + half, c + arm), radius=half / 2, fill=WHITE)
    d.rounded_rectangle((c - arm, c - half, c + arm, c + half), radius=half / 2, fill=WHITE)
    return img.resize((size, size), Image.Resampling.LANCZOS)


def main() -> None:
    for size in (192, 512):
        draw(size, False).save(STATIC / f"volunteer-icon-{size}.png", optimize=True)
    draw(512, True).save(STATIC / "volunteer-icon-maskable-512.png", optimize=True)


if __name__ == "__main__":
    main()
