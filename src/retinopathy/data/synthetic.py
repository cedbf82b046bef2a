"""The painter of the built-in demo: synthetic fundus photographs, one grade at a time.

`retinopathy demo-data` (stages/demo_data.py) writes these as a small,
deterministic dataset in the course layout, so the whole pipeline runs on a
laptop CPU without a download. The images are drawn, not photographed: a
lit orange-red fundus with an optic disc, a macula and branching vessels,
plus lesions whose kind and number follow the clinical scale (ICDR: none,
mild, moderate, severe non-proliferative, proliferative). Lesions are drawn
larger than life so that a small network can learn them from a few hundred
images at 128 px; the demo shows that the pipeline works, not what real
images look like. ``subtlety`` (params.yaml's ``demo.subtlety``) takes some of
that back at the borderline grades (mild and moderate): smaller, fainter and
fewer lesions, so that those grades overlap as real ones do and a grader's
referable-DR AUC is no longer 1.000. Severe and proliferative eyes stay plainly
diseased, as they are in life.

The demo's images are patients' two eyes (:func:`pair_counts`: as often of
equal grade as in the course's data). Each eye is painted on its own, as a
left or right eye, so the two are alike only through their grades.

Geometry is drawn in the orientation of a right eye (optic disc on the right)
and mirrored for a left eye. Masks are drawn with Pillow at twice the output
size and reduced, which anti-aliases thin vessels and tiny dots cheaply.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from retinopathy.core.contract import NUM_GRADES
from retinopathy.core.errors import RetinopathyError

# The grades of the two eyes of the patients with both eyes in the course's train split
# (train_img.csv / train_label.csv of the lab's lists: 11,241 of its 16,859 patients), as
# (lower grade, higher grade): count. 9,795 pairs (87.1%) share a grade; 970 differ by one
# grade, 456 by two, 8 by three and 12 by four. Their images hold 73.5% grade 0, as the
# whole split does. The demo draws its patients from this table.
COURSE_TRAIN_PAIRS: dict[tuple[int, int], int] = {
    (0, 0): 7783,
    (0, 1): 548,
    (0, 2): 393,
    (0, 3): 4,
    (0, 4): 12,
    (1, 1): 387,
    (1, 2): 252,
    (1, 3): 3,
    (1, 4): 4,
    (2, 2): 1252,
    (2, 3): 121,
    (2, 4): 60,
    (3, 3): 191,
    (3, 4): 49,
    (4, 4): 182,
}

_SS = 2  # supersampling factor of the drawn masks
MODERATE = 2  # the highest of the borderline grades that ``subtlety`` makes subtler

# What ``subtlety`` 1 does to a mild or moderate eye (0 draws the lesions as they always
# were): every lesion this share smaller and this share fainter, and their counts down by
# these shares (the fewest by more than the most, so some moderate eyes hold only a lesion
# or two and pass for mild, as borderline eyes do for human graders).
SUBTLE_SHRINK = 0.3
SUBTLE_FADE = 0.4
SUBTLE_FEWEST = 1.0
SUBTLE_MOST = 0.4

Point = tuple[float, float]


def pair_counts(patients: int) -> dict[tuple[int, int], int]:
    """Split ``patients`` over the grade pairs of their two eyes like the course's train split.

    Args:
        patients: Number of patients, >= 0.

    Returns:
        (lower grade, higher grade): count, summing to ``patients``, proportional to
        :data:`COURSE_TRAIN_PAIRS` with largest-remainder rounding; when ``patients >= 5``
        every grade occurs, with a patient of two equal eyes at least (taken from the commonest pair).
    """
    if isinstance(patients, bool) or not isinstance(patients, int) or patients < 0:
        raise RetinopathyError(f"pair_counts: patients must be an integer >= 0, got {patients!r}")
    kinds = list(COURSE_TRAIN_PAIRS)
    whole = sum(COURSE_TRAIN_PAIRS.values())
    quotas = [patients * COURSE_TRAIN_PAIRS[kind] / whole for kind in kinds]
    counts = [math.floor(q) for q in quotas]
    # Largest remainder first; ties go to the earlier pair, so the result is unique.
    order = sorted(range(len(kinds)), key=lambda k: (-(quotas[k] - counts[k]), k))
    for k in order[: patients - sum(counts)]:
        counts[k] += 1
    if patients >= NUM_GRADES:
        for grade in range(NUM_GRADES):
            if not any(c and grade in kind for kind, c in zip(kinds, counts, strict=True)):
                counts[counts.index(max(counts))] -= 1
                counts[kinds.index((grade, grade))] = 1
    return dict(zip(kinds, counts, strict=True))


class _Canvas:
    """Named alpha masks drawn with Pillow at ``_SS`` times the output size."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.layers: dict[str, tuple[Image.Image, ImageDraw.ImageDraw]] = {}

    def _draw(self, layer: str) -> ImageDraw.ImageDraw:
        if layer not in self.layers:
            image = Image.new("L", (self.size * _SS, self.size * _SS), 0)
            self.layers[layer] = (image, ImageDraw.Draw(image))
        return self.layers[layer][1]

    def disc(self, layer: str, x: float, y: float, r: float) -> None:
        x, y, r = x * _SS, y * _SS, max(r * _SS, 0.5)
        self._draw(layer).ellipse([x - r, y - r, x + r, y + r], fill=255)

    def ellipse(self, layer: str, x: float, y: float, a: float, b: float, theta: float) -> None:
        t = np.linspace(0, 2 * np.pi, 20, endpoint=False)
        c, s = math.cos(theta), math.sin(theta)
        u, v = a * np.cos(t), b * np.sin(t)
        pts = np.column_stack((x + c * u - s * v, y + s * u + c * v)) * _SS
        self._draw(layer).polygon(pts.ravel().tolist(), fill=255)

    def line(self, layer: str, p: Point, q: Point, width: float) -> None:
        w = max(1, round(width * _SS))
        pts = [(p[0] * _SS, p[1] * _SS), (q[0] * _SS, q[1] * _SS)]
        self._draw(layer).line(pts, fill=255, width=w)
        if w >= 3:  # round joints, or thick polylines show notches at each bend
            self.disc(layer, q[0], q[1], w / 2 / _SS)

    def clear_above(self, layer: str, y: float) -> None:
        self._draw(layer).rectangle([0, 0, self.size * _SS, y * _SS], fill=0)

    def alpha(self, layer: str, blur: float = 0.0) -> np.ndarray | None:
        """The layer reduced to output size as float32 [size, size] in [0, 1], or None."""
        if layer not in self.layers:
            return None
        image = self.layers[layer][0].reduce(_SS)
        if blur > 0:
            image = image.filter(ImageFilter.GaussianBlur(blur))
        return np.asarray(image, dtype=np.float32) / 255.0


