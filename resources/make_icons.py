"""Draw the tray icons with Pillow: one per state, at each size, plus macOS templates and ICOs.

    .venv/bin/python resources/make_icons.py          # writes bastion_tray/resources/tray-*
    .venv/bin/python resources/make_icons.py --check  # fails when the committed files are stale

Every icon is a disc whose colour *and* glyph say the state, so it reads without colour too
(the macOS templates are black + alpha and keep only the shape). A dark border and a light
halo keep the disc visible on light and dark panels alike. Each size is drawn on its own
canvas (8× supersampled, then reduced), so 16 px gets strokes of whole pixels rather than a
blurred 64 px icon.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bastion_tray" / "resources"
PREVIEW = ROOT / "resources" / "icons-preview.png"

SIZES = (16, 22, 32, 48, 64)  # colour PNGs: panels use 16-32, HiDPI and ICO the larger ones
TEMPLATE_SIZES = (22, 44)  # macOS menu bar: 22 pt at 1× and 2×
ICO_SIZES = (16, 24, 32, 48, 64)
SUPER = 8

# state → fill colour; the names are bastion_tray.ui.model.IconState values
COLOURS = {
    "stopped": (128, 134, 139),
    "starting": (242, 153, 0),
    "ready": (30, 142, 62),
    "connected": (26, 115, 232),
    "error": (217, 48, 37),
    "offline": (95, 99, 104),
}
OUTLINED = {"stopped", "offline"}  # inactive states: a ring, not a disc, in the templates
BORDER = (32, 33, 36, 255)
HALO = (255, 255, 255, 230)
WHITE = (255, 255, 255, 255)
BLACK = (0, 0, 0, 255)
CLEAR = (0, 0, 0, 0)

Glyph = Callable[[ImageDraw.ImageDraw, float, float, float, tuple[int, int, int, int]], None]


def _stroke(r: float) -> float:
    return max(r * 0.30, 1.0)


def glyph_stopped(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float,
                  ink: tuple[int, int, int, int]) -> None:
    s = r * 0.42  # a "stop" square
    d.rectangle((cx - s, cy - s, cx + s, cy + s), fill=ink)


def glyph_starting(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float,
                   ink: tuple[int, int, int, int]) -> None:
    a = r * 0.55  # three quarters of a ring: a spinner
    w = _stroke(r) * 0.9
    d.arc((cx - a, cy - a, cx + a, cy + a), start=-60, end=210, fill=ink, width=round(w))
    tip = math.radians(-60)  # an arrow head at the open end, pointing on round the circle
    x, y = cx + a * math.cos(tip), cy + a * math.sin(tip)
    h = w * 1.35
    d.polygon([(x - h, y - h * 0.2), (x + h, y - h * 0.2), (x + h * 0.1, y + h * 1.1)],
              fill=ink)


def glyph_ready(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float,
                ink: tuple[int, int, int, int]) -> None:
    w = _stroke(r)
    pts = [(cx - r * 0.50, cy + r * 0.02), (cx - r * 0.12, cy + r * 0.40),
           (cx + r * 0.52, cy - r * 0.38)]
    d.line(pts, fill=ink, width=round(w), joint="curve")


def glyph_connected(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float,
                    ink: tuple[int, int, int, int]) -> None:
    w = _stroke(r) * 0.8  # ⇄: traffic both ways through the tunnel
    gap, span, head = r * 0.26, r * 0.56, r * 0.34
    y1, y2 = cy - gap, cy + gap
    d.line([(cx - span, y1), (cx + span - head * 0.5, y1)], fill=ink, width=round(w))
    d.polygon([(cx + span + w * 0.3, y1), (cx + span - head, y1 - head * 0.75),
               (cx + span - head, y1 + head * 0.75)], fill=ink)
    d.line([(cx - span + head * 0.5, y2), (cx + span, y2)], fill=ink, width=round(w))
    d.polygon([(cx - span - w * 0.3, y2), (cx - span + head, y2 - head * 0.75),
               (cx - span + head, y2 + head * 0.75)], fill=ink)


def glyph_error(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float,
                ink: tuple[int, int, int, int]) -> None:
    w = _stroke(r) * 1.05  # "!"
    d.rectangle((cx - w / 2, cy - r * 0.58, cx + w / 2, cy + r * 0.12), fill=ink)
    d.rectangle((cx - w / 2, cy + r * 0.32, cx + w / 2, cy + r * 0.32 + w), fill=ink)


def glyph_offline(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float,
                  ink: tuple[int, int, int, int]) -> None:
    dot = _stroke(r) * 0.62  # "…": waiting for the daemon
    for dx in (-r * 0.48, 0.0, r * 0.48):
        d.ellipse((cx + dx - dot, cy - dot, cx + dx + dot, cy + dot), fill=ink)


GLYPHS: dict[str, Glyph] = {
    "stopped": glyph_stopped, "starting": glyph_starting, "ready": glyph_ready,
    "connected": glyph_connected, "error": glyph_error, "offline": glyph_offline,
}


def _canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw, float, float]:
    big = size * SUPER
    image = Image.new("RGBA", (big, big), CLEAR)
    return image, ImageDraw.Draw(image), big / 2, big / 2 - SUPER * 0.25


def _reduce(image: Image.Image, size: int) -> Image.Image:
    return image.resize((size, size), Image.Resampling.LANCZOS)


def _px(size: int, at16: float) -> float:
    """A stroke of `at16` pixels at 16 px, growing with the size, in supersampled units."""
    return max(at16 * size / 16, at16) * SUPER


def colour_icon(state: str, size: int) -> Image.Image:
    image, d, c, r = _canvas(size)
    halo, border = _px(size, 0.9), _px(size, 1.1)
    d.ellipse((c - r, c - r, c + r, c + r), fill=HALO)
    r -= halo
    d.ellipse((c - r, c - r, c + r, c + r), fill=BORDER)
    r -= border
    d.ellipse((c - r, c - r, c + r, c + r), fill=(*COLOURS[state], 255))
    GLYPHS[state](d, c, c, r, WHITE)
    return _reduce(image, size)


def template_icon(state: str, size: int) -> Image.Image:
    """Black + alpha: macOS tints it for the menu bar; the shape alone carries the state."""
    image, d, c, r = _canvas(size)
    if state in OUTLINED:
        ring = _px(size, 1.6)
        d.ellipse((c - r, c - r, c + r, c + r), fill=BLACK)
        d.ellipse((c - r + ring, c - r + ring, c + r - ring, c + r - ring), fill=CLEAR)
        GLYPHS[state](d, c, c, r - ring, BLACK)
    else:
        d.ellipse((c - r, c - r, c + r, c + r), fill=BLACK)
        GLYPHS[state](d, c, c, r, CLEAR)  # punched out
    return _reduce(image, size)


def render() -> dict[str, bytes]:
    """Every committed file, by name, as PNG/ICO bytes."""
    files: dict[str, bytes] = {}
    for state in COLOURS:
        for size in SIZES:
            files[f"tray-{state}-{size}.png"] = _png(colour_icon(state, size))
        for size in TEMPLATE_SIZES:
            files[f"tray-{state}-template-{size}.png"] = _png(template_icon(state, size))
        frames = [colour_icon(state, size) for size in ICO_SIZES]
        out = io.BytesIO()
        frames[-1].save(out, format="ICO", sizes=[(s, s) for s in ICO_SIZES],
                        append_images=frames[:-1])
        files[f"tray-{state}.ico"] = out.getvalue()
    return files


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def preview() -> Image.Image:
    """Every state at 16, 22 and 32 px on a light and a dark panel, and the templates."""
    backgrounds = [(240, 240, 240), (46, 52, 64), (255, 255, 255), (0, 0, 0)]
    sizes = (16, 22, 32)
    cell, rows = 40, len(sizes) * len(backgrounds)
    sheet = Image.new("RGB", (cell * len(COLOURS), cell * (rows + 2)), (128, 128, 128))
    for row, (bg, size) in enumerate((bg, s) for bg in backgrounds for s in sizes):
        for col, state in enumerate(COLOURS):
            tile = Image.new("RGB", (cell, cell), bg)
            icon = colour_icon(state, size)
            tile.paste(icon, ((cell - size) // 2, (cell - size) // 2), icon)
            sheet.paste(tile, (col * cell, row * cell))
    for i, bg in enumerate([(236, 236, 236), (30, 30, 30)]):
        for col, state in enumerate(COLOURS):
            tile = Image.new("RGB", (cell, cell), bg)
            mask = template_icon(state, 22)
            ink = Image.new("RGBA", mask.size, (0, 0, 0, 255) if i == 0 else (255, 255, 255, 255))
            tile.paste(ink, (9, 9), mask)
            sheet.paste(tile, (col * cell, (rows + i) * cell))
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a committed icon differs from what this script draws")
    args = parser.parse_args(argv)
    files = render()
    if args.check:
        stale = [name for name, data in files.items()
                 if not (OUT / name).exists() or (OUT / name).read_bytes() != data]
        for name in stale:
            print(f"stale or missing: {OUT / name}", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (OUT / name).write_bytes(data)
    preview().save(PREVIEW)
    print(f"wrote {len(files)} files to {OUT} and {PREVIEW}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
