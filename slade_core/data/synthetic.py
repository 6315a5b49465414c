"""A generated fine-grained image set, so the quickstart runs with no download.

Each class is a procedural bird species: a combination of six attributes (body hue, wing
pattern, beak length, head crest, tail shape, cap colour). Species come in genera whose
members differ in one or two attributes, so the task is fine-grained like CUB: every image
also varies in pose, scale, position, lighting, background clutter and noise.

Splits follow the metric-learning protocol: labeled `train` classes, class-disjoint `test`
classes, and an `unlabeled` part drawn from the train classes plus extra unseen species,
never from the test classes, rendered with a domain shift (other backgrounds, lighting,
colour cast, more clutter and noise). Unlabeled rows keep their true label in index.csv
for diagnostics; the data layer hides it.
"""

from __future__ import annotations

import colorsys
import csv
import json
import math
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from slade_core.io import atomic_dir, write_json

GENERATOR_VERSION = 1
SPECIES_PER_GENUS = 4
JPEG_QUALITY = 92  # like the photo datasets: small files, fast to decode

# Attribute values; names are used in class names so retrieval reports read well.
HUES = {
    "red": 0,
    "orange": 28,
    "yellow": 52,
    "green": 100,
    "jade": 150,
    "teal": 185,
    "blue": 215,
    "violet": 270,
}
WINGS = ("plain", "onebar", "twobar", "spotted")
BEAKS = ("short", "long")
CRESTS = ("nocrest", "crest")
TAILS = ("round", "forked", "pointed")
CAPS = ("samecap", "darkcap", "whitecap")
ATTRIBUTES = (tuple(HUES), WINGS, BEAKS, CRESTS, TAILS, CAPS)


@dataclass(frozen=True)
class _Domain:
    """Rendering distribution: the labeled domain, or the shifted unlabeled one."""

    palettes: tuple[tuple[int, int, int], ...]
    texture: float
    clutter: tuple[int, int]
    brightness: tuple[float, float]
    cast: float
    noise: float
    rotation: float


LABELED = _Domain(
    palettes=((165, 198, 232), (192, 216, 172), (222, 212, 186)),  # sky, foliage, sand
    texture=0.08,
    clutter=(0, 3),
    brightness=(0.92, 1.08),
    cast=0.03,
    noise=3.0,
    rotation=20.0,
)
SHIFTED = _Domain(
    palettes=((84, 104, 76), (204, 146, 104), (132, 132, 142), (64, 74, 104)),  # forest, dusk
    texture=0.22,
    clutter=(2, 7),
    brightness=(0.72, 1.18),
    cast=0.12,
    noise=7.0,
    rotation=30.0,
)


def _mix(a: float, b: float, t: float) -> float:
    return a + t * (b - a)


def _shifted_domain(strength: float) -> _Domain:
    """Interpolate from the labeled domain (0) to the shifted one (1)."""
    return _Domain(
        palettes=tuple(
            tuple(round(_mix(a, b, strength)) for a, b in zip(lab, shift, strict=True))
            for lab, shift in zip(cycle(LABELED.palettes), SHIFTED.palettes)
        ),
        texture=_mix(LABELED.texture, SHIFTED.texture, strength),
        clutter=(
            round(_mix(LABELED.clutter[0], SHIFTED.clutter[0], strength)),
            round(_mix(LABELED.clutter[1], SHIFTED.clutter[1], strength)),
        ),
        brightness=(
            _mix(LABELED.brightness[0], SHIFTED.brightness[0], strength),
            _mix(LABELED.brightness[1], SHIFTED.brightness[1], strength),
        ),
        cast=_mix(LABELED.cast, SHIFTED.cast, strength),
        noise=_mix(LABELED.noise, SHIFTED.noise, strength),
        rotation=_mix(LABELED.rotation, SHIFTED.rotation, strength),
    )


