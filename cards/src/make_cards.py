"""Rebuild the shipped character cards: cards/src/*.json (V3 text) + an illustration drawn here -> cards/*.png.

Run from anywhere: ``python cards/src/make_cards.py``. Drawing is seeded, so
the same sources give the same pictures.
"""
from __future__ import annotations

import io
import json
import math
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

SRC = Path(__file__).resolve().parent
ROOT = SRC.parents[1]
sys.path.insert(0, str(ROOT))

from engine.cards import card_from_obj, card_to_png  # noqa: E402  (after the path is set)
from engine.settings import CardLimits  # noqa: E402

W, H = 400, 600
RGB = tuple[int, int, int]


def gradient(top: RGB, bottom: RGB) -> Image.Image:
    mask = Image.linear_gradient("L").resize((W, H))
    return Image.composite(Image.new("RGB", (W, H), bottom), Image.new("RGB", (W, H), top), mask)


def glow(im: Image.Image, center: tuple[int, int], radius: int, color: RGB, strength: float = 0.8) -> None:
    """A soft round light added onto ``im``."""
    mask = Image.radial_gradient("L").resize((radius * 2, radius * 2))
    mask = mask.point(lambda v: int(max(0, 255 - 2 * v) * strength))   # 0 at the radius
    im.paste(Image.new("RGB", mask.size, color), (center[0] - radius, center[1] - radius), mask)


def figure(draw: ImageDraw.ImageDraw, x: int, y: int, skin: RGB, hair: RGB, coat: RGB, hair_style: str) -> None:
    """A simple bust: shoulders, neck, head and hair, centred at x with the chin at y."""
    draw.rounded_rectangle((x - 95, y + 40, x + 95, y + 260), radius=70, fill=coat)
    draw.rectangle((x - 16, y - 10, x + 16, y + 50), fill=skin)
    if hair_style == "braid":
        for i in range(5):
            draw.ellipse((x + 40 + i * 4, y + i * 28 - 10, x + 72 + i * 4, y + i * 28 + 24), fill=hair)
    draw.ellipse((x - 52, y - 120, x + 52, y + 8), fill=skin)
    if hair_style == "bob":
        draw.chord((x - 62, y - 132, x + 62, y - 10), 180, 360, fill=hair)
        draw.rectangle((x - 62, y - 72, x - 40, y - 10), fill=hair)
        draw.rectangle((x + 40, y - 72, x + 62, y - 10), fill=hair)
    elif hair_style == "braid":
        draw.chord((x - 58, y - 130, x + 58, y - 30), 180, 360, fill=hair)
    else:  # wavy
        for dx in range(-60, 61, 20):
            draw.ellipse((x + dx - 22, y - 140, x + dx + 22, y - 84), fill=hair)
        draw.ellipse((x - 70, y - 100, x - 34, y - 30), fill=hair)
        draw.ellipse((x + 34, y - 100, x + 70, y - 30), fill=hair)
    # eyes closed in a smile: two small arcs, and a blush
    for side in (-1, 1):
        draw.arc((x + side * 22 - 10, y - 62, x + side * 22 + 10, y - 48), 200, 340, fill=(60, 40, 40), width=3)
        draw.ellipse((x + side * 30 - 9, y - 40, x + side * 30 + 9, y - 32), fill=(240, 160, 160))
    draw.arc((x - 12, y - 36, x + 12, y - 20), 20, 160, fill=(150, 70, 70), width=3)


