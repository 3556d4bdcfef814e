"""The normal anatomy of the synthetic abdomen: a tissue map on the voxel grid, varied by seed.

The phantom spans the pelvis floor (relative position p = 0) to the lung bases (p = 1), as real abdomen/pelvis
CT does, so that a position-conditioned model sees the same sequence of anatomy along z: pelvic bones, bladder
and rectum; iliac crests, bowel and psoas; kidneys; liver, spleen, stomach, pancreas, aorta/IVC, vertebrae and
ribs; the liver dome under the lung bases. Organ positions along z are set in units of p (the volume always
covers the whole range); in-plane sizes are in millimetres, so the field of view must hold the body.

Shapes are painted onto a *tissue* map (finer than the published label map: kidney cortex vs medulla, cortical
vs cancellous bone, bowel wall vs content...), later drawn structures overwriting earlier ones. Every organ
outline is wobbled by a smooth random field so that no two seeds give the same silhouettes.

Geometry: array axes (z, y, x) with identity direction in LPS, which is the canonical axial order of
``docs/design.md``: z towards superior, y (rows) towards posterior, x (columns) towards the patient's left.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from AnomalyScoutLib.errors import ConfigError
from AnomalyScoutLib.phantom.noise import smooth_field

__all__ = ["LABEL_NAMES", "LEVELS", "Anatomy", "PhantomGrid", "Tissue", "build_anatomy", "tissue_to_label"]

#: Published label codes of the phantom's label map.
LABEL_NAMES: dict[int, str] = {
    0: "background (air, table)",
    1: "body (fat and tissue not listed)",
    2: "liver",
    3: "spleen",
    4: "kidneys",
    5: "pancreas",
    6: "stomach and bowel",
    7: "bladder",
    8: "aorta, IVC and large vessels",
    9: "muscle",
    10: "bone",
    11: "lung",
    12: "gallbladder",
    13: "heart",
}


class Tissue(enum.IntEnum):
    """Tissue classes: each has its own HU distribution (see ``case.TISSUE_HU``) and one label code."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    LIVER = 3
    LIVER_VESSEL = 4
    SPLEEN = 5
    KIDNEY_CORTEX = 6
    KIDNEY_MEDULLA = 7
    RENAL_SINUS = 8
    PANCREAS = 9
    GI_WALL = 10
    GI_FLUID = 11
    GI_GAS = 12
    STOOL = 13
    BLADDER = 14
    ARTERY = 15
    VEIN = 16
    BONE_CORTICAL = 17
    BONE_CANCELLOUS = 18
    DISC = 19
    CSF = 20
    LUNG = 21
    LUNG_VESSEL = 22
    HEART = 23
    GALLBLADDER = 24
    TABLE = 25
    FAT_STRAND = 26


_TISSUE_LABEL = {
    Tissue.AIR: 0, Tissue.TABLE: 0,
    Tissue.FAT: 1, Tissue.FAT_STRAND: 1, Tissue.CSF: 1, Tissue.DISC: 1,
    Tissue.LIVER: 2, Tissue.LIVER_VESSEL: 2,
    Tissue.SPLEEN: 3,
    Tissue.KIDNEY_CORTEX: 4, Tissue.KIDNEY_MEDULLA: 4, Tissue.RENAL_SINUS: 4,
    Tissue.PANCREAS: 5,
    Tissue.GI_WALL: 6, Tissue.GI_FLUID: 6, Tissue.GI_GAS: 6, Tissue.STOOL: 6,
    Tissue.BLADDER: 7,
    Tissue.ARTERY: 8, Tissue.VEIN: 8,
    Tissue.MUSCLE: 9,
    Tissue.BONE_CORTICAL: 10, Tissue.BONE_CANCELLOUS: 10,
    Tissue.LUNG: 11, Tissue.LUNG_VESSEL: 11,
    Tissue.GALLBLADDER: 12,
    Tissue.HEART: 13,
}  # fmt: skip
_LABEL_LOOKUP = np.array([_TISSUE_LABEL[t] for t in Tissue], dtype=np.uint8)


def tissue_to_label(tissue: np.ndarray) -> np.ndarray:
    """Map a tissue array to the published label codes (:data:`LABEL_NAMES`)."""
    return _LABEL_LOOKUP[tissue]