def _uniform_in_fundus(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    r: float,
    avoid: tuple[float, float, float],
    quadrant: int | None = None,
    spread: float = 0.85,
) -> Point:
    """A random point in the fundus (optionally one quadrant), away from the optic disc."""
    while True:
        rho = r * spread * math.sqrt(rng.uniform(0.02, 1.0))
        if quadrant is None:
            phi = rng.uniform(0, 2 * np.pi)
        else:
            phi = (quadrant + rng.uniform(0.05, 0.95)) * np.pi / 2
        x, y = cx + rho * math.cos(phi), cy + rho * math.sin(phi)
        if math.hypot(x - avoid[0], y - avoid[1]) > avoid[2]:
            return x, y


def _grow_vessels(
    rng: np.random.Generator,
    start: Point,
    angle: float,
    width: float,
    pull_to: float,
    pull: float,
    fundus: tuple[float, float, float],
) -> list[tuple[Point, Point, float, int]]:
    """One vessel tree as (from, to, width, depth) segments: a random walk that tapers and forks.

    The trunk bends toward direction ``pull_to`` at rate ``pull``, which makes the
    temporal arcades curve around the macula; branches wander freely.
    """
    cx, cy, r = fundus
    step, min_width = 0.035 * r, 0.005 * r
    segments: list[tuple[Point, Point, float, int]] = []
    stack = [(start, angle, width, 0)]
    while stack:
        (x, y), a, w, depth = stack.pop()
        for _ in range(80):
            if w < min_width:
                break
            target = pull_to if depth == 0 else a
            a += pull * math.remainder(target - a, 2 * math.pi) + rng.normal(0.0, 0.12)
            nx, ny = x + step * math.cos(a), y + step * math.sin(a)
            if math.hypot(nx - cx, ny - cy) > 0.97 * r:
                break
            segments.append(((x, y), (nx, ny), w, depth))
            x, y, w = nx, ny, w * 0.975
            if depth < 4 and rng.random() < 0.13:
                side = 1.0 if rng.random() < 0.5 else -1.0
                stack.append(((x, y), a + side * rng.uniform(0.5, 1.0), w * 0.7, depth + 1))
                w *= 0.9
    return segments