def _sample_species(rng: np.random.Generator, count: int) -> list[tuple[int, ...]]:
    """Draw `count` distinct attribute combinations grouped in genera.

    A genus is a random combination; its other species change one or two attributes of it.
    """
    sizes = [len(values) for values in ATTRIBUTES]
    grid = math.prod(sizes)
    if count > grid // 2:
        raise ValueError(
            f"asked for {count} synthetic classes but only {grid} attribute combinations exist; "
            f"use at most {grid // 2} classes in total"
        )
    chosen: list[tuple[int, ...]] = []
    seen: set[tuple[int, ...]] = set()
    while len(chosen) < count:
        if count - len(chosen) < SPECIES_PER_GENUS and chosen:  # fill up next to a known genus
            base, genus = chosen[int(rng.integers(len(chosen)))], []
        else:
            base = tuple(int(rng.integers(n)) for n in sizes)
            genus = [base] if base not in seen else []
        for _ in range(100):
            if len(genus) >= SPECIES_PER_GENUS:
                break
            species = list(base)
            for attr in rng.choice(len(sizes), size=int(rng.integers(1, 3)), replace=False):
                species[attr] = int((species[attr] + rng.integers(1, sizes[attr])) % sizes[attr])
            species = tuple(species)
            if species not in seen and species not in genus:
                genus.append(species)
        for species in genus[: count - len(chosen)]:
            seen.add(species)
            chosen.append(species)
    return chosen


def _covers_all_values(species: list[tuple[int, ...]]) -> bool:
    return all(len({s[i] for s in species}) == len(values) for i, values in enumerate(ATTRIBUTES))


def _class_name(class_id: int, species: tuple[int, ...]) -> str:
    words = [values[v] for values, v in zip(ATTRIBUTES, species, strict=True)]
    return f"{class_id:03d}_" + "_".join(words)