@dataclass(frozen=True)
class PhantomGrid:
    """The voxel grid, with physical coordinates centred in-plane on the field of view.

    ``x`` (mm, towards the patient's left), ``y`` (mm, towards posterior) and ``z`` (mm above the bottom of
    the volume) are shaped to broadcast against (z, y, x) arrays; ``p`` is the relative slice position (k +
    0.5) / nz.
    """

    shape_zyx: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]

    def __post_init__(self) -> None:
        if len(self.shape_zyx) != 3 or min(self.shape_zyx) < 1:
            raise ConfigError(f"phantom shape must be three positive sizes, got {self.shape_zyx}")
        if len(self.spacing_xyz) != 3 or min(self.spacing_xyz) <= 0:
            raise ConfigError(f"phantom spacing must be three positive values in mm, got {self.spacing_xyz}")

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return (self.spacing_xyz[2], self.spacing_xyz[1], self.spacing_xyz[0])

    @property
    def field_of_view_xy(self) -> tuple[float, float]:
        return (self.shape_zyx[2] * self.spacing_xyz[0], self.shape_zyx[1] * self.spacing_xyz[1])

    @property
    def length_z(self) -> float:
        return self.shape_zyx[0] * self.spacing_xyz[2]

    @property
    def x(self) -> np.ndarray:
        n = self.shape_zyx[2]
        return ((np.arange(n) - (n - 1) / 2) * self.spacing_xyz[0]).astype(np.float32)[None, None, :]

    @property
    def y(self) -> np.ndarray:
        n = self.shape_zyx[1]
        return ((np.arange(n) - (n - 1) / 2) * self.spacing_xyz[1]).astype(np.float32)[None, :, None]

    @property
    def z(self) -> np.ndarray:
        return ((np.arange(self.shape_zyx[0]) + 0.5) * self.spacing_xyz[2]).astype(np.float32)[:, None, None]

    @property
    def p(self) -> np.ndarray:
        return self.z / self.length_z

    @property
    def origin_xyz(self) -> tuple[float, float, float]:
        """World position of voxel (0, 0, 0), so that x = y = 0 is the centre of the field of view."""
        return (float(self.x.ravel()[0]), float(self.y.ravel()[0]), float(self.z.ravel()[0]))


@dataclass(frozen=True)
class Anatomy:
    """A generated normal anatomy: the tissue map and the body measures anomalies need to place themselves.

    Attributes:
        tissue: uint8 (z, y, x) array of :class:`Tissue` codes.
        body: bool mask of the patient (everything but air and table).
        cavity: bool mask of the peritoneal/thoracic cavity (inside the muscle wall).
        habitus: the seeded body measures (mm), recorded in the manifest.
    """

    grid: PhantomGrid
    tissue: np.ndarray
    body: np.ndarray
    cavity: np.ndarray
    habitus: dict[str, float]

    @property
    def labels(self) -> np.ndarray:
        return tissue_to_label(self.tissue)


