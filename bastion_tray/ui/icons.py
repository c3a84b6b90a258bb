"""The tray icon images: PNGs drawn by resources/make_icons.py, shipped as package data."""

from __future__ import annotations

import functools
import io
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from bastion_tray.ui.model import IconState

if TYPE_CHECKING:
    from PIL.Image import Image

PACKAGE, FOLDER = "bastion_tray", "resources"
SIZES = (16, 22, 32, 48, 64)
TEMPLATE_SIZES = (22, 44)
#: a state whose icon resources/make_icons.py does not draw yet shows another's meanwhile
STAND_INS = {IconState.LINK_DOWN: IconState.STARTING}


def default_size(platform: str = sys.platform) -> int:
    """What to hand the backend: it scales to the panel, and scaling a drawn 32 px down to
    22 or 16 keeps the strokes; macOS gets its template at 2x for Retina menu bars."""
    return 44 if platform == "darwin" else 32


def drawn(state: IconState) -> IconState:
    """`state`, or its stand-in while no icon of its own is packaged."""
    if state in STAND_INS and not (resources.files(PACKAGE) / FOLDER /
                                   f"tray-{state.value}-{SIZES[0]}.png").is_file():
        return STAND_INS[state]
    return state


def file_name(state: IconState, size: int, template: bool = False) -> str:
    state = drawn(state)
    if template:
        return f"tray-{state.value}-template-{size}.png"
    return f"tray-{state.value}-{size}.png"


def icon_bytes(state: IconState, size: int, template: bool = False) -> bytes:
    return (resources.files(PACKAGE) / FOLDER / file_name(state, size, template)).read_bytes()


@functools.lru_cache(maxsize=32)
def load(state: IconState, size: int | None = None, template: bool | None = None) -> Image:
    """The icon for `state`, as a PIL image (macOS: the black + alpha template)."""
    from PIL import Image as PILImage

    template = sys.platform == "darwin" if template is None else template
    sizes = TEMPLATE_SIZES if template else SIZES
    size = size or default_size("darwin" if template else sys.platform)
    nearest = min(sizes, key=lambda s: (abs(s - size), -s))
    image = PILImage.open(io.BytesIO(icon_bytes(state, nearest, template)))
    image.load()
    return image.convert("RGBA")


def icon_file(state: IconState, directory: Path, size: int = 64) -> Path:
    """A PNG file of `state`'s icon, for what wants a path (a desktop notification's icon):
    the packaged file itself when it is on disk, else a copy written into `directory`."""
    packaged = resources.files(PACKAGE) / FOLDER / file_name(state, size)
    if isinstance(packaged, Path) and packaged.is_file():
        return packaged
    copy = directory / file_name(state, size)
    if not copy.exists():
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        copy.write_bytes(packaged.read_bytes())
    return copy