def _hsv(hue_deg: float, sat: float, val: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((hue_deg % 360) / 360, min(max(sat, 0), 1), min(max(val, 0), 1))
    return round(r * 255), round(g * 255), round(b * 255)


def _arc_points(start: float, end: float, n: int = 28) -> np.ndarray:
    """Unit-circle points from `start` to `end` degrees (clockwise from +x, y down, like PIL)."""
    theta = np.radians(np.linspace(start, end, n))
    return np.stack([np.cos(theta), np.sin(theta)], axis=1)


_CIRCLE = _arc_points(0, 360)


def _pose(rng: np.random.Generator, domain: _Domain, size: int) -> np.ndarray:
    """Random flip, rotation, scale and shift as a 2x3 map from the 192 px design canvas."""
    flip = -1.0 if rng.random() < 0.5 else 1.0
    angle = math.radians(rng.uniform(-domain.rotation, domain.rotation))
    scale = rng.uniform(0.72, 1.02)
    shift = rng.uniform(-0.1, 0.1, size=2) * 192
    rot = scale * np.array(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    )
    linear = rot @ np.diag([flip, 1.0])
    centre = np.array([96.0, 96.0])
    offset = centre + shift - linear @ centre
    return (size / 192) * np.hstack([linear, offset[:, None]])


def _draw_bird(
    species: tuple[int, ...], rng: np.random.Generator, pose: np.ndarray, size: int
) -> Image.Image:
    """The bird on a transparent `size` x `size` canvas, designed facing right on 192 px.

    Every shape is mapped through `pose` as polygon points, so posing costs no image resampling.
    """
    hue_i, wing_i, beak_i, crest_i, tail_i, cap_i = species
    stretch = math.sqrt(abs(np.linalg.det(pose[:, :2])))

    def pts(xy: np.ndarray | list[tuple[float, float]]) -> list[tuple[float, float]]:
        xy = np.asarray(xy, np.float64)
        return [tuple(q) for q in (xy @ pose[:, :2].T + pose[:, 2]).tolist()]

    def arc(cx: float, cy: float, rx: float, ry: float, start: float = 0, end: float = 360):
        unit = _CIRCLE if (start, end) == (0, 360) else _arc_points(start, end)
        return pts(unit * (rx, ry) + (cx, cy))

    hue = HUES[ATTRIBUTES[0][hue_i]] + rng.normal(0, 4)
    sat, val = 0.68 + rng.normal(0, 0.05), 0.82 + rng.normal(0, 0.05)
    body = _hsv(hue, sat, val) + (255,)
    belly = _hsv(hue, sat * 0.45, min(val * 1.18, 1.0)) + (255,)
    dark = _hsv(hue, sat, val * 0.62) + (255,)
    cap = {0: body, 1: (38, 34, 40, 255), 2: (240, 238, 232, 255)}[cap_i]
    light = (246, 244, 236, 255)

    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    rx, ry = 44 * rng.uniform(0.94, 1.06), 27 * rng.uniform(0.94, 1.06)
    cx, cy = 92, 104

    # legs and tail sit behind the body
    for x0, x1 in ((86, 82), (100, 104)):
        leg = pts([(x0, cy + ry - 4), (x1, cy + ry + 20)])
        d.line(leg, fill=(60, 52, 48, 255), width=max(1, round(3 * stretch)))
    tx = cx - rx + 6
    tail = {
        0: [(tx, cy - 7), (tx - 34, cy - 20), (tx - 42, cy), (tx - 34, cy + 20), (tx, cy + 7)],
        1: [(tx, cy - 7), (tx - 46, cy - 22), (tx - 26, cy), (tx - 46, cy + 22), (tx, cy + 7)],
        2: [(tx, cy - 7), (tx - 56, cy + 2), (tx, cy + 8)],
    }[tail_i]
    d.polygon(pts(tail), fill=dark)

    d.polygon(arc(cx, cy, rx, ry), fill=body)
    d.polygon(arc(cx, cy, rx, ry, 20, 160), fill=belly)

    wx, wy, wrx, wry = cx - 6, cy - 8, rx * 0.7, ry * 0.56
    d.polygon(arc(wx, wy, wrx, wry), fill=dark)
    bars = {1: (wx,), 2: (wx - 9, wx + 7)}.get(wing_i, ())
    for bx in bars:
        h = wry * math.sqrt(max(0.0, 1 - ((bx - wx) / wrx) ** 2)) - 2
        bar = pts([(bx + 3, wy - h), (bx - 3, wy + h)])
        d.line(bar, fill=light, width=max(1, round(4 * stretch)))
    if wing_i == 3:
        for sx, sy in ((-16, -3), (-6, -7), (4, -3), (14, 1), (-10, 5), (2, 6)):
            d.polygon(arc(wx + sx, wy + sy, 2.6, 2.6), fill=light)

    hx, hy, hr = cx + rx - 2, cy - ry - 1, 19
    if crest_i:
        crest = cap if cap_i else dark
        d.polygon(pts([(hx - 12, hy - 12), (hx - 20, hy - 38), (hx - 2, hy - 16)]), fill=crest)
        d.polygon(pts([(hx - 4, hy - 16), (hx - 2, hy - 42), (hx + 8, hy - 16)]), fill=crest)
    beak_len = (11 if beak_i == 0 else 26) * rng.uniform(0.9, 1.1)
    beak = [(hx + hr - 4, hy - 6), (hx + hr - 4 + beak_len, hy + 1), (hx + hr - 4, hy + 6)]
    d.polygon(pts(beak), fill=(214, 166, 48, 255))
    d.polygon(arc(hx, hy, hr, hr), fill=body)
    if cap_i:
        d.polygon(arc(hx, hy, hr, hr, 180, 360), fill=cap)
    d.polygon(arc(hx + 7, hy - 1, 4.5, 4.5), fill=light)
    d.polygon(arc(hx + 8, hy - 1, 2.6, 2.6), fill=(16, 16, 16, 255))
    return img


def _background(domain: _Domain, rng: np.random.Generator, size: int) -> Image.Image:
    """Gradient + low-frequency texture (vectorised) with a few branches and leaves."""
    palette = np.array(domain.palettes[int(rng.integers(len(domain.palettes)))], np.float32)
    base = palette * rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    ramp = np.linspace(1.08, 0.9, size, dtype=np.float32)[:, None, None]
    coarse = Image.fromarray(rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8))
    texture = np.asarray(coarse.resize((size, size), Image.Resampling.BILINEAR), np.float32)
    pixels = base * ramp * (1 + domain.texture * (texture / 127.5 - 1))
    bg = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(bg)
    for _ in range(int(rng.integers(domain.clutter[0], domain.clutter[1] + 1))):
        x0, y0, x1, y1 = (rng.uniform(-0.1, 1.1, size=4) * size).tolist()
        tone = (base * rng.uniform(0.35, 0.8)).astype(int)
        if rng.random() < 0.5:
            brown = (int(tone[0] * 0.9 + 30), int(tone[1] * 0.7 + 15), int(tone[2] * 0.5))
            width = max(1, round(rng.uniform(1, 4) * size / 96))
            d.line([(x0, y0), (x1, y1)], fill=brown, width=width)
        else:
            r = rng.uniform(0.03, 0.09) * size
            leaf = (int(tone[0] * 0.6), int(tone[1] * 1.1 + 20), int(tone[2] * 0.6))
            d.ellipse([(x0 - r, y0 - r / 2), (x0 + r, y0 + r / 2)], fill=leaf)
    return bg


