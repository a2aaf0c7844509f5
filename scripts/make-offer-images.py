#!/usr/bin/env python3
"""Draws the shop's own offer pictures (data/images/offers/offer1.png, offer2.png) from the
shop's product pictures, so an offer shows only what the shop sells. Needs Pillow:
    python3 -m venv /tmp/pil && /tmp/pil/bin/pip install pillow && /tmp/pil/bin/python scripts/make-offer-images.py
"""
from pathlib import Path
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
PRODUCTS = ROOT / "data" / "images" / "products"
OUT = ROOT / "data" / "images" / "offers"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
FONT_REGULAR = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"

# offer: (background, accent, the two products it features, the line under the badge)
OFFERS = {
    "offer1": ((38, 52, 74), (242, 196, 90), ["VD55129406", "VD55178699"], "jackets & loafers"),
    "offer2": ((122, 38, 58), (255, 214, 222), ["VD55178549", "VD55178312"], "dresses & heels"),
}


def draw(name, background, accent, products, line):
    size = 400
    img = Image.new("RGB", (size, size), background)
    tile = 180
    for i, pid in enumerate(products):
        pic = Image.open(PRODUCTS / f"{pid}.png").convert("RGB")
        pic.thumbnail((tile, tile))
        frame = Image.new("RGB", (tile + 8, tile + 8), (255, 255, 255))
        frame.paste(pic, (4 + (tile - pic.width) // 2, 4 + (tile - pic.height) // 2))
        img.paste(frame, (14 + i * (tile + 14), 196))
    d = ImageDraw.Draw(img)
    d.text((size // 2, 70), "30% off", font=ImageFont.truetype(FONT, 64), fill=accent, anchor="mm")
    d.text((size // 2, 128), line, font=ImageFont.truetype(FONT_REGULAR, 26), fill=(255, 255, 255), anchor="mm")
    d.text((size // 2, 164), "this week only", font=ImageFont.truetype(FONT_REGULAR, 18), fill=accent, anchor="mm")
    img.save(OUT / f"{name}.png", optimize=True)


for name, (bg, accent, products, line) in OFFERS.items():
    draw(name, bg, accent, products, line)
