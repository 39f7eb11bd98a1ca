"""A synthetic "art collection" with ground truth, built from scikit-image's sample photos.

ArtMiner is scored on the Brueghel collection, which users must obtain themselves. The
demo stands in for it with a deterministic, fast generator: a few characteristic
details (a cat's face, an espresso cup, a horse, a rocket, ...) cut from the photos
that ship inside scikit-image are pasted, deformed, flipped and partly hidden into
procedural scenery, and every composed image is re-drawn in one "medium" (pen and ink,
engraving, oil, pastel, grey wash, woodcut). Similar-looking details that are *not*
copies (other coins, a helmet, a tripod) are pasted as distractors and left out of the
ground truth. Strong media are the point: ImageNet features should find the copies
only part of the time, so that fine-tuning on the collection has room to show a gain.

Outputs under ``out_dir`` (see :func:`build_demo`): ``images/``, ``ground_truth.json``
in ArtMiner's ``brueghelTest.json`` format, ``ground_truth_via.json`` (VGG Image
Annotator 2) and ``metadata.csv``. The same seed gives byte-identical files.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from hitl.demo_sources import STYLES, PageLayout, draw_page, plan_layout
from hitl.formats.csv_safe import safe_writer

# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DemoConfig:
    """Knobs of the generator; the defaults aim at a mediocre ImageNet one-shot mAP.

    Raise ``medium_strength`` or the deformation ranges to make the demo harder, lower
    them to make it easier. Spans are the motif's longer side over the image's.
    """

    image_size: tuple[int, int] = (480, 360)  # (long, short) side of every image, px
    copies_per_motif: tuple[int, int] = (4, 8)  # inclusive range of instances per class
    base_span: tuple[float, float] = (0.28, 0.45)  # per class: motif size / image long side
    scale_jitter: tuple[float, float] = (0.8, 1.25)  # per copy, times the class's base size
    max_rotation_deg: float = 10.0
    max_shear: float = 0.15  # x-shear factor
    flip_prob: float = 0.3  # mirrored copies; marked only in ground_truth_copies.json
    occlusion_prob: float = 0.3  # copies partly hidden by a foreground shape
    max_occlusion: float = 0.25  # at most this share of a copy's pixels is hidden
    two_motif_share: float = 0.25  # of the images holding a motif, this share holds two
    distractors_per_image: tuple[int, int] = (0, 2)  # inclusive range, never in the GT
    media: tuple[str, ...] = ("pen_and_ink", "engraving", "oil", "pastel", "wash", "woodcut")
    medium_strength: float = 0.75  # 0: the composed photo, 1: the full medium (tints show through)
    png_every: int = 8  # every n-th image is written as PNG (grey PNGs for prints)
    jpeg_quality: int = 90


@dataclass(frozen=True)
class DemoInstance:
    """One ground-truth copy of a motif; ``box`` is ``(x0, y0, x1, y1)``, x1/y1 exclusive."""

    motif: str
    file: str
    box: tuple[int, int, int, int]
    flipped: bool
    occluded: float  # share of the copy's pixels hidden by an occluder, 0..max_occlusion
    # The copy's true geometry: motif-patch pixel (x, y) -> image pixel, a 2x3 affine
    # (a, b, c, d, e, f), and the patch's (w, h); composing two copies' transforms gives
    # the exact map between them (the reference for alignment errors).
    transform: tuple[float, ...] = ()
    patch_size: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class ImagePlan:
    """What one image will hold and its catalogue entry; decided before any drawing."""

    index: int
    file: str
    size: tuple[int, int]  # (width, height)
    motifs: tuple[str, ...]
    spans: tuple[float, ...]  # base span of each motif's class
    distractors: tuple[str, ...]
    medium: str
    title: str
    artist: str
    date: str
    collection: str
    source: str = "museum"  # the source style (hitl.demo_sources); museum = the plain picture
    layout: PageLayout | None = None  # where the picture sits on the source's page


@dataclass(frozen=True)
class DemoCollection:
    """A written demo collection: where its files are and its ground-truth instances."""

    root: Path
    images_dir: Path
    ground_truth: Path  # ArtMiner brueghelTest.json format
    ground_truth_via: Path  # VGG Image Annotator 2 project file
    metadata: Path  # CSV: file,title,artist,date,medium,collection
    files: tuple[str, ...]
    instances: tuple[DemoInstance, ...]
    template_regions: Path  # JSON: {file: [[kind, [x0, y0, x1, y1]], ...]}, never ground truth

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted({inst.motif for inst in self.instances}))


# ------------------------------------------------------------------------ catalogue


@dataclass(frozen=True)
class PatchSource:
    """A detail cut from a scikit-image sample photo; ``crop`` is x0, y0, x1, y1 there."""

    name: str
    image: str  # skimage.data function name
    crop: tuple[int, int, int, int]
    mask: str = "rect"  # "rect" (feathered), "ellipse" or "silhouette"
    noun: str = ""  # for titles


# Ordered so that a demo with few motifs still mixes textures, shapes and faces.
MOTIFS: tuple[PatchSource, ...] = (
    PatchSource("cat_face", "chelsea", (110, 40, 370, 290), "ellipse", "a Cat"),
    PatchSource("espresso_cup", "coffee", (70, 0, 490, 385), "ellipse", "a Cup"),
    PatchSource("horse", "horse", (0, 0, 400, 328), "silhouette", "a Horse"),
    PatchSource("rocket", "rocket", (235, 95, 480, 427), "rect", "a Tower"),
    PatchSource("astronaut", "astronaut", (140, 10, 310, 230), "ellipse", "a Lady"),
    PatchSource("cameraman", "camera", (120, 55, 345, 290), "rect", "a Surveyor"),
    PatchSource("medals", "coins", (180, 88, 305, 155), "rect", "Two Medals"),
    PatchSource("shuttle", "astronaut", (355, 15, 480, 285), "rect", "a Monument"),
)

# Look-alikes that are not copies of any motif: hard negatives, never in the GT.
DISTRACTORS: tuple[PatchSource, ...] = (
    PatchSource("medals_b", "coins", (180, 163, 305, 228)),
    PatchSource("medals_c", "coins", (213, 226, 338, 296)),
    PatchSource("medals_d", "coins", (183, 12, 308, 86)),
    PatchSource("helmet", "astronaut", (275, 340, 512, 512), "ellipse"),
    PatchSource("patch", "astronaut", (125, 340, 220, 435), "ellipse"),
    PatchSource("tripod", "camera", (215, 295, 420, 512)),
    PatchSource("lattice", "rocket", (0, 0, 95, 420)),
    PatchSource("fundus", "retina", (60, 60, 1350, 1350), "ellipse"),
)

# Non-motif photos used only as scenery (ground, walls, skies).
SCENERY = ("grass", "gravel", "brick", "hubble_deep_field", "immunohistochemistry", "text")

MEDIUM_LABELS = {
    "pen_and_ink": "Pen and brown ink on paper",
    "engraving": "Engraving",
    "oil": "Oil on panel",
    "pastel": "Pastel on paper",
    "wash": "Grey wash over black chalk",
    "woodcut": "Woodcut",
}

# Invented names; (name, first year, last year, preferred media).
ARTISTS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("Joris van Aelbrecht", 1552, 1598, ("engraving", "pen_and_ink")),
    ("Giacomo Ferrandi", 1570, 1615, ("woodcut", "engraving")),
    ("Maria Verhaegen", 1585, 1630, ("oil", "pastel")),
    ("Pieter Oudenrijn", 1600, 1645, ("pen_and_ink", "wash")),
    ("Hendrick Lammerse", 1612, 1660, ("oil", "wash")),
    ("Anna Wielandt", 1625, 1668, ("pastel", "pen_and_ink")),
    ("Lucas Emmerik", 1640, 1688, ("engraving", "woodcut")),
    ("Cornelia Brandtsen", 1655, 1700, ("wash", "oil")),
)

COLLECTIONS = (
    "Musée des Beaux-Arts de Valcourt",
    "Stadtmuseum Eberfeld",
    "Collectie Van Roon, Leiden",
    "Galleria Ordelaffi, Forlì",
    "Private collection",
)

# Pigment-like tones for scenery, so backgrounds look painted rather than random RGB.
SKY_TONES = np.array(
    [(0.55, 0.68, 0.85), (0.8, 0.85, 0.9), (0.78, 0.6, 0.55), (0.9, 0.85, 0.72), (0.6, 0.62, 0.66)],
    np.float32,
)
EARTH_TONES = np.array(
    [
        (0.8, 0.65, 0.35),
        (0.45, 0.33, 0.2),
        (0.63, 0.32, 0.18),
        (0.42, 0.45, 0.25),
        (0.3, 0.42, 0.22),
        (0.6, 0.58, 0.55),
        (0.35, 0.38, 0.42),
        (0.18, 0.16, 0.14),
    ],
    np.float32,
)

GENRES = ("Landscape", "Interior", "Allegory", "Still Life", "Study", "Capriccio")

# ------------------------------------------------------------------------- planning


def plan_demo(seed: int, n_images: int, n_motifs: int, config: DemoConfig,
              n_sources: int = 1) -> tuple[ImagePlan, ...]:
    """Decide every image's source, motifs, distractors, medium and catalogue entry.

    No pixel is touched here, so the ground truth's consistency can be tested fast.
    Motifs are dealt without regard to sources, so most copies cross sources and some
    stay within one. ``n_sources=1`` is the single-source demo, unchanged.

    Raises:
        ValueError: too few images for the motifs, an unknown medium, or a bad source count.
    """
    if not 1 <= n_sources <= len(STYLES):
        raise ValueError(f"n_sources must be 1..{len(STYLES)}, got {n_sources}")
    if n_images < n_sources:
        raise ValueError(f"n_images={n_images} is too few for {n_sources} sources")
    if not 1 <= n_motifs <= len(MOTIFS):
        raise ValueError(f"n_motifs must be 1..{len(MOTIFS)}, got {n_motifs}")
    if n_images < max(2, n_motifs):
        raise ValueError(
            f"n_images={n_images} is too few for {n_motifs} motifs (need >= {max(2, n_motifs)})"
        )
    unknown = sorted(set(config.media) - set(MEDIUM_LABELS))
    if unknown or not config.media:
        raise ValueError(f"unknown media {unknown}; choose from {sorted(MEDIUM_LABELS)}")
    rng = np.random.default_rng((seed, 0))
    holders = _assign_motifs(rng, n_images, n_motifs, config)
    spans = rng.uniform(*config.base_span, size=n_motifs)
    plans = tuple(_plan_image(rng, i, holders[i], spans, config) for i in range(n_images))
    if n_sources == 1:
        return plans
    # Own streams, so the single-source plan above stays what it always was.
    sources = np.random.default_rng((seed, 2)).permutation(np.arange(n_images) % n_sources)
    return tuple(_in_source(p, STYLES[int(s)], np.random.default_rng((seed, 3, p.index)))
                 for p, s in zip(plans, sources))


def _in_source(plan: ImagePlan, source, rng: np.random.Generator) -> ImagePlan:
    """Move a planned picture onto a page of ``source``: its frame size, media, hands, collection."""
    if source.page is None:
        return replace(plan, source=source.name, collection=source.collection)
    layout = plan_layout(rng, source)
    artist = str(rng.choice(source.artists)) if source.artists else plan.artist
    return replace(plan, source=source.name, layout=layout, size=layout.frame_size,
                   medium=str(rng.choice(source.media)), collection=source.collection, artist=artist)


def _plan_image(
    rng: np.random.Generator,
    index: int,
    motif_ids: list[int],
    spans: np.ndarray,
    config: DemoConfig,
) -> ImagePlan:
    """One image's content and an invented catalogue entry (artist, date, medium, title)."""
    lo, hi = config.distractors_per_image
    n_dis = min(int(rng.integers(lo, hi + 1)), len(DISTRACTORS))
    distractors = sorted(rng.choice(len(DISTRACTORS), size=n_dis, replace=False))
    artist, first, last, likes = ARTISTS[int(rng.integers(len(ARTISTS)))]
    media = [m for m in likes if m in config.media] or list(config.media)
    year = int(rng.integers(first, last + 1))
    png = config.png_every > 0 and index % config.png_every == config.png_every - 1
    return ImagePlan(
        index=index,
        file=f"demo_{index:03d}.{'png' if png else 'jpg'}",
        size=_image_size(rng, config.image_size),
        motifs=tuple(MOTIFS[m].name for m in motif_ids),
        spans=tuple(float(spans[m]) for m in motif_ids),
        distractors=tuple(DISTRACTORS[d].name for d in distractors),
        medium=str(media[int(rng.integers(len(media)))]),
        title=_title(rng, [MOTIFS[m].noun for m in motif_ids]),
        artist=artist,
        date=f"c. {year}" if rng.random() < 0.35 else str(year),
        collection=COLLECTIONS[int(rng.integers(len(COLLECTIONS)))],
    )


