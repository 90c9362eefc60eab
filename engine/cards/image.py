"""Card images through Pillow: check an avatar (size before decoding), turn it into a PNG, or draw a plain one."""
from __future__ import annotations

import colorsys
import io
import warnings

from PIL import Image, ImageDraw

from engine.cards.errors import CardError
from engine.cards.png import is_png, read_png
from engine.settings import CardLimits

ACCEPTED = ("PNG", "JPEG", "WEBP", "GIF")


def to_png(image: bytes, limits: CardLimits) -> bytes:
    """A checked PNG of ``image`` (PNG, JPEG, WebP or GIF) with any old card chunks removed.

    A PNG keeps its own bytes (only card chunks go); other formats are
    re-encoded. The pixel count is checked from the header, before decoding.
    """
    if len(image) > limits.max_file_bytes:
        raise CardError("too_large", f"the image is {len(image)} bytes, more than the limit of {limits.max_file_bytes}")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit is checked below; Pillow's global bomb limit stays as it is.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(image), formats=ACCEPTED) as im:
                w, h = im.size
                if w * h > limits.max_image_pixels:
                    raise CardError("image_too_large", f"the image is {w}x{h} pixels, more than the limit of "
                                    f"{limits.max_image_pixels} pixels")
                im.load()
                if im.format == "PNG" and is_png(image):
                    return read_png(image, limits).image
                if im.mode not in ("RGB", "RGBA", "L", "LA", "P"):
                    im = im.convert("RGBA")
                out = io.BytesIO()
                im.save(out, format="PNG", optimize=True)
                return out.getvalue()
    except CardError:
        raise
    except Image.DecompressionBombError as e:
        raise CardError("image_too_large", f"the image is too large ({e})") from None
    except Exception as e:      # Pillow raises many types (OSError, SyntaxError, ValueError...) for bad files
        raise CardError("bad_image", f"the image cannot be read ({type(e).__name__}: {e})"[:300]) from None


def placeholder(name: str, size: tuple[int, int] = (256, 256)) -> bytes:
    """A plain avatar for a card that came without one: a colour from the name and its initial."""
    hue = sum(name.encode("utf-8")) % 360
    im = Image.new("RGB", size, _hsv(hue, 0.35, 0.85))
    draw = ImageDraw.Draw(im)
    w, h = size
    draw.ellipse((w * 0.3, h * 0.18, w * 0.7, h * 0.58), fill=_hsv(hue, 0.45, 0.55))
    draw.ellipse((w * 0.15, h * 0.62, w * 0.85, h * 1.3), fill=_hsv(hue, 0.45, 0.55))
    out = io.BytesIO()
    im.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _hsv(hue: int, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue / 360, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def describe(image: bytes | None) -> dict | None:
    """A short summary of an image for showing instead of its bytes."""
    if image is None:
        return None
    try:
        with Image.open(io.BytesIO(image)) as im:
            return {"format": im.format, "width": im.size[0], "height": im.size[1], "bytes": len(image)}
    except Exception:
        return {"format": None, "bytes": len(image)}
