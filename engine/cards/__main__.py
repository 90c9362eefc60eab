"""Command line: ``python -m engine.cards inspect FILE`` and ``python -m engine.cards write --json F --image F --out F.png``."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from engine.cards.errors import CardError
from engine.cards.files import card_to_png, load_card_file
from engine.cards.image import describe
from engine.cards.parse import card_to_dict
from engine.settings import CardLimits

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.cards", description="Read and write character cards (V1/V2/V3).")
    sub = p.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="print a card (PNG or JSON) as normalized JSON")
    inspect.add_argument("file", type=Path)
    write = sub.add_parser("write", help="make a PNG card (V3 in ccv3, V2 in chara) from a card file and an image")
    write.add_argument("--json", dest="json_file", type=Path, required=True, help="card JSON (V1/V2/V3) or a PNG card")
    write.add_argument("--image", type=Path, help="PNG/JPEG/WebP/GIF avatar (default: the card's own, else a plain one)")
    write.add_argument("--out", type=Path, required=True)
    for sp in (inspect, write):
        sp.add_argument("--max-file-bytes", type=int, default=CardLimits().max_file_bytes)
        sp.add_argument("--max-field-chars", type=int, default=CardLimits().max_field_chars)
        sp.add_argument("--max-image-pixels", type=int, default=CardLimits().max_image_pixels)
    return p


def _inspect(args: argparse.Namespace, limits: CardLimits) -> None:
    card = load_card_file(args.file, limits)
    shown = card_to_dict(card)
    shown["image"] = describe(card.image)
    json.dump(shown, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")


def _write(args: argparse.Namespace, limits: CardLimits) -> None:
    card = load_card_file(args.json_file, limits)
    image = None
    if args.image is not None:
        try:
            image = args.image.read_bytes()
        except OSError as e:
            raise CardError("io_error", f"cannot read the image ({e.strerror or e})", file=str(args.image)) from None
    data = card_to_png(card, image, limits)
    try:
        args.out.write_bytes(data)
    except OSError as e:
        raise CardError("io_error", f"cannot write ({e.strerror or e})", file=str(args.out)) from None
    print(f"wrote {args.out} ({len(data)} bytes): {card.name!r}, chunks ccv3 (V3) and chara (V2)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        limits = CardLimits(max_file_bytes=args.max_file_bytes, max_field_chars=args.max_field_chars,
                            max_image_pixels=args.max_image_pixels)
        (_inspect if args.command == "inspect" else _write)(args, limits)
    except CardError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:     # e.g. piped into head: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:      # a bug must still be one line, never a traceback on a user's terminal
        print(f"error: internal: {type(e).__name__}: {e}"[:500], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