def name_plate(im: Image.Image, title: str, subtitle: str, accent: RGB) -> None:
    layer = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    d.rounded_rectangle((24, H - 118, W - 24, H - 24), radius=18, fill=(20, 20, 30, 170), outline=accent + (255,), width=2)
    big, small = ImageFont.load_default(34), ImageFont.load_default(17)
    d.text((W // 2, H - 84), title, font=big, fill=(255, 255, 255, 255), anchor="mm")
    d.text((W // 2, H - 48), subtitle, font=small, fill=accent + (255,), anchor="mm")
    im.paste(layer, (0, 0), layer)


def draw_haneul(rng: random.Random) -> Image.Image:
    im = gradient((18, 22, 58), (70, 48, 92))
    glow(im, (300, 110), 90, (255, 236, 190), 0.5)
    d = ImageDraw.Draw(im)
    d.ellipse((275, 85, 325, 135), fill=(255, 244, 214))
    # hanok roof and a warm window
    d.polygon([(0, 300), (60, 262), (340, 262), (400, 300), (400, 320), (0, 320)], fill=(26, 24, 40))
    d.rectangle((20, 320, 380, 600), fill=(48, 36, 44))
    glow(im, (320, 400), 80, (255, 190, 90), 0.7)
    d.rectangle((280, 350, 360, 450), fill=(255, 204, 120))
    d.line((320, 350, 320, 450), fill=(120, 70, 40), width=4)
    d.line((280, 400, 360, 400), fill=(120, 70, 40), width=4)
    for _ in range(90):     # rain
        x, y = rng.randrange(W), rng.randrange(H)
        d.line((x, y, x - 6, y + 18), fill=(150, 170, 220), width=1)
    figure(d, 160, 360, (244, 214, 190), (24, 20, 28), (40, 56, 110), "bob")
    for side in (-1, 1):   # round glasses
        d.ellipse((160 + side * 22 - 15, 290, 160 + side * 22 + 15, 320), outline=(30, 20, 20), width=3)
    for i, c in enumerate([(200, 80, 70), (80, 130, 90), (220, 180, 90)]):   # a stack of books
        d.rounded_rectangle((96, 470 - i * 22, 224, 490 - i * 22), radius=4, fill=c)
    name_plate(im, "Haneul", "Starlight Books · Jeonju", (255, 214, 140))
    return im


def draw_wren(rng: random.Random) -> Image.Image:
    im = gradient((46, 62, 76), (120, 140, 150))
    d = ImageDraw.Draw(im, "RGBA")
    for _ in range(7):      # clouds
        x, y, r = rng.randrange(-40, W), rng.randrange(0, 200), rng.randrange(40, 90)
        d.ellipse((x - r * 2, y - r, x + r * 2, y + r), fill=(30, 40, 50, 90))
    # lighthouse with beams
    d.polygon([(70, 150), (250, 120), (250, 150)], fill=(255, 240, 170, 90))
    d.polygon([(70, 150), (-60, 110), (-60, 170)], fill=(255, 240, 170, 70))
    glow(im, (70, 150), 60, (255, 240, 180), 0.9)
    d = ImageDraw.Draw(im, "RGBA")
    d.polygon([(45, 180), (95, 180), (110, 470), (30, 470)], fill=(236, 232, 224))
    for y0 in (230, 320, 410):
        d.polygon([(45 - (y0 - 180) * 0.05, y0), (95 + (y0 - 180) * 0.05, y0),
                   (95 + (y0 + 40 - 180) * 0.05, y0 + 40), (45 - (y0 + 40 - 180) * 0.05, y0 + 40)], fill=(190, 50, 50))
    d.rectangle((50, 130, 90, 180), fill=(255, 236, 150))
    d.polygon([(40, 130), (70, 100), (100, 130)], fill=(40, 40, 50))
    # sea
    for row in range(8):
        y = 440 + row * 22
        pts = [(x, y + 6 * math.sin(x / 25 + row)) for x in range(0, W + 10, 10)]
        d.polygon(pts + [(W, H), (0, H)], fill=(30 + row * 4, 70 + row * 5, 90 + row * 5, 255))
    figure(d, 270, 350, (236, 200, 176), (170, 80, 50), (222, 170, 40), "braid")
    d.ellipse((258, 430, 282, 454), fill=(200, 160, 60), outline=(120, 90, 30), width=3)   # barometer
    name_plate(im, "Wren Halloway", "Keeper of the Skerry Light", (250, 220, 120))
    return im


def draw_mina(rng: random.Random) -> Image.Image:
    im = gradient((250, 140, 80), (120, 40, 110))
    d = ImageDraw.Draw(im)
    d.line([(x, 70 + 30 * math.sin(x / 130)) for x in range(0, W + 1, 10)], fill=(60, 30, 40), width=2)
    for i in range(7):      # lanterns on a string
        x = 30 + i * 57
        y = int(70 + 30 * math.sin(x / 130)) + 14
        glow(im, (x, y + 8), 34, (255, 200, 90), 0.6)
        d = ImageDraw.Draw(im)
        d.ellipse((x - 14, y - 10, x + 14, y + 26), fill=(230, 60, 50) if i % 2 else (250, 180, 60))
    for i in range(4):      # striped stall awnings
        x0 = i * 100
        for s in range(5):
            d.rectangle((x0 + s * 20, 300, x0 + s * 20 + 20, 330), fill=(240, 240, 230) if s % 2 else (40, 120, 160))
        d.rectangle((x0 + 4, 330, x0 + 96, 600), fill=(70, 40, 60))
    steam = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    sd = ImageDraw.Draw(steam)
    for i in range(3):
        x = 60 + i * 140
        sd.line([(x + 10 * math.sin(y / 14), y) for y in range(200, 330, 4)], fill=(255, 255, 255, 110), width=6)
    steam = steam.filter(ImageFilter.GaussianBlur(3))
    im.paste(steam, (0, 0), steam)
    d = ImageDraw.Draw(im)
    figure(d, 210, 360, (246, 212, 186), (184, 96, 52), (248, 210, 40), "wavy")
    d.rectangle((250, 440, 268, 458), fill=(40, 40, 40))   # the jacket patch
    name_plate(im, "Mina Seo", "Night Market Guide · Seoul", (255, 226, 120))
    return im


ART = {"haneul": draw_haneul, "wren": draw_wren, "mina": draw_mina}


def main() -> None:
    limits = CardLimits()
    for stem, draw in ART.items():
        card = card_from_obj(json.loads((SRC / f"{stem}.json").read_text("utf-8")), limits)
        buf = io.BytesIO()
        draw(random.Random(stem)).save(buf, format="PNG", optimize=True)
        out = ROOT / "cards" / f"{stem}.png"
        out.write_bytes(card_to_png(card, buf.getvalue(), limits))
        print(f"{out.relative_to(ROOT)}: {card.name} ({out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
