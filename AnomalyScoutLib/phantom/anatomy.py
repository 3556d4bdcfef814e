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

__all__ = ["LABEL_NAMES", "Anatomy", "PhantomGrid", "Tissue", "build_anatomy", "tissue_to_label"]

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


_TISSUE_LABEL = {
    Tissue.AIR: 0, Tissue.TABLE: 0,
    Tissue.FAT: 1, Tissue.CSF: 1, Tissue.DISC: 1,
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


def _ellipsoid(grid: PhantomGrid, cx, cy, pc: float, rx, ry, rp: float, angle: float = 0.0) -> np.ndarray:
    """Normalised radius of an ellipsoid whose z half-axis is given in units of relative position."""
    in_plane = _level(grid.x, grid.y, cx, cy, rx, ry, angle)
    return np.sqrt(in_plane**2 + ((grid.p - pc) / rp) ** 2)


class _Painter:
    """Paints tissues in anatomical order; later structures overwrite earlier ones."""

    def __init__(self, grid: PhantomGrid, rng: np.random.Generator) -> None:
        self.grid = grid
        self.rng = rng
        self.tissue = np.zeros(grid.shape_zyx, dtype=np.uint8)
        self.wobble = smooth_field(rng, grid.shape_zyx, grid.spacing_zyx, 12.0)
        self.fine = smooth_field(rng, grid.shape_zyx, grid.spacing_zyx, 3.0)

    def paint(self, mask: np.ndarray, tissue: Tissue, where: np.ndarray | None = None) -> None:
        if where is not None:
            mask = mask & where
        self.tissue[mask] = tissue

    def shape(self, level: np.ndarray, wobble: float = 0.12) -> np.ndarray:
        return level + wobble * self.wobble < 1.0


def _habitus(rng: np.random.Generator, grid: PhantomGrid) -> dict[str, float]:
    fov_x, fov_y = grid.field_of_view_xy
    if min(fov_x, fov_y) < 240.0:
        raise ConfigError(
            f"the field of view ({fov_x:.0f} x {fov_y:.0f} mm) is too small for an abdomen (>= 240 mm): "
            "increase the in-plane spacing or the shape"
        )
    size = rng.uniform(0.0, 1.0)
    half_width = min(130.0 + 55.0 * size, 0.45 * fov_x)
    half_depth = min(half_width * rng.uniform(0.62, 0.78), 0.40 * fov_y)
    fat = float(np.clip(6.0 + 30.0 * size + rng.normal(0.0, 5.0), 4.0, 0.22 * half_depth))
    return {
        "half_width_mm": float(half_width),
        "half_depth_mm": float(half_depth),
        "fat_mm": fat,
        "muscle_mm": float(rng.uniform(8.0, 14.0)),
        "organ_scale": float(rng.uniform(0.85, 1.15)),
        "dome_p": float(rng.uniform(0.9, 0.97)),
        "kidney_p": float(rng.uniform(0.47, 0.56)),
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
    a = h["half_width_mm"] * np.interp(p, [0.0, 0.2, 0.45, 0.75, 1.0], [0.97, 1.0, 0.92, 0.97, 1.0])
    b = h["half_depth_mm"] * np.interp(p, [0.0, 0.3, 0.55, 0.8, 1.0], [0.88, 0.9, 0.97, 0.96, 1.0])
    yc = h["table_y_mm"] - 2.0 - b
    body_level = _level(x, y, 0.0, yc, a, b, exponent=2.3) + 0.015 * pt.wobble
    body = body_level < 1.0
    pt.paint(body, Tissue.FAT)
    table_curve = h["table_y_mm"] + 0.0004 * x**2
    pt.paint(
        (y > table_curve + 2.0) & (y < table_curve + 7.0) & (np.abs(x) < 0.45 * grid.field_of_view_xy[0]),
        Tissue.TABLE,
        where=~body,
    )

    # Muscle wall under the subcutaneous fat (more fat in front), then the cavity inside it.
    fat, muscle = h["fat_mm"], h["muscle_mm"]
    wall = _level(x, y, 0.0, yc, a - fat, b - 1.3 * fat, ry_posterior=b - 0.6 * fat, exponent=2.3) < 1.0
    pt.paint(wall, Tissue.MUSCLE, where=body)
    y_spine_tip = h["table_y_mm"] - 2.0 - 0.6 * fat - 8.0
    vb_ry, vb_rx = 16.0 * s, 21.0 * s
    y_vb = y_spine_tip - 58.0 * s
    h["spine_front_y_mm"] = float(y_vb - vb_ry)
    pelvis_narrowing = 0.6 + 0.4 * _smoothstep(p, 0.05, 0.4)
    a_c = (a - fat - muscle) * pelvis_narrowing
    b_c = b - 1.3 * fat - muscle
    cavity = pt.shape(_level(x, y, 0.0, yc, a_c, b_c, ry_posterior=(y_vb + 20.0) - yc), 0.03) & wall
    pt.paint(cavity, Tissue.FAT)

    _paint_bowel(pt, grid, cavity, a_c, b_c, yc)
    dome = _diaphragm(grid, h, a_c, b_c, yc)
    _paint_organs(pt, grid, h, cavity, dome, a_c, b_c, yc, y_vb)
    _paint_vessels(pt, grid, h, y_vb - vb_ry, a_c, b_c, yc)
    _paint_lungs_and_heart(pt, grid, cavity, dome, a_c, b_c, yc, y_vb)
    _paint_psoas(pt, grid, y_vb, vb_rx, s)
    _paint_spine(pt, grid, h, y_vb, vb_rx, vb_ry)
    _paint_pelvis(pt, grid, a, b, yc, y_vb, s)
    _paint_ribs(pt, grid, a_c, b_c, yc, cavity)
    # Nothing is drawn outside the skin except the table.
    pt.tissue[~body & (pt.tissue != Tissue.TABLE)] = Tissue.AIR
    return Anatomy(grid=grid, tissue=pt.tissue, body=body, cavity=cavity, habitus=h)


def _diaphragm(grid: PhantomGrid, h: dict[str, float], a_c, b_c, yc) -> np.ndarray:
    """Height (in p) of the diaphragm above each (y, x): two domes, lowest in the posterior recesses."""
    x, y = grid.x, grid.y
    top = h["dome_p"]
    domes = []
    for side, offset in ((-1.0, 0.0), (1.0, -0.025)):
        r2 = ((x - side * 0.45 * a_c) / (0.75 * a_c)) ** 2 + ((y - (yc - 0.1 * b_c)) / b_c) ** 2
        domes.append(top + offset - 0.22 * r2)
    return np.maximum(domes[0], domes[1])


def _paint_bowel(pt: _Painter, grid: PhantomGrid, cavity, a_c, b_c, yc) -> None:
    """Small-bowel loops and mesenteric fat (lower and mid abdomen), then the colon frame."""
    p, x, y = grid.p, grid.x, grid.y
    loops = smooth_field(pt.rng, grid.shape_zyx, grid.spacing_zyx, 5.0)
    gas = smooth_field(pt.rng, grid.shape_zyx, grid.spacing_zyx, 4.0)
    region = cavity & (p > 0.1) & (p < 0.64)
    density = 0.35 - 0.6 * _smoothstep(np.abs(p - 0.38), 0.18, 0.28)
    lumen = loops > 0.55 - density
    pt.paint(loops > 0.25 - density, Tissue.GI_WALL, where=region)
    pt.paint(lumen, Tissue.GI_FLUID, where=region)
    pt.paint(lumen & (gas > 1.5) & (y < yc), Tissue.GI_GAS, where=region)
    colon_segments = [
        _ellipsoid(grid, -0.78 * a_c, yc + 0.05 * b_c, 0.45, 21.0, 21.0, 0.15),  # ascending
        _ellipsoid(grid, 0.8 * a_c, yc + 0.15 * b_c, 0.48, 16.0, 16.0, 0.17),  # descending
        _level(y, p * grid.length_z, yc - 0.6 * b_c, 0.6 * grid.length_z, 20.0, 20.0)
        + np.maximum(np.abs(x) - 0.75 * a_c, 0.0) / 20.0,  # transverse
        _ellipsoid(grid, 0.25 * a_c, yc - 0.15 * b_c, 0.2, 22.0, 18.0, 0.06),  # sigmoid
        _ellipsoid(grid, 0.0, yc + 0.55 * b_c, 0.08, 17.0, 15.0, 0.1),  # rectum
    ]
    colon = np.min(np.stack(np.broadcast_arrays(*colon_segments)), axis=0)
    stool_gas = gas > 0.7
    pt.paint(pt.shape(colon, 0.08), Tissue.GI_WALL, where=cavity)
    pt.paint(pt.shape(colon + 3.0 / 18.0, 0.08) & ~stool_gas, Tissue.STOOL, where=cavity)
    pt.paint(pt.shape(colon + 3.0 / 18.0, 0.08) & stool_gas, Tissue.GI_GAS, where=cavity)


def _paint_organs(pt: _Painter, grid: PhantomGrid, h, cavity, dome, a_c, b_c, yc, y_vb) -> None:
    p, x, y = grid.p, grid.x, grid.y
    s = h["organ_scale"]
    below_dome = p < dome
    # Bladder (pelvis, anterior) with a seeded filling.
    fill = h["bladder_fill"]
    pt.paint(
        pt.shape(_ellipsoid(grid, 0.0, yc - 0.3 * b_c, 0.05, 45 * fill, 35 * fill, 0.08 * fill)),
        Tissue.BLADDER,
        where=cavity,
    )
    # Liver: a large right lobe growing towards the dome and a left lobe crossing the midline in front.
    grow = 0.35 + 0.65 * _smoothstep(p, 0.55, 0.8)
    right = _level(x, y, -0.38 * a_c, yc + 0.05 * b_c, 0.62 * a_c * grow * s, 0.85 * b_c * grow)
    left = _level(x, y, 0.12 * a_c, yc - 0.5 * b_c, 0.45 * a_c * s, 0.38 * b_c) + 3.0 * np.maximum(
        0.72 - p, 0.0
    )
    liver_level = np.minimum(right, left) + 8.0 * np.maximum(0.56 - p, 0.0)
    liver = pt.shape(liver_level, 0.1) & cavity & below_dome
    pt.paint(liver, Tissue.LIVER)
    pt.paint(np.abs(pt.fine) < 0.12, Tissue.LIVER_VESSEL, where=liver)
    pt.paint(
        pt.shape(_ellipsoid(grid, -0.18 * a_c, yc - 0.35 * b_c, 0.63, 14.0, 20.0, 0.035)),
        Tissue.GALLBLADDER,
        where=cavity,
    )
    # Spleen (left, posterior) and stomach (left, anterior, air-fluid level on top since the patient is
    # supine).
    pt.paint(
        pt.shape(
            _ellipsoid(grid, 0.62 * a_c, yc + 0.3 * b_c, 0.76, 0.26 * a_c * s, 0.4 * b_c * s, 0.1, angle=-0.7)
        ),
        Tissue.SPLEEN,
        where=cavity & below_dome,
    )
    stomach = _ellipsoid(grid, 0.32 * a_c, yc - 0.3 * b_c, 0.8, 0.28 * a_c, 0.32 * b_c, 0.1, angle=0.5)
    gas_level = yc - 0.3 * b_c - 0.32 * b_c * pt.rng.uniform(0.1, 0.8)
    pt.paint(pt.shape(stomach, 0.1), Tissue.GI_WALL, where=cavity & below_dome)
    inner = pt.shape(stomach + 0.08, 0.1) & cavity & below_dome
    pt.paint(inner, Tissue.GI_FLUID)
    pt.paint(inner & (y < gas_level), Tissue.GI_GAS)
    # Pancreas: a lobulated band in front of the aorta from the duodenum to the splenic hilum.
    centre_y = y_vb - 42.0 + 0.2 * np.maximum(x, 0.0)
    radius = 9.0 + 5.0 * np.clip(-x / 30.0, 0.0, 1.0)
    band = np.abs(y - centre_y) / radius + np.maximum(np.abs(x - 0.12 * a_c) - 0.38 * a_c, 0.0) / 10.0
    pancreas = np.sqrt(band**2 + ((p - 0.66) / 0.035) ** 2)
    pt.paint(pt.shape(pancreas, 0.2), Tissue.PANCREAS, where=cavity)
    # Kidneys: retroperitoneal, beside the spine, the left one a little higher; cortex, medulla and sinus fat.
    for side, shift in ((-1.0, -0.015), (1.0, 0.015)):
        cx = side * 62.0 * s
        centre = (cx, y_vb + 2.0, h["kidney_p"] + shift)
        kidney = _ellipsoid(
            grid,
            centre[0],
            centre[1],
            centre[2],
            27.0 * s,
            21.0 * s,
            55.0 * s / grid.length_z,
            angle=side * 0.5,
        )
        outline = pt.shape(kidney, 0.05)
        pt.paint(outline, Tissue.KIDNEY_CORTEX)
        pt.paint(pt.shape(kidney + 0.3, 0.05), Tissue.KIDNEY_MEDULLA)
        hilum = (x - cx) * side < -8.0 * s
        pt.paint(pt.shape(kidney + 0.45, 0.05) & hilum, Tissue.RENAL_SINUS)


def _paint_vessels(pt: _Painter, grid: PhantomGrid, h, y_vb_front, a_c, b_c, yc) -> None:
    """Aorta and IVC in front of the spine, the iliac vessels below the bifurcation, the portal vein."""
    p, x, y = grid.p, grid.x, grid.y
    s = h["organ_scale"]
    fork = 0.3
    spread = np.maximum(fork - p, 0.0) * grid.length_z * 0.45
    forward = np.maximum(fork - p, 0.0) * grid.length_z * 0.25
    aorta_x = 10.0 - 0.1 * np.maximum(p - 0.85, 0.0) * grid.length_z
    aorta = (_level(x, y, aorta_x, y_vb_front - 13.0, 11.0 * s, 11.0 * s) < 1.0) & (p >= fork)
    ivc = (_level(x, y, -22.0, y_vb_front - 11.0, 13.0 * s, 9.0 * s) < 1.0) & (p >= fork - 0.02) & (p < 0.93)
    iliac_a = np.zeros(grid.shape_zyx, dtype=bool)
    iliac_v = np.zeros(grid.shape_zyx, dtype=bool)
    for side in (-1.0, 1.0):
        iliac_a |= _level(x, y, side * (8.0 + spread), y_vb_front - 10.0 - forward, 6.5, 6.5) < 1.0
        iliac_v |= _level(x, y, side * (14.0 + spread), y_vb_front - 3.0 - forward, 8.0, 7.0) < 1.0
    low = (p < fork) & (p > 0.04)
    pt.paint(iliac_v & low, Tissue.VEIN)
    pt.paint(iliac_a & low, Tissue.ARTERY)
    pt.paint(ivc, Tissue.VEIN)
    pt.paint(aorta, Tissue.ARTERY)
    portal = _ellipsoid(grid, -0.18 * a_c, yc - 0.05 * b_c, 0.68, 26.0, 7.0, 0.025, angle=0.6)
    pt.paint(portal < 1.0, Tissue.VEIN)


def _paint_lungs_and_heart(pt: _Painter, grid: PhantomGrid, cavity, dome, a_c, b_c, yc, y_vb) -> None:
    p, x, y = grid.p, grid.x, grid.y
    above = p > dome
    mediastinum = (np.abs(x - 5.0) < 22.0) & (y > y_vb - 45.0)
    lung = cavity & above & ~mediastinum
    pt.paint(lung, Tissue.LUNG)
    pt.paint(pt.fine > 2.0, Tissue.LUNG_VESSEL, where=lung)
    heart = _ellipsoid(grid, 0.2 * a_c, yc - 0.35 * b_c, 1.08, 0.5 * a_c, 0.45 * b_c, 0.14)
    pt.paint(pt.shape(heart, 0.05), Tissue.HEART, where=cavity & above)


def _paint_psoas(pt: _Painter, grid: PhantomGrid, y_vb, vb_rx, s) -> None:
    p, x, y = grid.p, grid.x, grid.y
    grow = np.clip(0.62 - p, 0.0, 0.4)
    for side in (-1.0, 1.0):
        cx = side * (vb_rx + 8.0 + 40.0 * grow)
        level = _level(x, y, cx, y_vb - 25.0 * grow, 10.0 + 35.0 * grow * s, 10.0 + 25.0 * grow * s)
        pt.paint(pt.shape(level, 0.05) & (p > 0.12) & (p < 0.62), Tissue.MUSCLE)


def _paint_spine(pt: _Painter, grid: PhantomGrid, h, y_vb, vb_rx, vb_ry) -> None:
    """Vertebral bodies with discs, canal, laminae and processes; the sacrum below p ~ 0.25."""
    p, x, y, z = grid.p, grid.x, grid.y, grid.z
    period = 32.0
    phase = np.mod(z - h["vertebra_phase_mm"], period)
    disc = (phase < 7.0) & (p > 0.25)
    sacral = p < 0.25
    rx = np.where(sacral, vb_rx + 25.0 * (0.25 - p) / 0.25 * 1.2, vb_rx)
    cy = np.where(sacral, y_vb + 10.0 + 40.0 * (0.25 - p), y_vb)
    body = _level(x, y, 0.0, cy, rx, vb_ry)
    pt.paint((body < 1.0) & (p > 0.03), Tissue.BONE_CORTICAL)
    pt.paint((body < 1.0 - 2.5 / vb_ry) & (p > 0.03), Tissue.BONE_CANCELLOUS)
    pt.paint((body < 1.0) & disc, Tissue.DISC)
    canal_y = cy + vb_ry + 10.0
    ring = _level(x, y, 0.0, canal_y, 15.0, 13.0)
    pt.paint((ring < 1.0) & (p > 0.1), Tissue.BONE_CORTICAL)
    pt.paint((ring < 1.0 - 6.0 / 15.0) & (p > 0.1), Tissue.CSF)
    posterior = phase > 10.0
    spinous = _level(x, y, 0.0, canal_y + 26.0, 4.0, 14.0)
    pt.paint((spinous < 1.0) & posterior & (p > 0.2), Tissue.BONE_CORTICAL)
    transverse = (np.abs(y - (canal_y - 4.0)) < 4.0) & (np.abs(x) < vb_rx + 24.0)
    pt.paint(transverse & posterior & (p > 0.35) & (p < 0.72), Tissue.BONE_CORTICAL)


def _paint_pelvis(pt: _Painter, grid: PhantomGrid, a, b, yc, y_vb, s) -> None:
    """Iliac wings, acetabula with femoral heads, pubic and ischial bones."""
    p, x, y = grid.p, grid.x, grid.y
    bone = np.zeros(grid.shape_zyx, dtype=bool)
    marrow = np.zeros(grid.shape_zyx, dtype=bool)
    for side in (-1.0, 1.0):
        # Iliac wing: a curved plate from the sacro-iliac joint sweeping forwards and outwards.
        wing = _level(x, y, side * 25.0, y_vb - 5.0, 0.62 * a, 0.55 * b)
        shell = np.abs(wing - 1.0) * 0.62 * a
        height = (p > 0.12) & (p < 0.36 - 0.06 * np.abs(x) / a)
        keep = (side * x > 35.0) & (y > y_vb - 0.55 * b)
        bone |= (shell < 5.0) & height & keep
        marrow |= (shell < 2.5) & height & keep
        # Femoral head in its acetabulum.
        head = _ellipsoid(
            grid, side * 0.52 * a, yc + 0.05 * b, 0.07, 24.0 * s, 24.0 * s, 24.0 * s / grid.length_z
        )
        bone |= (head < 1.3) & (head > 1.15) & (side * x < side * side * 0.52 * a * 1.05)
        bone |= head < 1.0
        marrow |= head < 0.88
        trochanter = _level(x, y, side * 0.7 * a, yc + 0.05 * b, 18.0, 24.0)
        bone |= (trochanter < 1.0) & (p < 0.05)
        marrow |= (trochanter < 0.8) & (p < 0.05)
        pubis = _level(x, y, side * 28.0, yc - 0.65 * b, 26.0, 9.0)
        bone |= (pubis < 1.0) & (p < 0.045)
        ischium = _level(x, y, side * 48.0, y_vb + 10.0, 12.0, 18.0)
        bone |= (ischium < 1.0) & (p < 0.06)
        marrow |= (ischium < 0.7) & (p < 0.06)
    pt.paint(bone, Tissue.BONE_CORTICAL)
    pt.paint(marrow, Tissue.BONE_CANCELLOUS)


def _paint_ribs(pt: _Painter, grid: PhantomGrid, a_c, b_c, yc, cavity) -> None:
    """Oblique ribs in the chest wall: each descends from the spine to the front; slices cut them as ovals."""
    x, y, z = grid.x, grid.y, grid.z
    angle = np.abs(np.arctan2(x, -(y - yc)))  # 0 in front, pi at the back
    radial = (_level(x, y, 0.0, yc, a_c, b_c) - 1.0) * a_c - 5.0
    near_wall = np.abs(radial) < 5.0
    lowest = 0.6 * grid.length_z
    for i in range(8):
        end = np.pi / 2 if i < 2 else np.pi / 3
        centre_z = lowest + 35.0 * i - 80.0 * (np.pi - angle) / (np.pi - np.pi / 3)
        distance = np.sqrt((radial / 5.0) ** 2 + ((z - centre_z) / 6.0) ** 2)
        rib = (distance < 1.0) & (angle > end) & near_wall & ~cavity
        pt.paint(rib, Tissue.BONE_CORTICAL)
        pt.paint(rib & (distance < 0.55), Tissue.BONE_CANCELLOUS)