def _assign_motifs(
    rng: np.random.Generator, n_images: int, n_motifs: int, config: DemoConfig
) -> list[list[int]]:
    """Spread each motif's copies over distinct images, at most two motifs per image.

    Copies are dealt round-robin over a random subset of holder images: a motif's copies
    are consecutive in the deal, so they land in distinct images whenever there are at
    least as many holders as copies, and no holder gets more than two when the copies
    number at most twice the holders.
    """
    lo, hi = config.copies_per_motif
    hi = max(2, min(hi, (2 * n_images) // n_motifs, n_images))
    copies = rng.integers(max(2, min(lo, hi)), hi + 1, size=n_motifs)
    total = int(copies.sum())
    n_holders = int(np.ceil(total / (1.0 + config.two_motif_share)))
    n_holders = min(n_images, max(n_holders, int(copies.max()), (total + 1) // 2))
    holder_ids = rng.permutation(n_images)[:n_holders]
    deal = np.concatenate([np.full(copies[m], m) for m in rng.permutation(n_motifs)])
    holders: list[list[int]] = [[] for _ in range(n_images)]
    for t, m in enumerate(deal):
        holders[holder_ids[t % n_holders]].append(int(m))
    return holders


def _image_size(rng: np.random.Generator, long_short: tuple[int, int]) -> tuple[int, int]:
    long, short = long_short
    kind = rng.random()
    if kind < 0.55:
        return (long, short)
    if kind < 0.9:
        return (short, long)
    side = int(round((long * short) ** 0.5))
    return (side, side)


def _title(rng: np.random.Generator, nouns: list[str]) -> str:
    if not nouns:
        return str(
            rng.choice(
                ["Landscape with Ruins", "View of a Town", "Allegory of Sight", "Study of Rocks"]
            )
        )
    genre = str(rng.choice(GENRES))
    if genre == "Study":
        return f"Study of {' and '.join(nouns)}"
    return f"{genre} with {' and '.join(nouns)}"


# -------------------------------------------------------------------------- patches


@functools.cache
def _sample_image(name: str) -> np.ndarray:
    """A scikit-image sample as (H, W, 3) float32 in [0, 1]; all of them ship with the wheel."""
    from skimage import data  # heavy import, needed only when drawing

    img = np.asarray(getattr(data, name)())
    if img.dtype == bool:
        img = img.astype(np.float32)
    else:
        img = img.astype(np.float32) / 255.0
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = np.ascontiguousarray(img[..., :3])
    img.flags.writeable = False  # cached and shared: nobody may draw on it
    return img


@functools.cache
def _patch(source: PatchSource) -> tuple[np.ndarray, np.ndarray]:
    """A motif's pixels and its alpha: ((h, w, 3) float32, (h, w) float32), both in [0, 1]."""
    x0, y0, x1, y1 = source.crop
    rgb = _sample_image(source.image)[y0:y1, x0:x1]
    if max(rgb.shape[:2]) > 600:  # the fundus photo is 1.4k px; keep warps cheap
        step = int(np.ceil(max(rgb.shape[:2]) / 400))
        rgb = rgb[::step, ::step]
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if source.mask == "silhouette":
        alpha = 1.0 - rgb[..., 0]
        rgb = _shade_silhouette(alpha)
    elif source.mask == "ellipse":
        r = ((xx - (w - 1) / 2) / (w / 2)) ** 2 + ((yy - (h - 1) / 2) / (h / 2)) ** 2
        alpha = np.clip((1.0 - r) / 0.15, 0.0, 1.0)
    else:
        feather = 0.06 * min(h, w)
        ax = np.clip(np.minimum(xx, w - 1 - xx) / feather, 0, 1)
        ay = np.clip(np.minimum(yy, h - 1 - yy) / feather, 0, 1)
        alpha = ax * ay
    rgb, alpha = np.array(rgb, dtype=np.float32), alpha.astype(np.float32)
    rgb.flags.writeable = alpha.flags.writeable = False  # cached and shared
    return rgb, alpha


def _shade_silhouette(alpha: np.ndarray) -> np.ndarray:
    """Give a flat silhouette volume: darker rim, light from the upper left, (h, w, 3)."""
    depth = ndimage.distance_transform_edt(alpha > 0.5)
    depth = np.sqrt(depth / max(depth.max(), 1.0))
    h, w = alpha.shape
    light = np.linspace(0.25, -0.1, w)[None, :] + np.linspace(0.1, -0.1, h)[:, None]
    tone = np.clip(0.18 + 0.35 * depth + light, 0.05, 0.8)
    brown = np.array([0.55, 0.38, 0.25], dtype=np.float32)
    return tone[..., None] * brown[None, None, :] / 0.55


# ----------------------------------------------------------------------- background


def _noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1], (H, W): a random coarse grid upsampled bicubically."""
    h, w = shape
    grid = rng.random(
        (max(2, cells * h // max(h, w)), max(2, cells * w // max(h, w))), dtype=np.float32
    )
    up = Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(up), 0.0, 1.0)


def _background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Procedural scenery: sky/ground gradient, a textured band, soft shapes, buildings.

    Returns:
        (H, W, 3) float32 in [0, 1].
    """
    w, h = size
    sky, ground = _tone(rng, SKY_TONES), _tone(rng, EARTH_TONES)
    horizon = rng.uniform(0.35, 0.75) * h
    t = np.clip((np.arange(h, dtype=np.float32) - horizon) / (0.15 * h) + 0.5, 0, 1)[:, None, None]
    img = sky * (1 - t) + ground * t + np.zeros((h, w, 1), np.float32)
    img *= (0.75 + 0.5 * _noise(rng, (h, w), 6))[..., None]
    img = _scenery_band(rng, img, horizon)
    layer = Image.new("L", size, 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(2, 6))):  # hills, clouds, trees: large soft masses
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.1, 0.4) * w, rng.uniform(0.05, 0.25) * h
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=int(rng.integers(60, 255)))
    layer = layer.filter(ImageFilter.GaussianBlur((rng.uniform(3, 12), rng.uniform(3, 12))))
    soft = np.asarray(layer, np.float32)[..., None] / 255.0
    img = img * (1 - soft) + _tone(rng, np.concatenate([SKY_TONES, EARTH_TONES])) * soft
    return np.clip(_buildings(rng, img), 0.0, 1.0)