def _smoothstep(p: np.ndarray, start: float, stop: float) -> np.ndarray:
    t = np.clip((p - start) / (stop - start), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _level(x, y, cx, cy, rx, ry, angle: float = 0.0, ry_posterior=None, exponent: float = 2.0) -> np.ndarray:
    """Normalised in-plane radius of a (super)ellipse: < 1 inside, 1 on the outline.

    ``ry_posterior`` gives a different half-height behind the centre (bodies are flatter at the back);
    ``angle`` (radians) rotates the ellipse.
    """
    dx, dy = x - cx, y - cy
    if angle:
        dx, dy = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
    if ry_posterior is not None:
        ry = np.where(dy < 0, ry, ry_posterior)
    return ((np.abs(dx) / rx) ** exponent + (np.abs(dy) / ry) ** exponent) ** (1.0 / exponent)


def _ellipsoid(
    grid: PhantomGrid, cx, cy, pc: float, rx, ry, rp: float, angle: float = 0.0, p=None
) -> np.ndarray:
    """Normalised radius of an ellipsoid whose z half-axis is given in units of relative position.

    ``p`` restricts the evaluation to some slices (their positions); by default all of the grid's.
    """
    in_plane = _level(grid.x, grid.y, cx, cy, rx, ry, angle)
    return np.sqrt(in_plane**2 + (((grid.p if p is None else p) - pc) / rp) ** 2)


def _slab(grid: PhantomGrid, low: float, high: float) -> slice:
    """The slices whose position lies in [low, high): structures confined there are computed on them only."""
    p = grid.p.ravel()
    return slice(int(np.searchsorted(p, low)), int(np.searchsorted(p, high)))


class _Painter:
    """Paints tissues in anatomical order; later structures overwrite earlier ones."""

    def __init__(self, grid: PhantomGrid, rng: np.random.Generator) -> None:
        self.grid = grid
        self.rng = rng
        self.tissue = np.zeros(grid.shape_zyx, dtype=np.uint8)
        self.wobble = smooth_field(rng, grid.shape_zyx, grid.spacing_zyx, 12.0)
        self.fine = smooth_field(rng, grid.shape_zyx, grid.spacing_zyx, 3.0)

    def paint(
        self, mask: np.ndarray, tissue: Tissue, where: np.ndarray | None = None, slab=slice(None)
    ) -> None:
        """Set ``tissue`` where ``mask`` (and ``where``) hold; masks of a ``slab`` cover its slices only."""
        if where is not None:
            mask = mask & where
        self.tissue[slab][mask] = tissue

    def shape(self, level: np.ndarray, wobble: float = 0.12) -> np.ndarray:
        return level + wobble * self.wobble < 1.0


def _segment_distance(x, y, start: tuple, end: tuple) -> np.ndarray:
    """Distance (mm) from each point to the segment ``start``-``end`` (endpoints may vary with z)."""
    ax, ay = start
    bx, by = end
    dx, dy = bx - ax, by - ay
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / np.maximum(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
    return np.hypot(x - (ax + t * dx), y - (ay + t * dy))


def _curve_distance(x, y, start: tuple, control: tuple, end: tuple, pieces: int = 6) -> np.ndarray:
    """Distance (mm) to a quadratic Bezier curve, approximated by ``pieces`` segments."""
    points = []
    for t in np.linspace(0.0, 1.0, pieces + 1):
        weights = ((1 - t) ** 2, 2 * (1 - t) * t, t**2)
        points.append(
            tuple(sum(w * c[axis] for w, c in zip(weights, (start, control, end))) for axis in (0, 1))
        )
    distances = [_segment_distance(x, y, a, b) for a, b in zip(points, points[1:])]
    return np.min(np.stack(np.broadcast_arrays(*distances)), axis=0)


#: Relative positions (p) of the landmarks along z, before the per-case jitter of some of them.
LEVELS: dict[str, float] = {
    "femoral_heads": 0.11,
    "bladder": 0.18,
    "sacrum_top": 0.4,
    "iliac_crest": 0.43,
    "aortic_bifurcation": 0.44,
    "liver_tip": 0.56,
    "transverse_colon": 0.62,
    "pancreas": 0.7,
    "spleen": 0.78,
    "stomach": 0.82,
}


def _habitus(rng: np.random.Generator, grid: PhantomGrid) -> dict[str, float]:
    fov_x, fov_y = grid.field_of_view_xy
    if min(fov_x, fov_y) < 240.0:
        raise ConfigError(
            f"the field of view ({fov_x:.0f} x {fov_y:.0f} mm) is too small for an abdomen (>= 240 mm): "
            "increase the in-plane spacing or the shape"
        )
    size = rng.uniform(0.0, 1.0)
    half_width = min(130.0 + 55.0 * size, 0.45 * fov_x)
    half_depth = min(half_width * rng.uniform(0.64, 0.8), 0.40 * fov_y)
    fat = float(np.clip(6.0 + 30.0 * size + rng.normal(0.0, 5.0), 4.0, 0.22 * half_depth))
    return {
        "half_width_mm": float(half_width),
        "half_depth_mm": float(half_depth),
        "fat_mm": fat,
        "muscle_mm": float(rng.uniform(8.0, 14.0)),
        "organ_scale": float(rng.uniform(0.85, 1.15)),
        "dome_p": float(rng.uniform(0.97, 1.03)),
        "kidney_p": float(rng.uniform(0.62, 0.7)),
        "bladder_fill": float(rng.uniform(0.5, 1.1)),
        "vertebra_phase_mm": float(rng.uniform(0.0, 32.0)),
        "table_y_mm": float(0.40 * fov_y),
    }


def build_anatomy(grid: PhantomGrid, rng: np.random.Generator) -> Anatomy:
    """Generate the tissue map of one normal abdomen (pelvis floor to lung bases) from ``rng``."""
    h = _habitus(rng, grid)
    pt = _Painter(grid, rng)
    x, y, p = grid.x, grid.y, grid.p
    s = h["organ_scale"]

    # Body outline: widest at the hips and the lower chest, narrower at the waist; flat back on the table.
    a = (h["half_width_mm"] * np.interp(p, [0.0, 0.15, 0.5, 0.75, 1.0], [1.0, 1.0, 0.92, 0.97, 1.0])).astype(
        np.float32
    )
    b = (h["half_depth_mm"] * np.interp(p, [0.0, 0.3, 0.6, 0.8, 1.0], [0.85, 0.88, 0.97, 0.96, 1.0])).astype(
        np.float32
    )
    yc = h["table_y_mm"] - 2.0 - b
    body = _level(x, y, 0.0, yc, a, b, exponent=2.15) + 0.015 * pt.wobble < 1.0
    pt.paint(body, Tissue.FAT)
    table_curve = h["table_y_mm"] + 0.0004 * x**2
    table = (y > table_curve + 2.0) & (y < table_curve + 6.0) & (np.abs(x) < 0.45 * grid.field_of_view_xy[0])
    pt.paint(table, Tissue.TABLE, where=~body)

    # Muscle wall under the subcutaneous fat (more fat in front), then the cavity inside it.
    fat, muscle = h["fat_mm"], h["muscle_mm"]
    wall = _level(x, y, 0.0, yc, a - fat, b - 1.2 * fat, ry_posterior=b - 0.5 * fat, exponent=2.15) < 1.0
    pt.paint(wall, Tissue.MUSCLE, where=body)
    vb_ry, vb_rx = 16.0 * s, 21.0 * s
    y_vb = h["table_y_mm"] - 2.0 - 0.5 * fat - 70.0 * s
    h["spine_front_y_mm"] = float(y_vb - vb_ry)
    pelvis_narrowing = 0.65 + 0.35 * _smoothstep(p, 0.1, 0.45)
    a_c = (a - fat - muscle) * pelvis_narrowing
    b_c = b - 1.2 * fat - muscle
    cavity_level = _level(x, y, 0.0, yc, a_c, b_c, ry_posterior=(y_vb + 20.0) - yc, exponent=2.15)
    cavity = pt.shape(cavity_level, 0.03) & wall
    pt.paint(cavity, Tissue.FAT)
    # Fibrous septa and small vessels: thin soft-tissue strands through all fat.
    pt.paint(np.abs(pt.fine - 1.0) < 0.1, Tissue.FAT_STRAND, where=pt.tissue == Tissue.FAT)

    _paint_bowel(pt, grid, cavity, a_c, b_c, yc)
    dome = _diaphragm(grid, h, a_c, b_c, yc)
    _paint_organs(pt, grid, h, cavity, dome, a_c, b_c, yc, y_vb)
    _paint_vessels(pt, grid, h, y_vb - vb_ry, a_c, b_c, yc)
    _paint_lungs_and_heart(pt, grid, cavity, dome, a_c, b_c, yc, y_vb)
    _paint_back_muscles(pt, grid, body, y_vb, vb_rx, vb_ry, s)
    # Intramuscular fat (marbling), as most adults' psoas, back and abdominal-wall muscles have.
    pt.paint(pt.fine > 1.3, Tissue.FAT, where=pt.tissue == Tissue.MUSCLE)
    _paint_spine(pt, grid, h, y_vb, vb_rx, vb_ry)
    _paint_pelvis(pt, grid, a, b, yc, y_vb, s)
    _paint_ribs(pt, grid, a_c, b_c, yc, cavity)
    # Nothing is drawn outside the skin except the table.
    pt.tissue[~body & (pt.tissue != Tissue.TABLE)] = Tissue.AIR
    return Anatomy(grid=grid, tissue=pt.tissue, body=body, cavity=cavity, habitus=h)


def _diaphragm(grid: PhantomGrid, h: dict[str, float], a_c, b_c, yc) -> np.ndarray:
    """Height (in p) of the diaphragm at each (y, x): two domes falling steeply into the posterior recesses.

    The lungs lie above it, so they appear first at the back and the sides, as the lung bases do.
    """
    x, y = grid.x, grid.y
    top = h["dome_p"]
    behind = np.maximum(y - (yc - 0.1 * b_c), 0.0) / b_c
    in_front = np.maximum((yc - 0.1 * b_c) - y, 0.0) / b_c
    domes = []
    for side, offset in ((-1.0, 0.0), (1.0, -0.025)):
        sideways = (x - side * 0.4 * a_c) / (0.7 * a_c)
        domes.append(top + offset - 0.12 * sideways**2 - 0.35 * behind**2 - 0.1 * in_front**2)
    return np.maximum(domes[0], domes[1])


def _paint_bowel(pt: _Painter, grid: PhantomGrid, cavity, a_c, b_c, yc) -> None:
    """Small-bowel loops in mesenteric fat (lower and mid abdomen), then the colon with mottled stool."""
    p, x, y = grid.p, grid.x, grid.y
    which = smooth_field(pt.rng, grid.shape_zyx, grid.spacing_zyx, 15.0)
    _paint_small_bowel(pt, grid, cavity & (p > 0.15) & (p < 0.72))
    colon_segments = [
        _ellipsoid(grid, -0.78 * a_c, yc + 0.05 * b_c, 0.52, 22.0, 22.0, 0.14),  # ascending
        _ellipsoid(grid, 0.8 * a_c, yc + 0.15 * b_c, 0.55, 17.0, 17.0, 0.17),  # descending
        _level(y, p * grid.length_z, yc - 0.6 * b_c, LEVELS["transverse_colon"] * grid.length_z, 20.0, 20.0)
        + np.maximum(np.abs(x) - 0.75 * a_c, 0.0) / 20.0,  # transverse
        _ellipsoid(grid, 0.25 * a_c, yc - 0.1 * b_c, 0.33, 22.0, 18.0, 0.06),  # sigmoid
        _ellipsoid(grid, 0.0, yc + 0.5 * b_c, 0.12, 17.0, 15.0, 0.16),  # rectum
    ]
    colon = np.min(np.stack(np.broadcast_arrays(*colon_segments)), axis=0)
    bubbles = (pt.fine > 0.6) | ((which > 0.3) & (y < yc - 0.3 * b_c))
    contents = pt.shape(colon + 0.18, 0.08) & cavity
    pt.paint(pt.shape(colon, 0.08), Tissue.GI_WALL, where=cavity)
    pt.paint(contents & ~bubbles, Tissue.STOOL)
    pt.paint(contents & bubbles, Tissue.GI_GAS)


def _paint_small_bowel(pt: _Painter, grid: PhantomGrid, region: np.ndarray) -> None:
    """Loops as randomly oriented capsules (tubes 18-28 mm wide): enhancing wall, fluid, sometimes gas on top.

    Each capsule is drawn in its own bounding box, so a hundred loops cost little more than one volume pass;
    where loops touch, the later wall separates them, as the walls of neighbouring loops do.
    """
    candidates = np.flatnonzero(region)
    if candidates.size == 0:
        return
    count = int(min(1.4 * candidates.size * float(np.prod(grid.spacing_xyz)) / 22000.0, 300))
    spacing = np.array(grid.spacing_zyx)
    axes = (grid.z.ravel(), grid.y.ravel(), grid.x.ravel())
    for _ in range(count):
        voxel = np.unravel_index(int(pt.rng.choice(candidates)), grid.shape_zyx)
        centre = np.array([axis[v] for axis, v in zip(axes, voxel)])
        direction = pt.rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        half, radius = pt.rng.uniform(15.0, 40.0), pt.rng.uniform(9.0, 14.0)
        reach = np.ceil((half + radius) / spacing).astype(int)
        box = tuple(slice(max(0, v - r), v + r + 1) for v, r in zip(voxel, reach))
        dz, dy, dx = (axes[0][box[0]][:, None, None] - centre[0], axes[1][box[1]][None, :, None] - centre[1],
                      axes[2][box[2]][None, None, :] - centre[2])  # fmt: skip
        t = np.clip(dz * direction[0] + dy * direction[1] + dx * direction[2], -half, half)
        distance = np.sqrt(
            (dz - t * direction[0]) ** 2 + (dy - t * direction[1]) ** 2 + (dx - t * direction[2]) ** 2
        )
        local, inside = pt.tissue[box], region[box]
        local[(distance < radius) & inside] = Tissue.GI_WALL
        lumen = (distance < radius - 2.5) & inside
        local[lumen] = Tissue.GI_FLUID
        if pt.rng.uniform() < 0.25:  # gas rises to the anterior (lower y) part of the loop
            local[lumen & (dy < -0.2 * radius)] = Tissue.GI_GAS


def _paint_organs(pt: _Painter, grid: PhantomGrid, h, cavity, dome, a_c, b_c, yc, y_vb) -> None:
    p, x, y = grid.p, grid.x, grid.y
    s = h["organ_scale"]
    below_dome = p < dome
    # Bladder (pelvis, anterior) with a seeded filling.
    fill = h["bladder_fill"]
    bladder = _ellipsoid(grid, 0.0, yc - 0.3 * b_c, LEVELS["bladder"], 45 * fill, 35 * fill, 0.08 * fill)
    pt.paint(pt.shape(bladder), Tissue.BLADDER, where=cavity)
    # Liver: a large right lobe growing towards the dome and a left lobe crossing the midline in front.
    tip = LEVELS["liver_tip"]
    grow = 0.35 + 0.65 * _smoothstep(p, tip, tip + 0.25)
    right = _level(x, y, -0.38 * a_c, yc + 0.05 * b_c, 0.62 * a_c * grow * s, 0.85 * b_c * grow)
    left = _level(x, y, 0.12 * a_c, yc - 0.5 * b_c, 0.45 * a_c * s, 0.38 * b_c)
    left = left + 3.0 * np.maximum(tip + 0.18 - p, 0.0)
    liver_level = np.minimum(right, left) + 8.0 * np.maximum(tip - p, 0.0)
    liver = pt.shape(liver_level, 0.1) & cavity & below_dome
    pt.paint(liver, Tissue.LIVER)
    pt.paint(np.abs(pt.fine) < 0.12, Tissue.LIVER_VESSEL, where=liver)
    gallbladder = _ellipsoid(grid, -0.18 * a_c, yc - 0.35 * b_c, tip + 0.08, 14.0, 20.0, 0.035)
    pt.paint(pt.shape(gallbladder), Tissue.GALLBLADDER, where=cavity)
    # Spleen (left, posterior) and stomach (left, anterior; gas on top since the patient lies supine).
    spleen = _ellipsoid(grid, 0.62 * a_c, yc + 0.3 * b_c, LEVELS["spleen"], 0.26 * a_c * s, 0.4 * b_c * s,
                        0.1, angle=-0.7)  # fmt: skip
    pt.paint(pt.shape(spleen), Tissue.SPLEEN, where=cavity & below_dome)
    stomach = _ellipsoid(
        grid, 0.32 * a_c, yc - 0.3 * b_c, LEVELS["stomach"], 0.28 * a_c, 0.32 * b_c, 0.1, 0.5
    )
    gas_level = yc - 0.3 * b_c - 0.32 * b_c * pt.rng.uniform(0.3, 0.95)
    pt.paint(pt.shape(stomach, 0.1), Tissue.GI_WALL, where=cavity & below_dome)
    inner = pt.shape(stomach + 0.08, 0.1) & cavity & below_dome
    pt.paint(inner, Tissue.GI_FLUID)
    pt.paint(inner & (y < gas_level), Tissue.GI_GAS)
    # Pancreas: a lobulated band in front of the aorta from the duodenum to the splenic hilum.
    centre_y = y_vb - 42.0 + 0.2 * np.maximum(x, 0.0)
    radius = 9.0 + 5.0 * np.clip(-x / 30.0, 0.0, 1.0)
    band = np.abs(y - centre_y) / radius + np.maximum(np.abs(x - 0.12 * a_c) - 0.38 * a_c, 0.0) / 10.0
    pancreas = np.sqrt(band**2 + ((p - LEVELS["pancreas"]) / 0.035) ** 2)
    pt.paint(pt.shape(pancreas, 0.2), Tissue.PANCREAS, where=cavity)
    # Kidneys: retroperitoneal, beside the spine, the left one a little higher; cortex, medulla and sinus fat.
    for side, shift in ((-1.0, -0.015), (1.0, 0.015)):
        cx = side * 62.0 * s
        kidney = _ellipsoid(grid, cx, y_vb + 2.0, h["kidney_p"] + shift, 27.0 * s, 21.0 * s,
                            55.0 * s / grid.length_z, angle=side * 0.5)  # fmt: skip
        pt.paint(pt.shape(kidney, 0.05), Tissue.KIDNEY_CORTEX)
        pt.paint(pt.shape(kidney + 0.3, 0.05), Tissue.KIDNEY_MEDULLA)
        hilum = (x - cx) * side < -8.0 * s
        pt.paint(pt.shape(kidney + 0.45, 0.05) & hilum, Tissue.RENAL_SINUS)


def _paint_vessels(pt: _Painter, grid: PhantomGrid, h, y_vb_front, a_c, b_c, yc) -> None:
    """Aorta and IVC in front of the spine, the iliac vessels below the bifurcation, the portal vein."""
    p, x, y = grid.p, grid.x, grid.y
    s = h["organ_scale"]
    fork = LEVELS["aortic_bifurcation"]
    below = np.maximum(fork - p, 0.0) * grid.length_z
    spread, forward = 0.45 * below, 0.25 * below
    aorta = (_level(x, y, 10.0, y_vb_front - 13.0, 11.0 * s, 11.0 * s) < 1.0) & (p >= fork)
    ivc = (_level(x, y, -22.0, y_vb_front - 11.0, 13.0 * s, 9.0 * s) < 1.0) & (p >= fork - 0.02) & (p < 0.93)
    iliac_a = np.zeros(grid.shape_zyx, dtype=bool)
    iliac_v = np.zeros(grid.shape_zyx, dtype=bool)
    for side in (-1.0, 1.0):
        iliac_a |= _level(x, y, side * (8.0 + spread), y_vb_front - 10.0 - forward, 6.5, 6.5) < 1.0
        iliac_v |= _level(x, y, side * (14.0 + spread), y_vb_front - 3.0 - forward, 8.0, 7.0) < 1.0
    low = (p < fork) & (p > 0.08)
    pt.paint(iliac_v & low, Tissue.VEIN)
    pt.paint(iliac_a & low, Tissue.ARTERY)
    pt.paint(ivc, Tissue.VEIN)
    pt.paint(aorta, Tissue.ARTERY)
    portal = _ellipsoid(
        grid, -0.18 * a_c, yc - 0.05 * b_c, LEVELS["pancreas"] + 0.02, 26.0, 7.0, 0.025, angle=0.6
    )
    pt.paint(portal < 1.0, Tissue.VEIN)


def _paint_lungs_and_heart(pt: _Painter, grid: PhantomGrid, cavity, dome, a_c, b_c, yc, y_vb) -> None:
    p, x, y = grid.p, grid.x, grid.y
    above = p > dome
    mediastinum = (np.abs(x - 5.0) < 22.0) & (y > y_vb - 45.0)
    lung = cavity & above & ~mediastinum
    pt.paint(lung, Tissue.LUNG)
    pt.paint(pt.fine > 2.0, Tissue.LUNG_VESSEL, where=lung)
    heart = _ellipsoid(grid, 0.2 * a_c, yc - 0.35 * b_c, 1.03, 0.45 * a_c, 0.45 * b_c, 0.1)
    pt.paint(pt.shape(heart, 0.05), Tissue.HEART, where=cavity & above)


def _paint_back_muscles(pt: _Painter, grid: PhantomGrid, body, y_vb, vb_rx, vb_ry, s) -> None:
    """Psoas beside the lumbar spine (growing downwards into the pelvis), erector spinae behind it."""
    p, x, y = grid.p, grid.x, grid.y
    grow = np.clip(0.72 - p, 0.0, 0.45)
    for side in (-1.0, 1.0):
        psoas = _level(x, y, side * (vb_rx + 8.0 + 40.0 * grow), y_vb - 25.0 * grow,
                       10.0 + 30.0 * grow * s, 10.0 + 22.0 * grow * s)  # fmt: skip
        pt.paint(pt.shape(psoas, 0.05) & (p > 0.18) & (p < 0.72), Tissue.MUSCLE)
        erector = _level(x, y, side * 32.0 * s, y_vb + vb_ry + 38.0 * s, 26.0 * s, 22.0 * s)
        pt.paint(pt.shape(erector, 0.05) & (p > 0.2), Tissue.MUSCLE, where=body)


def _paint_spine(pt: _Painter, grid: PhantomGrid, h, y_vb, vb_rx, vb_ry) -> None:
    """Vertebral bodies with discs, canal, laminae, spinous and transverse processes; sacrum and coccyx."""
    p, x, y, z = grid.p, grid.x, grid.y, grid.z
    period = 32.0
    phase = np.mod(z - h["vertebra_phase_mm"], period)
    lumbar = p > LEVELS["sacrum_top"]
    # Sacrum: wider and more posterior further down, curving backwards; the coccyx below it.
    depth = np.clip((LEVELS["sacrum_top"] - p) / 0.25, 0.0, 1.0)
    rx = np.where(lumbar, vb_rx, vb_rx + 25.0 * (1.0 - depth) - 10.0 * depth)
    cy = np.where(lumbar, y_vb, y_vb + 12.0 + 35.0 * depth)
    vertebral = _level(x, y, 0.0, cy, rx, vb_ry) < 1.0
    inner = _level(x, y, 0.0, cy, rx - 2.5, vb_ry - 2.5) < 1.0
    present = p > 0.1
    pt.paint(vertebral & present, Tissue.BONE_CORTICAL)
    pt.paint(inner & present, Tissue.BONE_CANCELLOUS)
    pt.paint(vertebral & (phase < 7.0) & lumbar, Tissue.DISC)
    # Posterior elements of the lumbar (and lower thoracic) vertebrae.
    canal_y = y_vb + vb_ry + 9.0
    posterior = (phase > 8.0) & lumbar
    canal = _level(x, y, 0.0, canal_y, 9.0, 8.0)
    pt.paint((canal < 1.6) & (y > canal_y - 6.0) & posterior, Tissue.BONE_CORTICAL)
    pt.paint((canal < 1.0) & lumbar, Tissue.CSF)
    spinous = _segment_distance(x, y, (0.0, canal_y + 12.0), (0.0, canal_y + 38.0))
    pt.paint((spinous < 3.5) & posterior, Tissue.BONE_CORTICAL)
    pt.paint((spinous < 1.5) & posterior, Tissue.BONE_CANCELLOUS)
    transverse = (phase > 12.0) & (phase < 22.0) & lumbar & (p < 0.8)
    for side in (-1.0, 1.0):
        process = _segment_distance(
            x, y, (side * 0.7 * vb_rx, canal_y - 6.0), (side * (vb_rx + 20.0), canal_y - 2.0)
        )
        pt.paint((process < 3.5) & transverse, Tissue.BONE_CORTICAL)


def _paint_pelvis(pt: _Painter, grid: PhantomGrid, a, b, yc, y_vb, s) -> None:
    """Iliac wings, acetabula with femoral heads, femoral necks and shafts, pubic and ischial bones."""
    slab = _slab(grid, 0.0, LEVELS["iliac_crest"] + 0.01)
    p, x, y = grid.p[slab], grid.x, grid.y
    a, b, yc = (np.asarray(v, dtype=np.float32)[slab] for v in (a, b, yc))
    bone = np.zeros(p.shape[:1] + grid.shape_zyx[1:], dtype=bool)
    marrow = np.zeros_like(bone)
    heads = LEVELS["femoral_heads"]
    crest = LEVELS["iliac_crest"]
    # 0 at the crest, 1 where the wing has become the body of the ilium above the acetabulum.
    down = np.clip((crest - 0.1 - p) / (crest - 0.1 - heads - 0.04), 0.0, 1.0)
    for side in (-1.0, 1.0):
        # Iliac wing: a plate from the sacro-iliac joint forwards and outwards, thickening into the ilium.
        start = (side * (38.0 + 45.0 * down), y_vb + 22.0 - 10.0 * down)
        end = (side * (0.8 - 0.2 * down) * a, yc - (0.05 - 0.05 * down) * b)
        thickness = 3.5 + 9.0 * down
        # Concave towards the front (the iliac fossa): bulge backwards and outwards between the ends.
        bulge = 0.18 * np.hypot(end[0] - start[0], end[1] - start[1])
        control = (0.5 * (start[0] + end[0]) + side * 0.5 * bulge, 0.5 * (start[1] + end[1]) + 0.85 * bulge)
        wing = _curve_distance(x, y, start, control, end)
        height = (p > heads + 0.03) & (p < crest - 0.04 * np.abs(x) / a)
        bone |= (wing < thickness) & height
        marrow |= (wing < thickness - 2.5) & height
        # Femoral head in its acetabulum, the neck and greater trochanter below, then the shaft.
        cx = side * 0.55 * a
        head = _ellipsoid(grid, cx, yc + 0.05 * b, heads, 23.0 * s, 23.0 * s, 23.0 * s / grid.length_z, p=p)
        bone |= (head < 1.35) & (head > 1.15) & (side * (x - cx) < 5.0)
        bone |= head < 1.0
        marrow |= head < 0.85
        trochanter = _level(x, y, side * 0.72 * a, yc + 0.05 * b, 18.0 * s, 22.0 * s)
        neck = (p > heads - 0.07) & (p < heads - 0.02)
        bone |= (trochanter < 1.0) & neck
        marrow |= (trochanter < 0.75) & neck
        shaft = _level(x, y, side * 0.66 * a, yc + 0.02 * b, 14.0 * s, 14.0 * s)
        bone |= (shaft < 1.0) & (p <= heads - 0.07)
        marrow |= (shaft < 0.65) & (p <= heads - 0.07)
        ramus = _segment_distance(x, y, (side * 8.0, yc - 0.7 * b), (side * 0.4 * a, yc - 0.3 * b))
        pubic = (p > heads - 0.06) & (p < heads - 0.01)
        bone |= (ramus < 5.5) & pubic
        marrow |= (ramus < 3.0) & pubic
        ischium = _level(x, y, side * 48.0, y_vb + 10.0, 12.0, 20.0)
        low = (p > heads - 0.1) & (p < heads + 0.01)
        bone |= (ischium < 1.0) & low
        marrow |= (ischium < 0.7) & low
    pt.paint(bone, Tissue.BONE_CORTICAL, slab=slab)
    pt.paint(marrow, Tissue.BONE_CANCELLOUS, slab=slab)


def _paint_ribs(pt: _Painter, grid: PhantomGrid, a_c, b_c, yc, cavity) -> None:
    """Oblique ribs in the chest wall: each descends from the spine to the front; slices cut them as ovals."""
    slab = _slab(grid, 0.45, 1.01)
    x, y, z = grid.x, grid.y, grid.z[slab]
    a_c, b_c, yc = (np.asarray(v, dtype=np.float32)[slab] for v in (a_c, b_c, yc))
    cavity = cavity[slab]
    angle = np.abs(np.arctan2(x, -(y - yc)))  # 0 in front, pi at the back
    radial = (_level(x, y, 0.0, yc, a_c, b_c) - 1.0) * a_c - 5.0
    near_wall = np.abs(radial) < 5.0
    lowest = 0.66 * grid.length_z
    for i in range(8):
        end = np.pi / 2 if i < 2 else np.pi / 3
        centre_z = lowest + 32.0 * i - 80.0 * (np.pi - angle) / (np.pi - np.pi / 3)
        distance = np.sqrt((radial / 4.5) ** 2 + ((z - centre_z) / 5.5) ** 2)
        rib = (distance < 1.0) & (angle > end) & near_wall & ~cavity
        pt.paint(rib, Tissue.BONE_CORTICAL, slab=slab)
        pt.paint(rib & (distance < 0.55), Tissue.BONE_CANCELLOUS, slab=slab)