def _blot(canvas: _Canvas, layer: str, rng: np.random.Generator, p: Point, radius: float) -> None:
    """An irregular blob: a few overlapping random ellipses."""
    for _ in range(int(rng.integers(2, 5))):
        ox, oy = rng.normal(0.0, 0.35 * radius, size=2)
        a = radius * rng.uniform(0.55, 1.0)
        canvas.ellipse(layer, p[0] + ox, p[1] + oy, a, a * rng.uniform(0.6, 1.0), rng.uniform(0, np.pi))


def _count_range(low: int, high: int, subtlety: float, least: int) -> tuple[int, int]:
    """``rng.integers``' bounds of a lesion count at a borderline grade, fewer with ``subtlety``.

    The same bounds at 0; at 1 the fewest down by :data:`SUBTLE_FEWEST` (to ``least``)
    and the most by :data:`SUBTLE_MOST`, so the counts spread down towards the grade below.
    """
    fewest = max(least, round(low * (1.0 - SUBTLE_FEWEST * subtlety)))
    return fewest, max(fewest + 1, round(high * (1.0 - SUBTLE_MOST * subtlety)))


def _draw_lesions(
    canvas: _Canvas,
    grade: int,
    rng: np.random.Generator,
    fundus: tuple[float, float, float],
    disc: tuple[float, float, float],
    macula: Point,
    veins: list[tuple[Point, Point, float, int]],
    subtle: bool = False,
    subtlety: float = 0.0,
) -> None:
    """Draw the lesions of ``grade`` (cumulative along the clinical scale) onto ``canvas``.

    ``subtlety`` 0 draws exactly what this function always drew (the same calls on
    ``rng``): the counts' bounds and the sizes are only scaled.
    """
    if grade == 0:
        return
    cx, cy, r = fundus
    avoid = (disc[0], disc[1], 1.6 * disc[2])
    borderline = grade <= MODERATE
    small = 1.0 - SUBTLE_SHRINK * subtlety if borderline else 1.0

    def anywhere(quadrant: int | None = None) -> Point:
        return _uniform_in_fundus(rng, cx, cy, r, avoid, quadrant)

    def count(low: int, high: int, least: int = 1) -> int:
        if borderline and subtlety > 0:
            low, high = _count_range(low, high, subtlety, least)
        return int(rng.integers(low, high))

    # Microaneurysms: dark red dots, the only sign of grade 1. Drawn much larger
    # than real ones (1.5-2 px radius at 128 px, wider than most vessels) so that
    # they survive downscaling and do not pass for vessel ends.
    n_ma = {1: (3, 8) if subtle else (6, 13), 2: (8, 18), 3: (15, 30), 4: (15, 30)}[grade]
    size_ma = (0.02, 0.03) if subtle and grade == 1 else (0.026, 0.036)
    for _ in range(count(*n_ma)):
        canvas.disc("haem", *anywhere(), small * r * rng.uniform(*size_ma))
    if grade < 2:
        return
    # Blot haemorrhages; severe and worse: in all four quadrants, plus flame-shaped
    # ones lying along the nerve fibres (radial from the disc).
    if grade == 2:
        blots = [anywhere() for _ in range(count(3, 8))]
    else:
        blots = [anywhere(q) for q in range(4) for _ in range(int(rng.integers(3, 6)))]
        for _ in range(int(rng.integers(3, 7))):
            x, y = anywhere()
            canvas.ellipse(
                "haem",
                x,
                y,
                small * r * rng.uniform(0.05, 0.08),
                small * r * rng.uniform(0.015, 0.025),
                math.atan2(y - disc[1], x - disc[0]),
            )
    for p in blots:
        _blot(canvas, "haem", rng, p, small * r * rng.uniform(0.03, 0.055))
    # Hard exudates: bright yellow specks in clusters around the posterior pole (a
    # subtle moderate eye may have none).
    for _ in range(count(1, 4, least=0) if grade == 2 else int(rng.integers(1, 6))):
        ccx = macula[0] + rng.normal(0.0, 0.3 * r)
        ccy = macula[1] + rng.normal(0.0, 0.3 * r)
        for _ in range(int(rng.integers(4, 10))):
            x, y = ccx + rng.normal(0.0, 0.07 * r), ccy + rng.normal(0.0, 0.07 * r)
            if math.hypot(x - cx, y - cy) < 0.9 * r:
                canvas.disc("exudate", x, y, small * r * rng.uniform(0.015, 0.03))
    if grade < 3:
        return
    # Cotton-wool spots: soft pale patches near the arcades (blurred when composited).
    for _ in range(int(rng.integers(3, 7))):
        x, y = _uniform_in_fundus(rng, cx, cy, r, avoid, spread=0.6)
        _blot(canvas, "cotton", rng, (x, y), r * rng.uniform(0.06, 0.1))
    # Venous beading: sausage-like swellings along stretches of the main veins.
    trunk = [s for s in veins if s[3] == 0]
    for i, (_, q, w, _) in enumerate(trunk):
        if i % 3 == 0 and rng.random() < 0.6:
            canvas.disc("vein", q[0], q[1], w * rng.uniform(0.9, 1.3))
    if grade < 4:
        return
    # New vessels: tufts of fine tortuous loops at the disc (NVD) or elsewhere (NVE).
    for k in range(int(rng.integers(2, 5))):
        if k == 0 and rng.random() < 0.6:
            tx, ty = disc[0] + rng.normal(0, disc[2]), disc[1] + rng.normal(0, disc[2])
        else:
            tx, ty = anywhere()
        for _ in range(int(rng.integers(20, 35))):
            x, y = tx + rng.normal(0.0, 0.07 * r), ty + rng.normal(0.0, 0.07 * r)
            a = rng.uniform(0, 2 * np.pi)
            for _ in range(int(rng.integers(4, 10))):
                a += rng.normal(0.0, 0.9)
                nx, ny = x + 0.02 * r * math.cos(a), y + 0.02 * r * math.sin(a)
                canvas.line("nv", (x, y), (nx, ny), r * rng.uniform(0.008, 0.014))
                x, y = nx, ny
        canvas.disc("fibrous", tx, ty, 0.14 * r)
    # Pre-retinal haemorrhage: a boat-shaped pool with a flat top (the fluid level).
    if rng.random() < 0.6:
        x, y = anywhere()
        a, b = r * rng.uniform(0.12, 0.18), r * rng.uniform(0.08, 0.12)
        canvas.ellipse("preretinal", x, y, a, b, 0.0)
        canvas.clear_above("preretinal", y - 0.3 * b)