def _tone(rng: np.random.Generator, palette: np.ndarray) -> np.ndarray:
    """One palette colour, jittered, (3,)."""
    return np.clip(
        palette[int(rng.integers(len(palette)))] + rng.normal(0, 0.05, 3).astype(np.float32), 0, 1
    )


def _scenery_band(rng: np.random.Generator, img: np.ndarray, horizon: float) -> np.ndarray:
    """Blend a tinted crop of a non-motif photo over the ground (or sky) band."""
    h, w = img.shape[:2]
    src = _sample_image(str(rng.choice(SCENERY)))
    sh, sw = src.shape[:2]
    ch, cw = int(rng.uniform(0.3, 0.9) * sh), int(rng.uniform(0.3, 0.9) * sw)
    y0, x0 = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    crop = Image.fromarray((src[y0 : y0 + ch, x0 : x0 + cw] * 255).astype(np.uint8))
    tex = np.asarray(crop.resize((w, h), Image.Resampling.BILINEAR), np.float32) / 255.0
    tint = _tone(rng, EARTH_TONES) * rng.uniform(1.1, 1.6)
    rows = np.arange(h, dtype=np.float32)[:, None, None]
    below = rng.random() < 0.7
    ramp = (
        np.clip((rows - horizon) / 20.0, 0, 1) if below else np.clip((horizon - rows) / 20.0, 0, 1)
    )
    mix = ramp * rng.uniform(0.4, 0.9)
    return img * (1 - mix) + np.clip(tex * tint, 0, 1) * mix