def _render(
    species: tuple[int, ...], domain: _Domain, rng: np.random.Generator, image_size: int
) -> Image.Image:
    """One photo of a species: bird under a random pose on a random background."""
    size = 2 * image_size  # the bird is drawn at 2x and box-downsampled: cheap anti-aliasing
    bird = _draw_bird(species, rng, _pose(rng, domain, size), size)
    bird = bird.resize((image_size, image_size), Image.Resampling.BOX)  # premultiplied: clean
    scene = _background(domain, rng, image_size)
    scene.paste(bird, (0, 0), bird)

    gain = rng.uniform(*domain.brightness) * (1 + rng.uniform(-domain.cast, domain.cast, size=3))
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-8
    ramp = np.linspace(-0.12, 0.12, image_size, dtype=np.float32)
    light = 1 + direction[0] * ramp[None, :] + direction[1] * ramp[:, None]
    noise = rng.standard_normal((image_size, image_size, 3), dtype=np.float32) * domain.noise
    pixels = np.asarray(scene, np.float32) * light[..., None] * gain.astype(np.float32) + noise
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def _params(**kwargs: object) -> dict[str, object]:
    return {"generator": "synthetic-birds", "version": GENERATOR_VERSION, **kwargs}


def _is_complete(out_dir: Path, params: dict[str, object]) -> bool:
    meta, index = out_dir / "generator.json", out_dir / "index.csv"
    if not (meta.is_file() and index.is_file()):
        return False
    try:
        return json.loads(meta.read_text()).get("params") == params
    except json.JSONDecodeError:
        return False