def render_fundus(
    grade: int,
    rng: np.random.Generator,
    size: int,
    *,
    eye: str | None = None,
    subtle: bool = False,
    subtlety: float = 0.0,
) -> np.ndarray:
    """One synthetic fundus photograph.

    Everything that does not depend on the grade (framing, colours, disc, vessels,
    noise) is drawn from ``rng`` before the lesions, so the same generator state
    gives the same eye at every grade, differing only by its lesions.

    Args:
        grade: Retinopathy grade 0-4 (none, mild, moderate, severe, proliferative).
        rng: Source of all randomness.
        size: Width and height in pixels (>= 16).
        eye: "left" or "right"; None draws one from ``rng``. A left eye is the mirror image.
        subtle: Draw grade 1 as it looks: a few small microaneurysms (not a dozen large ones).
        subtlety: 0 (the lesions as they always were) to 1: at grades 1-2, lesions up to
            :data:`SUBTLE_SHRINK` smaller and :data:`SUBTLE_FADE` fainter, and fewer. It changes
            only the lesions: the same generator state still gives the same eye.

    Returns:
        uint8 array [size, size, 3], RGB.
    """
    if grade not in range(NUM_GRADES):
        raise RetinopathyError(f"render_fundus: grade must be 0-4, got {grade!r}")
    if size < 16:
        raise RetinopathyError(f"render_fundus: size must be >= 16 pixels, got {size!r}")
    if eye is None:
        eye = "left" if rng.random() < 0.5 else "right"
    if eye not in ("left", "right"):
        raise RetinopathyError(f"render_fundus: eye must be 'left' or 'right', got {eye!r}")
    if isinstance(subtlety, bool) or not isinstance(subtlety, (int, float)) or not 0 <= subtlety <= 1:
        raise RetinopathyError(f"render_fundus: subtlety must be a number from 0 to 1, got {subtlety!r}")

    # Framing and colours vary per image, as between cameras and patients.
    r = size * rng.uniform(0.42, 0.47)
    cx, cy = size / 2 + rng.normal(0.0, 0.015 * size, size=2)
    fundus = (cx, cy, r)
    base = np.array(
        [rng.uniform(0.8, 0.95), rng.uniform(0.3, 0.42), rng.uniform(0.1, 0.2)], dtype=np.float32
    ) * rng.uniform(0.85, 1.1)
    vignette, tilt = rng.uniform(0.45, 0.65), rng.normal(0.0, 0.06, size=2)
    dr = r * rng.uniform(0.085, 0.1)
    disc = (cx + r * rng.uniform(0.3, 0.36), cy + r * rng.normal(0.0, 0.04), dr)
    macula = (cx - r * rng.uniform(0.02, 0.08), cy + r * rng.normal(0.0, 0.03))

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    d = np.hypot(xx - cx, yy - cy) / r
    inside = np.clip((1.0 - d) * r + 0.5, 0.0, 1.0)[..., None]  # ~1 px anti-aliased rim
    shade = 1.0 - vignette * np.minimum(d, 1.0) ** 2.5 + tilt[0] * (xx - cx) / r + tilt[1] * (yy - cy) / r
    # Low-frequency mottling of the choroid: a coarse noise grid, upsampled smoothly.
    coarse = Image.fromarray(rng.normal(0.0, 1.0, size=(6, 6)).astype(np.float32))
    mottle = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    albedo = base * (1.0 + 0.04 * mottle)[..., None]
    dm = np.hypot(xx - macula[0], yy - macula[1]) / (0.13 * r)
    albedo *= (1.0 - 0.25 * np.exp(-0.5 * dm**2))[..., None]
    dd = np.hypot(xx - disc[0], yy - disc[1]) / dr
    albedo = _mix(albedo, np.clip((1.0 - dd) * dr / 1.5 + 0.5, 0, 1), np.array([1.05, 0.85, 0.55]))
    albedo = _mix(albedo, np.exp(-0.5 * (dd / 0.35) ** 2), np.array([1.1, 1.0, 0.8]))

    canvas = _Canvas(size)
    veins: list[tuple[Point, Point, float, int]] = []
    # Four arcades (superior/inferior, temporal/nasal), each with a vein and an artery.
    for sign in (-1.0, 1.0):
        for kind, width, offset in (("vein", 0.028, 0.0), ("artery", 0.02, 0.15)):
            start = (disc[0] + rng.normal(0, 0.2 * dr), disc[1] + sign * 0.3 * dr)
            temporal = np.pi - sign * (1.1 + offset + rng.normal(0, 0.1))
            nasal = sign * (0.9 + offset + rng.normal(0, 0.15))
            for angle, pull_to, pull in ((temporal, np.pi, 0.07), (nasal, 0.0, 0.03)):
                segs = _grow_vessels(rng, start, angle, width * r, pull_to, pull, fundus)
                for p, q, w, _ in segs:
                    canvas.line(kind, p, q, w)
                if kind == "vein":
                    veins += segs
    noise = rng.normal(0.0, 1.2 / 255, size=(size, size, 3)).astype(np.float32)

    _draw_lesions(canvas, grade, rng, fundus, disc, macula, veins, subtle, subtlety)
    fibrous = canvas.alpha("fibrous", blur=0.04 * r)
    faint = 1.0 - SUBTLE_FADE * subtlety if grade <= MODERATE else 1.0  # borderline eyes only
    layers: list[tuple[str, float, np.ndarray, float]] = [
        # (layer, blur in px, colour, opacity) in drawing order, back to front.
        ("cotton", 0.02 * r, np.array([1.0, 0.95, 0.88]), 0.9 * faint),
        ("vein", 0.4, base * [0.6, 0.32, 0.45], 0.95),
        ("artery", 0.4, base * [0.82, 0.55, 0.6], 0.9),
        ("haem", 0.4, base * [0.35, 0.12, 0.25], 0.97 * faint),
        ("exudate", 0.3, np.array([1.15, 1.0, 0.42]), 1.0 * faint),
        ("nv", 0.3, base * [0.75, 0.25, 0.35], 1.0),
        ("preretinal", 1.0, base * [0.38, 0.1, 0.2], 0.95),
    ]
    if fibrous is not None:
        albedo = _mix(albedo, 0.5 * fibrous, np.array([0.95, 0.85, 0.75]))
    for name, blur, colour, opacity in layers:
        alpha = canvas.alpha(name, blur)
        if alpha is not None:
            albedo = _mix(albedo, opacity * alpha, colour)

    image = albedo * (shade[..., None] * inside) + 0.012 * (1.0 - inside) + noise
    image = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image[:, ::-1]) if eye == "left" else image


