"""Source styles of the demo: the house look of a manuscript, a print album, a photo archive.

Real holdings come in sources, and within a source every page shares a template: the
script, ruling and margins of a manuscript, the plate mark, caption and ornament border
of an album of prints, the grey card, colour bar and typed label of a museum's photo
archive. That template dominates global appearance, and its repetitive texture (script,
ruling, ornament) matches from page to page far better than a copied detail redrawn by
another hand. A demo without it cannot show the failure that matters most: discovery
that links pages by their layout instead of by the copies.

Each style draws a page around a *picture frame*; the demo's usual picture (scenery,
motifs, distractors, medium) is rendered at the frame's size and pasted in. Everything
drawn here is template, never ground truth: its boxes are returned so that evaluation
can count links that land on template text.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in page pixels, x1/y1 exclusive


@dataclass(frozen=True)
class SourceStyle:
    """One source's house look.

    Attributes:
        name: key of the style (``"manuscript"``...).
        collection: the ``collection`` metadata of its images.
        media: media its pictures are drawn in.
        page: (width, height) of its pages; ``None`` for the plain picture (museum photos).
        paper: page tone, RGB in [0, 1].
        ink: script colour.
        glyph: (width, height) of a script glyph in pixels; script lines are 1.5 glyphs apart.
        artists: invented hands of the source (the demo's artists otherwise).
    """

    name: str
    collection: str
    media: tuple[str, ...]
    page: tuple[int, int] | None
    paper: tuple[float, float, float] = (0.9, 0.88, 0.82)
    ink: tuple[float, float, float] = (0.2, 0.15, 0.1)
    glyph: tuple[int, int] = (8, 12)
    artists: tuple[str, ...] = ()


# The first style is the demo's original look, so ``--sources 1`` is the single-source demo.
STYLES: tuple[SourceStyle, ...] = (
    SourceStyle("museum", "Musée des Beaux-Arts de Valcourt", (), None),
    SourceStyle("manuscript", "Bibliothèque de Valcourt, MS 12 (illuminated chronicle)",
                ("pen_and_ink", "wash"), (420, 600), paper=(0.87, 0.78, 0.6), ink=(0.25, 0.14, 0.08),
                glyph=(7, 13), artists=("Master of the Valcourt Chronicle",)),
    SourceStyle("print_album", "Stadtmuseum Eberfeld, album of prints (Klebeband 4)",
                ("engraving", "woodcut"), (560, 480), paper=(0.93, 0.91, 0.86), ink=(0.12, 0.12, 0.12),
                glyph=(6, 10), artists=("Lucas Emmerik", "Giacomo Ferrandi")),
    SourceStyle("photo_archive", "Collectie Van Roon, Leiden (photo archive)",
                ("oil", "pastel"), (600, 470), paper=(0.55, 0.55, 0.53), ink=(0.08, 0.08, 0.1),
                glyph=(6, 9), artists=()),
    SourceStyle("second_manuscript", "Galleria Ordelaffi, Forlì, Cod. 7 (copy of the chronicle)",
                ("wash", "pen_and_ink"), (440, 620), paper=(0.82, 0.76, 0.64), ink=(0.3, 0.12, 0.1),
                glyph=(8, 14), artists=("Workshop of the Forlì Codex",)),
)


def style(name: str) -> SourceStyle:
    for s in STYLES:
        if s.name == name:
            return s
    raise ValueError(f"unknown source style {name!r}; choose from {[s.name for s in STYLES]}")


@dataclass(frozen=True)
class PageLayout:
    """Where the picture goes on a page: ``frame`` box (page pixels) and the page size."""

    page_size: tuple[int, int]  # (width, height)
    frame: Box

    @property
    def frame_size(self) -> tuple[int, int]:
        return (self.frame[2] - self.frame[0], self.frame[3] - self.frame[1])


def plan_layout(rng: np.random.Generator, source: SourceStyle) -> PageLayout:
    """Pick the picture frame on one of the source's pages (its size varies page to page)."""
    w, h = source.page
    if source.name.endswith("manuscript"):  # a framed miniature inside the text column
        fw = int(rng.uniform(0.85, 1.0) * (w - 90))
        fh = int(rng.uniform(0.38, 0.5) * h)
        x0 = 45 + int(rng.integers(0, w - 90 - fw + 1))
        y0 = int(rng.choice([70, (h - fh) // 2, h - 80 - fh]))
    elif source.name == "print_album":  # a print pasted in the middle, caption below
        fw, fh = int(rng.uniform(0.62, 0.72) * w), int(rng.uniform(0.6, 0.68) * h)
        x0, y0 = (w - fw) // 2 + int(rng.integers(-15, 16)), 50 + int(rng.integers(0, 16))
    else:  # photo on a card: the colour bar below, the label to the right
        fw, fh = int(rng.uniform(0.58, 0.7) * w), int(rng.uniform(0.62, 0.72) * h)
        x0, y0 = 30 + int(rng.integers(0, 15)), 30 + int(rng.integers(0, 15))
    return PageLayout((w, h), (x0, y0, x0 + fw, y0 + fh))


# ------------------------------------------------------------------------ script


@functools.cache
def _glyphs(source: str, size: tuple[int, int], n: int = 26) -> tuple[np.ndarray, ...]:
    """A source's alphabet: ``n`` ink masks (h, w) float32 of pen strokes, fixed per source.

    Minims (short vertical strokes), bows, ascenders and descenders, as medieval book
    hands and early type are made of; drawn at 4x and reduced for soft edges.
    """
    rng = np.random.default_rng(zlib.crc32(source.encode()))  # unlike hash(), stable across processes
    gw, gh = size
    s = 4
    out = []
    for _ in range(n):
        img = Image.new("L", (gw * s, gh * s), 0)
        draw = ImageDraw.Draw(img)
        x_mid, top, bottom = 0.45 * gw * s, 0.3 * gh * s, 0.78 * gh * s
        for _ in range(int(rng.integers(1, 4))):
            kind = rng.integers(4)
            x = x_mid + rng.uniform(-0.3, 0.3) * gw * s
            if kind == 0:  # minim
                draw.line((x, top, x + rng.uniform(-2, 2) * s, bottom), fill=255, width=s + 1)
            elif kind == 1:  # bow
                r = rng.uniform(0.2, 0.35) * gw * s
                draw.arc((x - r, top, x + r, bottom), rng.uniform(0, 180), rng.uniform(200, 360), fill=255, width=s + 1)
            elif kind == 2:  # ascender or descender
                y_end = 0.05 * gh * s if rng.random() < 0.6 else 0.98 * gh * s
                draw.line((x, y_end, x, bottom if y_end < top else top), fill=255, width=s + 1)
            else:  # hairline or cross-stroke
                draw.line((x - 0.3 * gw * s, top + rng.uniform(0, 1) * (bottom - top), x + 0.3 * gw * s,
                           top + rng.uniform(0, 1) * (bottom - top)), fill=255, width=max(1, s // 2))
        small = img.resize((gw, gh), Image.Resampling.BOX)
        out.append(np.asarray(small, np.float32) / 255.0)
    return tuple(out)


def script_block(rng: np.random.Generator, source: SourceStyle, size: tuple[int, int]) -> np.ndarray:
    """Ink mask (h, w) of lines of pseudo-script filling ``size`` = (w, h), words and spaces."""
    w, h = size
    glyphs = _glyphs(source.name, source.glyph)
    gw, gh = source.glyph
    line_step = int(round(1.5 * gh))
    ink = np.zeros((h, w), np.float32)
    for y in range(0, h - gh + 1, line_step):
        x = int(rng.integers(0, 2 * gw))
        while x + gw <= w:
            word = rng.integers(len(glyphs), size=int(rng.integers(2, 9)))
            for g in word:
                if x + gw > w:
                    break
                ink[y : y + gh, x : x + gw] = np.maximum(ink[y : y + gh, x : x + gw], glyphs[g])
                x += gw
            x += gw  # the space between words
    return ink


# ------------------------------------------------------------------------ pages


def _paper(rng: np.random.Generator, source: SourceStyle, size: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) page tone with fibres and stains."""
    w, h = size
    tone = np.asarray(source.paper, np.float32) + rng.normal(0, 0.015, 3).astype(np.float32)
    grain = rng.normal(0, 0.025, (h, w, 1)).astype(np.float32)
    coarse = np.asarray(Image.fromarray(rng.random((8, 8), dtype=np.float32), mode="F").resize(
        (w, h), Image.Resampling.BICUBIC), np.float32)[..., None]
    return np.clip(tone * (0.93 + 0.1 * coarse) + grain, 0, 1)


def _ink(page: np.ndarray, mask: np.ndarray, at: tuple[int, int], colour) -> None:
    """Lay ``mask`` (h, w) of ink of ``colour`` on ``page`` at (x, y), in place."""
    x, y = at
    h, w = mask.shape
    region = page[y : y + h, x : x + w]
    m = mask[: region.shape[0], : region.shape[1], None]
    region[:] = region * (1 - m) + np.asarray(colour, np.float32) * m


def _rect_mask(size: tuple[int, int], box: Box, width: int) -> np.ndarray:
    layer = Image.new("L", size, 0)
    ImageDraw.Draw(layer).rectangle(box, outline=255, width=width)
    return np.asarray(layer, np.float32) / 255.0


def _folio(rng: np.random.Generator, page: np.ndarray, at: tuple[int, int], colour, text: str) -> Box:
    """A folio or inventory number, drawn with PIL's built-in bitmap font."""
    layer = Image.new("L", (page.shape[1], page.shape[0]), 0)
    draw = ImageDraw.Draw(layer)
    draw.text(at, text, fill=255)
    box = draw.textbbox(at, text)
    _ink(page, np.asarray(layer, np.float32) / 255.0, (0, 0), colour)
    return box


def _text_around(rng: np.random.Generator, page: np.ndarray, source: SourceStyle, column: Box,
                 frame: Box) -> list[Box]:
    """Script in ``column`` above and below the frame (ruled first, as scribes did)."""
    x0, y0, x1, y1 = column
    blocks = []
    for top, bottom in ((y0, frame[1] - 12), (frame[3] + 12, y1)):
        if bottom - top < 2 * source.glyph[1]:
            continue
        step = int(round(1.5 * source.glyph[1]))
        for y in range(top + source.glyph[1], bottom, step):  # faint dry-point ruling
            page[y, x0:x1] = page[y, x0:x1] * 0.93
        ink = script_block(rng, source, (x1 - x0, bottom - top))
        _ink(page, ink, (x0, top), source.ink)
        blocks.append((x0, top, x1, bottom))
    return blocks


def draw_page(rng: np.random.Generator, source: SourceStyle, layout: PageLayout, picture: np.ndarray,
              index: int) -> tuple[np.ndarray, list[tuple[str, Box]]]:
    """The page of ``source`` with ``picture`` (h, w, 3 float) in its frame.

    Returns:
        (H, W, 3) float32 page and its template regions ``(kind, box)``: ``script`` for
        text blocks, captions and labels, ``ornament`` for borders and colour bars.
    """
    page = _paper(rng, source, layout.page_size)
    w, h = layout.page_size
    fx0, fy0, fx1, fy1 = layout.frame
    page[fy0:fy1, fx0:fx1] = picture
    template: list[tuple[str, Box]] = []
    if source.name.endswith("manuscript"):
        frame_ink = _rect_mask(layout.page_size, (fx0 - 6, fy0 - 6, fx1 + 5, fy1 + 5), 3)
        frame_ink += _rect_mask(layout.page_size, (fx0 - 11, fy0 - 11, fx1 + 10, fy1 + 10), 1)
        _ink(page, np.clip(frame_ink, 0, 1), (0, 0), (0.55, 0.12, 0.08))
        template += [("script", b) for b in _text_around(rng, page, source, (45, 60, w - 45, h - 60),
                                                          (fx0 - 11, fy0 - 11, fx1 + 10, fy1 + 10))]
        folio = f"{index // 2 + 1}{'r' if index % 2 == 0 else 'v'}"
        template.append(("script", _folio(rng, page, (w - 40, 25), source.ink, folio)))
    elif source.name == "print_album":
        plate = _rect_mask(layout.page_size, (fx0 - 8, fy0 - 8, fx1 + 7, fy1 + 7), 2)
        _ink(page, plate * 0.5, (0, 0), (0.3, 0.28, 0.25))
        caption = (fx0, fy1 + 16, fx1, min(h - 30, fy1 + 16 + 3 * int(1.5 * source.glyph[1])))
        _ink(page, script_block(rng, source, (caption[2] - caption[0], caption[3] - caption[1])),
             caption[:2], source.ink)
        template.append(("script", caption))
        template += [("ornament", b) for b in _ornament_border(page, source)]
        template.append(("script", _folio(rng, page, (w - 70, h - 22), source.ink, f"Inv. {1200 + index}")))
    else:
        template.append(("ornament", _colour_bar(page, (30, h - 62, 30 + int(0.62 * w), h - 22))))
        label = (fx1 + 20, fy0 + 10, w - 20, fy0 + 10 + 8 * int(1.5 * source.glyph[1]))
        if label[2] - label[0] > 3 * source.glyph[0]:
            page[label[1] - 4 : label[3] + 4, label[0] - 4 : label[2] + 4] = (0.93, 0.92, 0.88)
            _ink(page, script_block(rng, source, (label[2] - label[0], label[3] - label[1])),
                 label[:2], source.ink)
            template.append(("script", label))
    page = np.asarray(Image.fromarray((np.clip(page, 0, 1) * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(0.4)), np.float32) / 255.0
    return page, template


def _ornament_border(page: np.ndarray, source: SourceStyle, band: int = 18) -> list[Box]:
    """A band of a repeated printed ornament (a running vine) around the page edge."""
    h, w = page.shape[:2]
    tile = Image.new("L", (band, band), 0)
    draw = ImageDraw.Draw(tile)
    draw.arc((2, 2, band - 2, band - 2), 30, 300, fill=255, width=2)
    draw.line((0, band // 2, band, band // 2), fill=180, width=1)
    draw.ellipse((band // 2 - 2, 3, band // 2 + 2, 7), fill=255)
    t = np.asarray(tile, np.float32) / 255.0
    row = np.tile(t, (1, w // band + 1))[:, :w]
    col = np.tile(t.T, (h // band + 1, 1))[:h]
    mask = np.zeros((h, w), np.float32)
    mask[4 : 4 + band] = row
    mask[h - 4 - band : h - 4] = row
    mask[:, 4 : 4 + band] = np.maximum(mask[:, 4 : 4 + band], col)
    mask[:, w - 4 - band : w - 4] = np.maximum(mask[:, w - 4 - band : w - 4], col)
    _ink(page, mask, (0, 0), source.ink)
    return [(0, 0, w, 4 + band), (0, h - 4 - band, w, h), (0, 0, 4 + band, h), (w - 4 - band, 0, w, h)]


# A colour checker's patches (approximate sRGB), then a grey scale: the same on every card.
_PATCHES = np.array([(0.45, 0.32, 0.26), (0.76, 0.58, 0.5), (0.36, 0.48, 0.61), (0.35, 0.42, 0.26),
                     (0.5, 0.5, 0.69), (0.39, 0.74, 0.66), (0.85, 0.47, 0.18), (0.29, 0.36, 0.65),
                     (0.76, 0.33, 0.38), (0.36, 0.24, 0.42), (0.62, 0.74, 0.25), (0.88, 0.63, 0.18),
                     *[(g, g, g) for g in np.linspace(0.95, 0.05, 8)]], np.float32)


def _colour_bar(page: np.ndarray, box: Box) -> Box:
    x0, y0, x1, y1 = box
    edges = np.linspace(x0, x1, len(_PATCHES) + 1).astype(int)
    for colour, a, b in zip(_PATCHES, edges[:-1], edges[1:]):
        page[y0:y1, a:b] = colour
    return box