def generate_synthetic_birds(
    out_dir: Path,
    seed: int = 0,
    n_classes: int = 48,
    images_per_class: int = 24,
    image_size: int = 96,
    unlabeled_per_class: int = 24,
    labeled_fraction_classes: float = 0.5,
    unlabeled_extra_classes: int = 24,
    domain_shift: float = 1.0,
) -> Path:
    """Write the synthetic bird set to `out_dir` (reused when already complete) and return it.

    n_classes: labeled-world species; the first `labeled_fraction_classes` of them are `train`
    classes, the rest `test` classes (class-disjoint). `unlabeled_per_class` unlabeled images
    are drawn for every train class and for `unlabeled_extra_classes` species seen nowhere
    else, under a domain shift of strength `domain_shift` (0 = same look as labeled).
    Layout: images/<class_name>/<n>.jpg, index.csv (path,label,class_name,split; path
    relative to out_dir), generator.json (parameters, species attributes, counts).
    """
    out_dir = Path(out_dir)
    n_train = round(n_classes * labeled_fraction_classes)
    if n_classes < 2 or not 1 <= n_train < n_classes:
        raise ValueError(
            f"n_classes={n_classes} with labeled_fraction_classes={labeled_fraction_classes} "
            f"gives {n_train} train and {n_classes - n_train} test classes; both must be >= 1"
        )
    if images_per_class < 2:
        raise ValueError(f"images_per_class={images_per_class}: need >= 2 to form positives")
    if image_size < 32:
        raise ValueError(f"image_size={image_size} is too small to draw a bird; use >= 32")
    if unlabeled_per_class < 0 or unlabeled_extra_classes < 0:
        raise ValueError("unlabeled_per_class and unlabeled_extra_classes must be >= 0")
    if not 0 <= domain_shift <= 1:
        raise ValueError(f"domain_shift={domain_shift} must lie in [0, 1]")

    params = _params(
        seed=seed,
        n_classes=n_classes,
        images_per_class=images_per_class,
        image_size=image_size,
        unlabeled_per_class=unlabeled_per_class,
        labeled_fraction_classes=labeled_fraction_classes,
        unlabeled_extra_classes=unlabeled_extra_classes,
        domain_shift=domain_shift,
    )
    if _is_complete(out_dir, params):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "generator.json").exists():
        raise FileExistsError(
            f"{out_dir} exists and is not a generated synthetic set; "
            "choose an empty or new directory so nothing of yours is overwritten"
        )

    total = n_classes + unlabeled_extra_classes
    rng = np.random.default_rng([seed, 0])
    # Train classes should show every attribute value, or the model cannot learn to see it.
    can_cover = n_train >= max(len(values) for values in ATTRIBUTES)
    for _ in range(100):
        species = _sample_species(rng, total)
        species = [species[i] for i in rng.permutation(total)]
        if not can_cover or _covers_all_values(species[:n_train]):
            break
    names = [_class_name(i, s) for i, s in enumerate(species)]
    shifted = _shifted_domain(domain_shift)

    jobs = []  # (class_id, image number, split, domain)
    for cid in range(total):
        n = 0
        if cid < n_classes:
            split = "train" if cid < n_train else "test"
            jobs += [(cid, n + i, split, LABELED) for i in range(images_per_class)]
            n += images_per_class
        if cid < n_train or cid >= n_classes:
            jobs += [(cid, n + i, "unlabeled", shifted) for i in range(unlabeled_per_class)]

    with atomic_dir(out_dir) as tmp:
        rows = []
        for cid, n, split, domain in jobs:
            image_rng = np.random.default_rng([seed, 1, cid, n])
            image = _render(species[cid], domain, image_rng, image_size)
            rel = Path("images") / names[cid] / f"{n}.jpg"
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            image.save(tmp / rel, quality=JPEG_QUALITY)
            rows.append((rel.as_posix(), cid, names[cid], split))
        with open(tmp / "index.csv", "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["path", "label", "class_name", "split"])
            writer.writerows(rows)
        counts = {
            split: sum(1 for r in rows if r[3] == split) for split in ("train", "test", "unlabeled")
        }
        write_json(
            tmp / "generator.json",
            {
                "params": params,
                "counts": counts,
                "classes": [
                    {
                        "label": cid,
                        "class_name": names[cid],
                        "role": "train"
                        if cid < n_train
                        else "test"
                        if cid < n_classes
                        else "extra",
                        "attributes": dict(
                            zip(
                                ("hue", "wing", "beak", "crest", "tail", "cap"),
                                (v[i] for v, i in zip(ATTRIBUTES, species[cid], strict=True)),
                                strict=True,
                            )
                        ),
                    }
                    for cid in range(total)
                ],
            },
        )
    return out_dir