def _mix(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Alpha-blend ``colour`` over ``image`` (float32 [H, W, 3]) with ``alpha`` [H, W]."""
    a = alpha[..., None].astype(np.float32)
    return image * (1.0 - a) + np.asarray(colour, dtype=np.float32) * a


def vary(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What differs between cameras, photographers and patients, applied to a rendered photograph.

    The field of view: a rotation of the whole picture (a fundus has no up), a
    zoom that may cut the fundus at the frame, and an off-centre framing; then
    exposure and gamma, a colour cast, focus (blur) and sensor noise. All drawn
    from ``rng``, so the same generator gives the same photograph.

    Args:
        image: uint8 [size, size, 3], as :func:`render_fundus` returns.
        rng: Source of all randomness (its own stream: the drawing's is untouched).
    """
    size = image.shape[0]
    # The framing first, while the surround is still render_fundus's, so the turned frame
    # leaves no edge. One affine map: output (x, y) samples the input at
    # C + R(-angle) (out - C - shift) / zoom, C the centre (the map PIL's AFFINE takes).
    angle, zoom = math.radians(rng.uniform(0.0, 360.0)), rng.uniform(0.88, 1.15)
    shift = rng.normal(0.0, 0.03 * size, size=2)
    c, s_ = math.cos(angle) / zoom, math.sin(angle) / zoom
    centre = size / 2
    ox, oy = centre + shift[0], centre + shift[1]
    matrix = (c, s_, centre - c * ox - s_ * oy, -s_, c, centre + s_ * ox - c * oy)
    background = round(0.012 * 255)  # render_fundus's dark surround
    photo = Image.fromarray(image).transform(
        (size, size),
        Image.Transform.AFFINE,
        matrix,
        resample=Image.Resampling.BICUBIC,
        fillcolor=(background,) * 3,
    )
    # Exposure, gamma and a colour cast; then focus and sensor noise.
    pixels = np.asarray(photo, dtype=np.float32) / 255.0
    pixels = pixels * rng.uniform(0.7, 1.3) * rng.uniform(0.88, 1.12, size=3).astype(np.float32)
    pixels = np.clip(pixels, 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    photo = Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8))
    blur = rng.uniform(0.0, 1.6) * size / 256
    if blur > 0.25:
        photo = photo.filter(ImageFilter.GaussianBlur(blur))
    noisy = np.asarray(photo, dtype=np.float32) + rng.normal(0.0, rng.uniform(0.5, 3.0), size=image.shape)
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