def _buildings(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Columns, walls and arched windows: crisp architecture such as old prints are full of."""
    h, w = img.shape[:2]
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(0, 4))):
        x0, bw = rng.uniform(-0.1, 0.9) * w, rng.uniform(0.05, 0.3) * w
        top = rng.uniform(0.1, 0.6) * h
        draw.rectangle((x0, top, x0 + bw, h), fill=int(rng.integers(120, 255)))
        if rng.random() < 0.5:  # an arched window cut into the wall
            wx, ww = x0 + 0.3 * bw, 0.4 * bw
            draw.rectangle((wx, top + 0.2 * (h - top), wx + ww, top + 0.5 * (h - top)), fill=0)
            draw.ellipse(
                (wx, top + 0.2 * (h - top) - ww / 2, wx + ww, top + 0.2 * (h - top) + ww / 2),
                fill=0,
            )
    mask = np.asarray(layer, np.float32)[..., None] / 255.0
    colour = _tone(rng, EARTH_TONES)
    shade = 0.8 + 0.4 * _noise(rng, (h, w), 20)[..., None]
    return img * (1 - mask) + colour * shade * mask


# ------------------------------------------------------------------------ placement


def _warp(
    rng: np.random.Generator, source: PatchSource, long_side: float, config: DemoConfig, flip: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Scale a patch so its longer side is ``long_side``, then rotate, shear and maybe flip.

    Returns:
        rgb (h, w, 3) and alpha (h, w) float32 on the smallest canvas that holds the copy.
    """
    rgb, alpha, _ = _warp_with_transform(rng, source, long_side, config, flip)
    return rgb, alpha


def _warp_with_transform(
    rng: np.random.Generator, source: PatchSource, long_side: float, config: DemoConfig, flip: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_warp` plus its (2, 3) affine, patch pixel -> pixel of the returned canvas."""
    rgb, alpha = _patch(source)
    ph, pw = alpha.shape
    s = long_side / max(ph, pw)
    theta = np.deg2rad(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))
    shear = rng.uniform(-config.max_shear, config.max_shear)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    m = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([-s if flip else s, s])
    corners = np.array([[-pw, -ph], [pw, -ph], [pw, ph], [-pw, ph]], dtype=float) / 2
    extent = np.abs(corners @ m.T).max(axis=0)
    out_w, out_h = (int(np.ceil(2 * e)) + 2 for e in extent)
    # PIL wants the inverse map: output pixel (u, v) -> source pixel (x, y).
    inv = np.linalg.inv(m)
    offset = np.array([pw, ph]) / 2 - inv @ (np.array([out_w, out_h]) / 2)
    coeffs = (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])
    warped = []
    for plane in (*np.moveaxis(rgb, 2, 0), alpha):
        img = Image.fromarray(np.ascontiguousarray(plane), mode="F")
        out = img.transform(
            (out_w, out_h), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR
        )
        warped.append(np.asarray(out))
    # Inverse of PIL's map: canvas = m (patch - offset), in continuous pixel coordinates.
    forward = np.hstack([m, (-m @ offset)[:, None]])
    return np.stack(warped[:3], axis=2), np.clip(warped[3], 0.0, 1.0), forward


def _find_spot(
    rng: np.random.Generator,
    size: tuple[int, int],
    patch: tuple[int, int],
    taken: list[tuple[int, int, int, int]],
) -> tuple[int, int] | None:
    """Top-left corner where a ``patch`` (w, h) fits inside the image, clear of ``taken`` boxes."""
    w, h = size
    pw, ph = patch
    if pw > w or ph > h:
        return None
    xs = rng.integers(0, w - pw + 1, size=40)
    ys = rng.integers(0, h - ph + 1, size=40)
    for x, y in zip(xs, ys):
        if all(x >= b[2] or x + pw <= b[0] or y >= b[3] or y + ph <= b[1] for b in taken):
            return int(x), int(y)
    return None


def _paste(canvas: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, at: tuple[int, int]) -> None:
    x, y = at
    h, w = alpha.shape
    region = canvas[y : y + h, x : x + w]
    a = alpha[..., None]
    region[...] = region * (1 - a) + rgb * a


def _occlude(
    rng: np.random.Generator,
    canvas: np.ndarray,
    alpha: np.ndarray,
    at: tuple[int, int],
    limit: float,
) -> tuple[float, np.ndarray]:
    """Draw a foreground shape (branch, column or blob) over a pasted copy.

    The shape shrinks until it hides at most ``limit`` of the copy's pixels.

    Returns:
        The share of the copy's alpha that ended up hidden, and the shape's (H, W)
        coverage in [0, 1] (zeros when none was drawn).
    """
    h, w = canvas.shape[:2]
    x, y = at
    ph, pw = alpha.shape
    full = np.zeros((h, w), np.float32)
    full[y : y + ph, x : x + pw] = alpha
    kind, colour = int(rng.integers(3)), rng.uniform(0.05, 0.9, size=3).astype(np.float32)
    cx, cy = x + rng.uniform(0, pw), y + rng.uniform(0, ph)
    size = rng.uniform(0.25, 0.5) * max(pw, ph)
    for _ in range(8):
        layer = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(layer)
        if kind == 0:  # a branch crossing the copy
            dx, dy = size * np.cos(rng.uniform(0, np.pi)), size * np.sin(rng.uniform(0, np.pi))
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=255, width=max(3, int(size / 5)))
        elif kind == 1:  # a column or tree trunk
            draw.rectangle((cx - size / 6, y - 5, cx + size / 6, y + ph + 5), fill=255)
        else:  # a bush or drapery
            draw.ellipse((cx - size / 2, cy - size / 3, cx + size / 2, cy + size / 3), fill=255)
        mask = np.asarray(layer, np.float32) / 255.0
        hidden = float((mask * full).sum() / max(full.sum(), 1e-6))
        if hidden <= limit:
            break
        size *= 0.75
    else:
        return 0.0, np.zeros((h, w), np.float32)
    shade = 0.7 + 0.5 * _noise(rng, (h, w), 30)[..., None]
    m = mask[..., None]
    canvas[...] = canvas * (1 - m) + np.clip(colour * shade, 0, 1) * m
    return hidden, mask


# ---------------------------------------------------------------------------- media


def _lum(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _stretch(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, [2, 98])
    return np.clip((x - lo) / max(hi - lo, 1e-3), 0, 1)


def _xdog(lum: np.ndarray, sigma: float, eps: float = -0.005, phi: float = 120.0) -> np.ndarray:
    """Ink lines from an extended difference of Gaussians: (H, W), 1 = ink, 0 = paper."""
    d = ndimage.gaussian_filter(lum, sigma) - 0.99 * ndimage.gaussian_filter(lum, 1.6 * sigma)
    return np.clip(-np.tanh(phi * (d - eps)), 0.0, 1.0)


def _hatch(
    shape: tuple[int, int], angle: float, period: float, darkness: np.ndarray, bend: np.ndarray
) -> np.ndarray:
    """Parallel lines whose width grows with ``darkness`` (H, W in [0, 1]); 1 = ink.

    ``bend`` (H, W) shifts the lines' phase so they curve with the forms, like a burin.
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period + bend
    dist = np.abs(phase - np.round(phase)) * 2  # 0 on a line's centre, 1 midway between
    return np.clip((darkness - dist) * period / 2 + 0.5, 0.0, 1.0)


def _paper(rng: np.random.Generator, shape: tuple[int, int], grain: float) -> np.ndarray:
    """Paper tone with fibres and uneven ageing, (H, W) around 1."""
    fine = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 0.7)
    return 1.0 + grain * fine / (fine.std() + 1e-6) * 0.5 - 0.12 * _noise(rng, shape, 5)


def _ink_on_paper(rng: np.random.Generator, ink: np.ndarray, grain: float = 0.06) -> np.ndarray:
    """Compose an ink map (H, W) onto toned paper with a sepia-to-black ink, (H, W, 3)."""
    paper = rng.uniform([0.88, 0.82, 0.68], [0.98, 0.95, 0.88]).astype(np.float32)
    ink_colour = rng.uniform([0.05, 0.03, 0.02], [0.35, 0.22, 0.12]).astype(np.float32)
    base = paper * _paper(rng, ink.shape, grain)[..., None]
    return base * (1 - ink[..., None]) + ink_colour * ink[..., None]


def pen_and_ink(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Contour lines plus loose hatching in the shadows."""
    lum = _stretch(_lum(rgb))
    lines = _xdog(lum, sigma=rng.uniform(1.0, 1.8))
    dark = np.clip((0.35 - ndimage.gaussian_filter(lum, 2)) / 0.35, 0, 1) * 0.6
    hatch = _hatch(lum.shape, rng.uniform(0, np.pi), rng.uniform(5, 8), dark, 0.0)
    return _ink_on_paper(rng, np.maximum(lines, hatch))


def engraving(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Curving parallel hatching modulated by tone, cross-hatched in the darks, outlined."""
    lum = _stretch(ndimage.gaussian_filter(_lum(rgb), 1.0))
    bend = ndimage.gaussian_filter(lum, 6) * rng.uniform(1.5, 4)
    angle, period = rng.uniform(0, np.pi), rng.uniform(3.5, 5.5)
    first = _hatch(lum.shape, angle, period, (1 - lum) ** 1.2, bend)
    cross_dark = np.clip((0.45 - lum) / 0.45, 0, 1)
    cross = _hatch(lum.shape, angle + rng.uniform(0.8, 1.6), period, cross_dark, -bend)
    ink = np.maximum(np.maximum(first, cross), 0.7 * _xdog(lum, 1.5))
    return _ink_on_paper(rng, ink, grain=0.03)


def woodcut(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Black masses cut by white gouges, with bold outlines."""
    lum = _stretch(ndimage.gaussian_filter(_lum(rgb), 1.5))
    mass = (lum < rng.uniform(0.35, 0.55)).astype(np.float32)
    gouge = _hatch(
        lum.shape, rng.uniform(0, np.pi), rng.uniform(6, 9), np.clip(lum * 1.6, 0, 0.9), 0.0
    )
    ink = np.maximum(mass * (1 - gouge), _xdog(lum, 2.0))
    ink = ndimage.gaussian_filter(ink, 0.6)
    return _ink_on_paper(rng, ink, grain=0.1)


def oil(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """A shifted palette laid in a few flat values, brush-stroke texture, yellowed varnish."""
    mix = np.eye(3, dtype=np.float32) + rng.normal(0, 0.12, (3, 3)).astype(np.float32)
    col = np.clip(rgb @ (mix / mix.sum(axis=0, keepdims=True)), 0, 1)
    col = ndimage.gaussian_filter(col, (2.5, 2.5, 0))
    grey = _lum(col)[..., None]
    levels = int(rng.integers(3, 6))
    value = np.round(_stretch(grey) * (levels - 1)) / (levels - 1)  # a painter's few values
    col = ndimage.gaussian_filter(value + rng.uniform(0.8, 1.3) * (col - grey), (1.2, 1.2, 0))
    h, w = grey.shape[:2]
    strokes = rng.standard_normal((h, w)).astype(np.float32)
    along = rng.uniform(4, 9)
    strokes = ndimage.gaussian_filter(strokes, (1.0, along) if rng.random() < 0.5 else (along, 1.0))
    col = col * (1 + 1.2 * strokes[..., None])
    varnish = np.array([1.0, 0.9, 0.68], np.float32) * rng.uniform(0.75, 0.95)
    return col * varnish


def pastel(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Blurred, pale, low-contrast colour on tinted paper whose tooth shows through."""
    col = ndimage.gaussian_filter(rgb, (2.5, 2.5, 0))
    col = 0.5 + (col - 0.5) * rng.uniform(0.5, 0.75)
    hue = np.roll(col, int(rng.integers(1, 3)), axis=2)
    col = 0.6 * col + 0.4 * hue
    paper = rng.uniform([0.6, 0.6, 0.6], [0.95, 0.9, 0.85]).astype(np.float32)
    col = 0.7 * col + 0.3 * paper
    h, w = col.shape[:2]
    tooth = ndimage.gaussian_filter(rng.random((h, w), dtype=np.float32), 0.8)
    strokes = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), (6, 1.0))
    skip = np.clip((tooth - 0.55) * 6 + strokes * 3, 0, 1)[..., None] * 0.35
    return col * (1 - skip) + paper * skip


def wash(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Grey wash: a few soft tone layers with darker pooled edges, in one toned ink."""
    lum = _stretch(ndimage.gaussian_filter(_lum(rgb), 1.5))
    levels = int(rng.integers(3, 5))
    layers = np.round(lum * (levels - 1)) / (levels - 1)
    tone = 0.55 * layers + 0.45 * ndimage.gaussian_filter(lum, 3)
    edges = ndimage.gaussian_gradient_magnitude(layers, 1.0)
    tone = np.clip(tone - 0.6 * edges, 0, 1)
    ink = (1 - tone) * rng.uniform(0.6, 0.9)
    paper = rng.uniform([0.85, 0.83, 0.78], [0.97, 0.95, 0.9]).astype(np.float32)
    colour = rng.uniform([0.15, 0.15, 0.15], [0.4, 0.35, 0.35]).astype(np.float32)
    base = paper * _paper(rng, lum.shape, 0.05)[..., None]
    return base * (1 - ink[..., None]) + colour * ink[..., None]


MEDIA = {
    "pen_and_ink": pen_and_ink,
    "engraving": engraving,
    "oil": oil,
    "pastel": pastel,
    "wash": wash,
    "woodcut": woodcut,
}


# -------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class _Copy:
    """A warped motif copy waiting to be pasted at ``at`` (x, y) of the canvas."""

    name: str
    rgb: np.ndarray  # (h, w, 3)
    alpha: np.ndarray  # (h, w)
    at: tuple[int, int]
    flipped: bool
    warp: np.ndarray  # (2, 3) patch pixel -> pixel of ``rgb``

    @property
    def box(self) -> tuple[int, int, int, int]:
        return _alpha_box(self.alpha, self.at)

    @property
    def transform(self) -> tuple[float, ...]:
        """Patch pixel -> image pixel, flattened 2x3."""
        shifted = self.warp + np.array([[0, 0, self.at[0]], [0, 0, self.at[1]]], dtype=float)
        return tuple(float(v) for v in shifted.ravel())


def render_image(
    plan: ImagePlan, seed: int, config: DemoConfig
) -> tuple[Image.Image, tuple[DemoInstance, ...]]:
    """Compose one planned image and re-draw it in its medium.

    Each image draws from its own generator, so one image does not depend on another.

    Returns:
        The finished RGB image and its ground-truth motif copies.
    """
    page = render_picture(plan, seed, config)
    return page.image, page.instances


def render_truth(
    plan: ImagePlan, seed: int, config: DemoConfig
) -> tuple[Image.Image, tuple[DemoInstance, ...], tuple[np.ndarray, ...]]:
    """:func:`render_image` plus each copy's visible mask, (H, W) bool per instance:
    its alpha above one half, less what an occluder hides (the shared detail's truth)."""
    page = render_picture(plan, seed, config)
    return page.image, page.instances, page.masks


@dataclass(frozen=True)
class RenderedPage:
    """One finished image: its motif copies (ground truth) with their visible masks, its
    distractors and its template regions ``(kind, box)``, all in page pixels."""

    image: Image.Image
    instances: tuple[DemoInstance, ...]
    distractors: tuple[DemoInstance, ...]
    template: list[tuple[str, tuple[int, int, int, int]]]
    masks: tuple[np.ndarray, ...] = ()


def render_picture(plan: ImagePlan, seed: int, config: DemoConfig) -> RenderedPage:
    """The picture alone (no page), with its copies, their masks and its distractors.

    A distractor is the same photo crop wherever it is pasted, so two images holding the
    same distractor do share a detail: evaluation can count such links apart.
    """
    rng = np.random.default_rng((seed, 1, plan.index))
    canvas = _background(rng, plan.size)
    copies = _place_motifs(rng, plan, config)
    distractors = _paste_distractors(rng, canvas, plan, config, [c.box for c in copies])
    instances, masks = [], []
    for c in copies:  # pasted after the distractors so nothing covers them but occluders
        _paste(canvas, c.rgb, c.alpha, c.at)
        visible = np.zeros(canvas.shape[:2], bool)
        h, w = c.alpha.shape
        visible[c.at[1] : c.at[1] + h, c.at[0] : c.at[0] + w] = c.alpha > 0.5
        hidden = 0.0
        if rng.random() < config.occlusion_prob:
            hidden, cover = _occlude(rng, canvas, c.alpha, c.at, config.max_occlusion)
            visible &= cover <= 0.5
        patch_h, patch_w = _patch(_motif(c.name))[1].shape
        instances.append(DemoInstance(c.name, plan.file, c.box, c.flipped, round(hidden, 3),
                                      c.transform, (patch_w, patch_h)))
        masks.append(visible)
    # Later copies never overlap earlier ones (_find_spot), but occluders of later copies may.
    canvas = np.clip(canvas, 0, 1)
    drawn = np.clip(MEDIA[plan.medium](rng, canvas), 0, 1)
    s = config.medium_strength
    out = s * drawn + (1 - s) * canvas
    return RenderedPage(Image.fromarray((out * 255 + 0.5).astype(np.uint8)), tuple(instances),
                        tuple(distractors), [], tuple(masks))


def render_page(plan: ImagePlan, seed: int, config: DemoConfig) -> RenderedPage:
    """The planned picture on its source's page (the picture alone for museum photos)."""
    picture = render_picture(plan, seed, config)
    if plan.layout is None:
        return picture
    source = next(s for s in STYLES if s.name == plan.source)
    page, template = draw_page(np.random.default_rng((seed, 4, plan.index)), source, plan.layout,
                               np.asarray(picture.image, np.float32) / 255.0, plan.index)
    dx, dy = plan.layout.frame[:2]

    def moved(found: tuple[DemoInstance, ...]) -> tuple[DemoInstance, ...]:
        return tuple(replace(i, box=(i.box[0] + dx, i.box[1] + dy, i.box[2] + dx, i.box[3] + dy),
                             transform=_shifted(i.transform, dx, dy)) for i in found)

    width, height = plan.layout.page_size
    masks = []
    for mask in picture.masks:
        full = np.zeros((height, width), bool)
        full[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] = mask
        masks.append(full)
    return RenderedPage(Image.fromarray((page * 255 + 0.5).astype(np.uint8)), moved(picture.instances),
                        moved(picture.distractors), template, tuple(masks))


def _shifted(transform: tuple[float, ...], dx: int, dy: int) -> tuple[float, ...]:
    """A patch -> picture affine (a, b, c, d, e, f) as patch -> page, the picture at (dx, dy)."""
    if not transform:
        return transform
    a, b, c, d, e, f = transform
    return (a, b, c + dx, d, e, f + dy)


def _place_motifs(rng: np.random.Generator, plan: ImagePlan, config: DemoConfig) -> list[_Copy]:
    """Warp each planned motif and find it a spot clear of the others."""
    copies: list[_Copy] = []
    for name, span in zip(plan.motifs, plan.spans):
        flip = bool(rng.random() < config.flip_prob)
        target = span * rng.uniform(*config.scale_jitter) * max(plan.size)
        for _ in range(6):  # shrink until it fits beside the copies already placed
            rgb, alpha, warp = _warp_with_transform(rng, _motif(name), target, config, flip)
            spot = _find_spot(rng, plan.size, alpha.shape[::-1], [c.box for c in copies])
            if spot is not None:
                break
            target *= 0.85
        else:
            raise RuntimeError(f"{plan.file}: no room for motif {name} at image size {plan.size}")
        copies.append(_Copy(name, rgb, alpha, spot, flip, warp))
    return copies


def _paste_distractors(
    rng: np.random.Generator, canvas: np.ndarray, plan: ImagePlan, config: DemoConfig, taken: list
) -> list[DemoInstance]:
    """Paste look-alikes where there is room; they stay out of the ground truth."""
    taken = list(taken)
    pasted = []
    for name in plan.distractors:
        long_side = rng.uniform(0.2, 0.45) * max(plan.size)
        flip = bool(rng.random() < 0.5)
        rgb, alpha = _warp(rng, _distractor(name), long_side, config, flip)
        spot = _find_spot(rng, plan.size, alpha.shape[::-1], taken)
        if spot is not None:
            _paste(canvas, rgb, alpha, spot)
            taken.append(_alpha_box(alpha, spot))
            pasted.append(DemoInstance(name, plan.file, taken[-1], flip, 0.0))
    return pasted


def _motif(name: str) -> PatchSource:
    return next(m for m in MOTIFS if m.name == name)


def _distractor(name: str) -> PatchSource:
    return next(d for d in DISTRACTORS if d.name == name)


def _alpha_box(alpha: np.ndarray, at: tuple[int, int]) -> tuple[int, int, int, int]:
    """Tight box of a pasted copy's visible half (alpha > 0.5) in image pixels, x1/y1 exclusive."""
    ys, xs = np.nonzero(alpha > 0.5)
    x, y = at
    return (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1)


# -------------------------------------------------------------------------- writing


def build_demo(
    out_dir: str | Path,
    seed: int = 0,
    n_images: int = 60,
    n_motifs: int = 8,
    config: DemoConfig = DemoConfig(),
    progress: bool = True,
    n_sources: int = 1,
) -> DemoCollection:
    """Write a demo collection: ``images/``, ``ground_truth.json``, ``ground_truth_via.json``,
    ``metadata.csv`` and ``template_regions.json``.

    Args:
        out_dir: target folder; created if missing. Files of an earlier demo are overwritten.
        seed: same seed, same bytes.
        n_images: images to draw (>= n_motifs and >= 2).
        n_motifs: repeated motif classes, 1..len(MOTIFS).
        config: difficulty knobs.
        progress: show a progress bar.
        n_sources: sources of distinct house look (1..5, see :mod:`hitl.demo_sources`);
            ``collection`` in the metadata names each image's source.

    Raises:
        ValueError: bad sizes, or ``out_dir/images`` holds files that are not the demo's.
    """
    plans = plan_demo(seed, n_images, n_motifs, config, n_sources)
    root = Path(out_dir)
    images_dir = root / "images"
    _check_images_dir(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    instances: list[DemoInstance] = []
    templates: dict[str, list] = {}
    distractors: list[DemoInstance] = []
    iterator = plans
    if progress:
        from tqdm import tqdm

        iterator = tqdm(plans, desc="drawing demo collection", unit="img")
    masks_dir = root / "masks"
    masks_dir.mkdir(parents=True, exist_ok=True)
    for plan in iterator:
        page = render_page(plan, seed, config)
        _save(page.image, images_dir / plan.file, plan.medium, config)
        for k, mask in enumerate(page.masks):
            Image.fromarray(mask).save(masks_dir / mask_name(plan.file, k), optimize=False)
        instances.extend(page.instances)
        distractors.extend(page.distractors)
        templates[plan.file] = [[kind, list(box)] for kind, box in page.template]
    collection = DemoCollection(
        root=root,
        images_dir=images_dir,
        ground_truth=root / "ground_truth.json",
        ground_truth_via=root / "ground_truth_via.json",
        metadata=root / "metadata.csv",
        files=tuple(p.file for p in plans),
        instances=tuple(instances),
        template_regions=root / "template_regions.json",
    )
    collection.template_regions.write_text(json.dumps(templates) + "\n")
    collection.ground_truth.write_text(
        json.dumps(artminer_ground_truth(collection.instances)) + "\n"
    )
    via = via_project(
        collection.instances, {p.file: (images_dir / p.file).stat().st_size for p in plans}
    )
    collection.ground_truth_via.write_text(json.dumps(via) + "\n")
    _write_metadata(collection.metadata, plans)
    # Every pasted element, distractors included (one distractor pasted twice is a repeated
    # detail too, outside the ground truth).
    copies = [{**asdict(inst), "kind": "motif", "mask": f"masks/{mask_name(inst.file, k)}"}
              for inst, k in zip(collection.instances, _ranks(collection.instances))]
    copies += [{**asdict(inst), "kind": "distractor", "mask": None} for inst in distractors]
    (root / COPIES_FILE).write_text(json.dumps(copies) + "\n")
    return collection


COPIES_FILE = "ground_truth_copies.json"
"""Every pasted element with what the brueghelTest format cannot hold: ``kind`` (a
ground-truth "motif" copy, or a "distractor" left out of the ground truth), mirrored or
not, occluded share, its true patch -> image affine and, for copies, its visible mask
(``masks/<image stem>_<k>.png``)."""


def mask_name(file: str, k: int) -> str:
    return f"{Path(file).stem}_{k}.png"


def _ranks(instances: tuple[DemoInstance, ...]) -> list[int]:
    """Each instance's index among the instances of its image."""
    seen: dict[str, int] = {}
    out = []
    for inst in instances:
        out.append(seen.get(inst.file, 0))
        seen[inst.file] = out[-1] + 1
    return out


def load_copies(root: str | Path) -> list[tuple[DemoInstance, Path]]:
    """The copies of a demo written by :func:`build_demo`, with their mask files.

    Raises:
        FileNotFoundError: the demo predates ``ground_truth_copies.json``; rebuild it.
    """
    path = Path(root) / COPIES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: rebuild the demo with `artminer demo`")
    out = []
    for rec in json.loads(path.read_text()):
        if rec.pop("kind", "motif") != "motif":
            continue
        mask = Path(root) / rec.pop("mask")
        rec["box"], rec["transform"], rec["patch_size"] = (tuple(rec[k]) for k in ("box", "transform", "patch_size"))
        out.append((DemoInstance(**rec), mask))
    return out


def _check_images_dir(images_dir: Path) -> None:
    if not images_dir.is_dir():
        return
    foreign = sorted(
        p.name
        for p in images_dir.iterdir()
        if not (p.name.startswith("demo_") and p.suffix in (".jpg", ".png"))
    )
    if foreign:
        raise ValueError(
            f"{images_dir} holds files that are not part of the demo ({', '.join(foreign[:3])}); choose an empty --out"
        )
    for p in images_dir.iterdir():  # an earlier, larger demo must not leave extra images behind
        p.unlink()


def _save(image: Image.Image, path: Path, medium: str, config: DemoConfig) -> None:
    if path.suffix == ".png":
        # Prints are often scanned in grey: exercise the readers' mode conversion too.
        (image.convert("L") if medium in ("engraving", "woodcut") else image).save(
            path, optimize=False
        )
    else:
        image.save(path, quality=config.jpeg_quality, optimize=False)


def artminer_ground_truth(instances: tuple[DemoInstance, ...]) -> dict:
    """ArtMiner's ``brueghelTest.json`` layout: every instance queries all others of its class.

    Returns:
        ``{class: [{"query": [file, [x0, y0, x1, y1]], "gt": [[file, box], ...]}, ...]}``.
    """
    out: dict[str, list] = {}
    for cls in sorted({inst.motif for inst in instances}):
        members = [inst for inst in instances if inst.motif == cls]
        out[cls] = [
            {
                "query": [q.file, list(q.box)],
                "gt": [[t.file, list(t.box)] for t in members if t is not q],
            }
            for q in members
        ]
    return out


def via_project(instances: tuple[DemoInstance, ...], file_sizes: dict[str, int]) -> dict:
    """VGG Image Annotator 2 region data: one rect per instance, ``{"motif": class}``.

    Args:
        file_sizes: every image's byte size, as VIA keys images by name + size.
    """
    out = {}
    for file, size in file_sizes.items():
        regions = [
            {
                "shape_attributes": {
                    "name": "rect",
                    "x": b[0],
                    "y": b[1],
                    "width": b[2] - b[0],
                    "height": b[3] - b[1],
                },
                "region_attributes": {"motif": inst.motif},
            }
            for inst in instances
            if inst.file == file
            for b in [inst.box]
        ]
        out[f"{file}{size}"] = {
            "filename": file,
            "size": size,
            "regions": regions,
            "file_attributes": {},
        }
    return out


def _write_metadata(path: Path, plans: tuple[ImagePlan, ...]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = safe_writer(f, lineterminator="\n")
        writer.writerow(["file", "title", "artist", "date", "medium", "collection"])
        for p in plans:
            writer.writerow(
                [p.file, p.title, p.artist, p.date, MEDIUM_LABELS[p.medium], p.collection]
            )
