"""Synthetic PA chest X-ray phantoms whose disease state is known analytically.

No public medical weights or images can be used here, so the demo model is trained
on phantoms: a seeded patient (:class:`PatientAnatomy`) rendered at a disease state
(:class:`DiseaseState`). Because the heart and the effusions are analytic shapes, every
image comes with ground-truth masks and its true cardiothoracic ratio (CTR), so a
simulated progression can be checked against what the disease really does.

Conventions (why they matter):

* Geometry lives in normalised coordinates, x and y in [-1, 1] (y grows downwards),
  so a patient looks the same at 64 or 512 pixels; only anti-aliasing and pixel
  noise depend on the size.
* PA view: the patient's right is the image LEFT (x < 0); the heart bulges to the
  image right, the left (image-right) hemidiaphragm sits lower.
* Disease never touches the random stream: all texture and noise are drawn from
  ``anatomy.texture_seed`` first, and the heart / effusions only enter through
  compactly supported alphas. Two severities of one patient are therefore identical,
  bit for bit, wherever the heart (resp. effusion) cannot reach.
* Rendering is a tiny X-ray model: soft tissue, bone and fluid add attenuation, lung
  air removes it, and the film response is ``1 - exp(-k * attenuation)`` so bright
  structures saturate the way they do on a real radiograph.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from typing import NamedTuple

import numpy as np

MIN_SIZE, MAX_SIZE = 32, 1024

# Caption grades. Cardiomegaly severity maps ~linearly to CTR (0 -> ~0.45, 1 -> ~0.65),
# so the cardiac thresholds sit near CTR 0.50 (the clinical cut-off), 0.55 and 0.60.
CARDIOMEGALY_GRADES: tuple[tuple[float, str], ...] = (
    (0.25, "normal heart size"),
    (0.50, "mild cardiomegaly"),
    (0.75, "moderate cardiomegaly"),
    (math.inf, "severe cardiomegaly"),
)
# Effusion below 0.10 only blunts a costophrenic angle by a pixel or two: reported as none.
EFFUSION_GRADES: tuple[tuple[float, str], ...] = (
    (0.10, ""),
    (0.40, "small"),
    (0.70, "moderate"),
    (math.inf, "large"),
)
CAPTIONS: tuple[str, ...] = (
    "normal", "heart", "size", "mild", "moderate", "severe", "cardiomegaly", "small", "large",
    "left", "right", "bilateral", "pleural", "effusion", "effusions", "no", "and",
)


# --------------------------------------------------------------------------- parameters


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


@dataclass(frozen=True)
class PatientAnatomy:
    """Everything that makes two patients differ; lengths are normalised (image half width = 1)."""

    thorax_half_width: float  # inner rib-cage half width at its widest (the CTR denominator / 2)
    lung_apex_y: float  # top of the lung apices
    costophrenic_y: float  # level of the right costophrenic angle (lowest lateral lung point)
    dome_height: float  # how far the right hemidiaphragm dome rises above its costophrenic angle
    left_dome_drop: float  # the left dome sits this much lower than the right one
    mediastinum_half_width: float
    chest_wall: float  # soft tissue + rib thickness outside the inner rib cage
    heart_midline: float  # x of the reference point the heart width is split around
    heart_right_fraction: float  # share of the normal heart width on the patient's right (image left)
    ctr_normal: float  # nominal CTR at cardiomegaly 0
    ctr_severe: float  # nominal CTR at cardiomegaly 1
    heart_tilt: float  # radians; the long axis points down towards the apex (image right)
    heart_height: float  # semi-axis across the long axis at cardiomegaly 0
    rotation_deg: float  # patient rotation in the image plane
    shift_x: float
    shift_y: float
    rib_spacing: float
    rib_width: float
    exposure: float  # film response steepness k
    gamma: float
    noise_std: float  # acquisition noise, grey levels at 8 bit
    vessel_strength: float
    texture_seed: int

    @classmethod
    def sample(cls, rng: np.random.Generator) -> PatientAnatomy:
        """Draw a plausible adult patient: each parameter uniform within a clinically sane range."""
        return cls(
            thorax_half_width=_uniform(rng, 0.78, 0.86),
            lung_apex_y=_uniform(rng, -0.80, -0.70),
            costophrenic_y=_uniform(rng, 0.50, 0.62),
            dome_height=_uniform(rng, 0.17, 0.24),
            left_dome_drop=_uniform(rng, 0.02, 0.06),
            mediastinum_half_width=_uniform(rng, 0.085, 0.11),
            chest_wall=_uniform(rng, 0.05, 0.08),
            heart_midline=_uniform(rng, -0.03, 0.02),
            heart_right_fraction=_uniform(rng, 0.32, 0.38),
            ctr_normal=_uniform(rng, 0.42, 0.48),
            ctr_severe=_uniform(rng, 0.62, 0.68),
            heart_tilt=_uniform(rng, 0.5, 0.7),
            heart_height=_uniform(rng, 0.22, 0.26),
            rotation_deg=_uniform(rng, -4.0, 4.0),
            shift_x=_uniform(rng, -0.03, 0.03),
            shift_y=_uniform(rng, -0.03, 0.03),
            rib_spacing=_uniform(rng, 0.115, 0.135),
            rib_width=_uniform(rng, 0.045, 0.06),
            exposure=_uniform(rng, 1.3, 1.8),
            gamma=_uniform(rng, 0.85, 1.2),
            noise_std=_uniform(rng, 1.5, 4.0),
            vessel_strength=_uniform(rng, 0.2, 0.35),
            texture_seed=int(rng.integers(0, 2**31 - 1)),
        )


@dataclass(frozen=True)
class DiseaseState:
    """Disease severities in [0, 1], independent of the patient (0 = healthy)."""

    cardiomegaly: float = 0.0
    effusion_left: float = 0.0  # patient's left = image right
    effusion_right: float = 0.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"DiseaseState.{field.name} must be in [0, 1], got {value}")

    @classmethod
    def sample(cls, rng: np.random.Generator) -> DiseaseState:
        """The training distribution (see :func:`sample_dataset`)."""
        cardiomegaly = float(rng.uniform(0.0, 1.0))
        left = right = 0.0
        if rng.uniform() < 0.3:
            side = rng.uniform()
            if side < 0.8:  # one-sided, either side equally likely
                if side < 0.4:
                    left = float(rng.uniform(0.15, 1.0))
                else:
                    right = float(rng.uniform(0.15, 1.0))
            else:
                left, right = float(rng.uniform(0.15, 1.0)), float(rng.uniform(0.15, 1.0))
        return cls(cardiomegaly, left, right)

    def lerp(self, other: DiseaseState, t: float) -> DiseaseState:
        """Linear interpolation of every severity (t=0 -> self, t=1 -> other)."""
        values = {f.name: (1.0 - t) * getattr(self, f.name) + t * getattr(other, f.name) for f in fields(self)}
        return DiseaseState(**{k: min(1.0, max(0.0, v)) for k, v in values.items()})


@dataclass(frozen=True)
class Phantom:
    """A rendered phantom with its ground truth."""

    image: np.ndarray  # (size, size) uint8
    masks: dict[str, np.ndarray]  # bool (size, size): heart, lungs, thorax, effusion_left, effusion_right
    ctr: float  # transverse heart diameter / internal thorax diameter, column extents of the masks
    heart_roi: np.ndarray  # (size, size) float32 in [0, 1]: where the heart may grow up to severity 1


class Sample(NamedTuple):
    """One training example: unpacks as (image, caption, disease, anatomy)."""

    image: np.ndarray
    caption: str
    disease: DiseaseState
    anatomy: PatientAnatomy


# --------------------------------------------------------------------------- field helpers


def _inside(distance: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased indicator of ``distance < 0`` with compact support (exactly 0 beyond width/2)."""
    t = np.clip(0.5 - distance / width, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _ellipse_distance(u: np.ndarray, v: np.ndarray, a: np.ndarray | float, b: float) -> np.ndarray:
    """First-order signed distance to the ellipse (u/a)^2 + (v/b)^2 = 1 (negative inside)."""
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2)
    return (r * r - r) / np.maximum(grad, 1e-6)


@functools.lru_cache(maxsize=8)
def _gaussian_gain(shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    return np.exp(-2.0 * np.pi**2 * ((fy * sigma[0]) ** 2 + (fx * sigma[1]) ** 2))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    """Periodic Gaussian-filtered white noise on a small grid, normalised to unit std."""
    white = rng.standard_normal(shape)
    smooth = np.fft.irfft2(np.fft.rfft2(white) * _gaussian_gain(shape, sigma), s=shape)
    return ((smooth - smooth.mean()) / (smooth.std() + 1e-12)).astype(np.float32)


def _where(condition: np.ndarray, field: Callable[..., np.ndarray], *arrays: np.ndarray) -> np.ndarray:
    """``field(*arrays)`` evaluated only where ``condition`` holds, zero elsewhere: most
    structures cover a small part of the image, and rendering time is per pixel."""
    out = np.zeros(condition.shape, dtype=np.float32)
    index = np.flatnonzero(condition)
    out.ravel()[index] = field(*(a.ravel()[index] for a in arrays))
    return out


def _bilinear(grid: np.ndarray, gy: np.ndarray, gx: np.ndarray) -> np.ndarray:
    """Sample a periodic grid at fractional cell coordinates."""
    h, w = grid.shape
    y0, x0 = np.floor(gy), np.floor(gx)
    fy, fx = gy - y0, gx - x0
    y0, x0 = y0.astype(np.int64) % h, x0.astype(np.int64) % w
    y1, x1 = (y0 + 1) % h, (x0 + 1) % w
    top = grid[y0, x0] * (1 - fx) + grid[y0, x1] * fx
    bottom = grid[y1, x0] * (1 - fx) + grid[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _smoothstep(t: np.ndarray | float) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Lung:
    """One lung as an ellipse clipped by the mediastinum and the diaphragm; side -1 = image left."""

    side: int
    cx: float
    cy: float
    ax: float
    ay: float


def _lung_column(anatomy: PatientAnatomy) -> tuple[float, float]:
    """(|x| of each lung's centre line, lung half width): the domes peak on that line."""
    half_width = 0.62 * (anatomy.thorax_half_width - anatomy.mediastinum_half_width)
    return anatomy.thorax_half_width - half_width, half_width


def _lungs(anatomy: PatientAnatomy) -> tuple[_Lung, _Lung]:
    """Each lung's outer contour is an ellipse whose lateral extreme sits just above its
    costophrenic angle, so the inner thorax is widest there, as on a real film."""
    cx, ax = _lung_column(anatomy)
    result = []
    for side in (-1, 1):
        cy = _costophrenic_y(anatomy, side) - 0.02
        result.append(_Lung(side, side * cx, cy, ax, cy - anatomy.lung_apex_y))
    return result[0], result[1]


def _costophrenic_y(anatomy: PatientAnatomy, side: int) -> float:
    return anatomy.costophrenic_y + (0.5 * anatomy.left_dome_drop if side > 0 else 0.0)


def _dome(anatomy: PatientAnatomy, side: int, x: np.ndarray | float) -> np.ndarray | float:
    """One hemidiaphragm: peaks mid-hemithorax and falls steeply to the costophrenic angle
    laterally; medially it stays level (the central tendon) so the heart rests on it."""
    peak_x, ax = _lung_column(anatomy)
    peak_y = anatomy.costophrenic_y - anatomy.dome_height + (anatomy.left_dome_drop if side > 0 else 0.0)
    lateral = (_costophrenic_y(anatomy, side) + 0.01 - peak_y) / ax**2
    offset = side * np.asarray(x) - peak_x
    return peak_y + np.where(offset > 0, lateral * offset**2, 0.0)


def _diaphragm_y(anatomy: PatientAnatomy, x: np.ndarray | float) -> np.ndarray | float:
    """Both domes, blended across the midline (under the heart) so the outline has no step."""
    weight = _smoothstep(0.5 + np.asarray(x) / 0.2)
    return (1.0 - weight) * _dome(anatomy, -1, x) + weight * _dome(anatomy, 1, x)


def _below_diaphragm(anatomy: PatientAnatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance to the diaphragm outline (positive below it, in the abdomen)."""
    h = 1e-3
    level = _diaphragm_y(anatomy, x)
    slope = (_diaphragm_y(anatomy, x + h) - level) / h
    return (y - level) / np.sqrt(1.0 + slope * slope)


def _mediastinum_edge(anatomy: PatientAnatomy, side: int, y: np.ndarray) -> np.ndarray:
    """Medial lung border; the aortic knob bulges into the left (image-right) lung."""
    edge = anatomy.mediastinum_half_width + np.zeros_like(y)
    if side > 0:
        knob_y = anatomy.lung_apex_y + 0.45
        edge = edge + 0.06 * np.exp(-(((y - knob_y) / 0.07) ** 2))
    return edge


def _lung_contour(lung: _Lung, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _ellipse_distance(x - lung.cx, y - lung.cy, lung.ax, lung.ay)


def _lung_distance(anatomy: PatientAnatomy, lung: _Lung, contour: np.ndarray, x: np.ndarray, y: np.ndarray,
                   below: np.ndarray) -> np.ndarray:
    medial = _mediastinum_edge(anatomy, lung.side, y) - lung.side * x
    return np.maximum(np.maximum(contour, medial), below)


def _thorax_distance(anatomy: PatientAnatomy, lungs: tuple[_Lung, _Lung], contours: tuple[np.ndarray, np.ndarray],
                     x: np.ndarray, y: np.ndarray, below: np.ndarray) -> np.ndarray:
    """Inner rib cage: both lung contours plus the mediastinum between them, above the diaphragm."""
    band = np.maximum(np.abs(x) - lungs[1].cx, anatomy.lung_apex_y + 0.15 - y)
    return np.maximum(np.minimum(np.minimum(contours[0], contours[1]), band), below)


@dataclass(frozen=True)
class _Heart:
    """Two half-ellipses sharing the short axis: a smaller right-heart half and a longer
    left-ventricle half whose extreme (the apex) rests just above the left dome."""

    cx: float
    cy: float
    a_right_heart: float  # semi-axis towards the image left
    a_apex: float  # semi-axis towards the apex (image right)
    b: float
    tilt: float


def _heart(anatomy: PatientAnatomy, severity: float) -> _Heart:
    """Heart whose max horizontal width is the nominal CTR times the thorax width; it grows
    60% towards the apex (left ventricle dilates most), 40% to the right, and stays on the diaphragm."""
    thorax_width = 2.0 * anatomy.thorax_half_width
    width0 = anatomy.ctr_normal * thorax_width
    width = (anatomy.ctr_normal + severity * (anatomy.ctr_severe - anatomy.ctr_normal)) * thorax_width
    right_border = anatomy.heart_midline - anatomy.heart_right_fraction * width0 - 0.4 * (width - width0)
    b = anatomy.heart_height * (1.0 + 0.3 * severity)
    cos_t, sin_t = math.cos(anatomy.heart_tilt), math.sin(anatomy.heart_tilt)

    def semi_axis(extent: float) -> float:
        return math.sqrt(max(extent**2 - (b * sin_t) ** 2, 1e-4)) / cos_t

    extent_right, extent_apex = 0.45 * width, 0.55 * width
    a_right, a_apex = semi_axis(extent_right), semi_axis(extent_apex)
    cx = right_border + extent_right
    apex_x = cx + extent_apex
    apex_drop = (a_apex**2 - b**2) * sin_t * cos_t / extent_apex
    cy = float(_diaphragm_y(anatomy, apex_x)) - 0.10 - apex_drop
    return _Heart(cx, cy, a_right, a_apex, b, anatomy.heart_tilt)


def _heart_distance(heart: _Heart, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance to the heart: the two half-ellipses, plus the space below their lower
    contour (from the short axis to the lowest point), so the heart sits on the diaphragm
    with no sliver of lung under it."""
    cos_t, sin_t = math.cos(heart.tilt), math.sin(heart.tilt)
    dx, dy = x - heart.cx, y - heart.cy
    u = dx * cos_t + dy * sin_t
    v = -dx * sin_t + dy * cos_t
    a = np.where(u > 0, heart.a_apex, heart.a_right_heart)
    ellipse = _ellipse_distance(u, v, a, heart.b)
    lowest_dy = math.hypot(heart.a_apex * sin_t, heart.b * cos_t)
    short_axis_dx = -heart.b * sin_t
    lowest_dx = max((heart.a_apex**2 - heart.b**2) * sin_t * cos_t / lowest_dy, short_axis_dx)
    base = np.maximum(np.maximum(short_axis_dx - dx, dx - lowest_dx), -dy)
    return np.minimum(ellipse, base)


def _near_heart(heart: _Heart, x: np.ndarray, y: np.ndarray, below: np.ndarray, margin: float,
                depth: float) -> np.ndarray:
    """Conservative support of everything within ``margin`` of the heart (incl. its base)
    and at most ``depth`` below the diaphragm."""
    reach = max(heart.a_apex, heart.a_right_heart, heart.b) + margin + 0.02
    return (np.abs(x - heart.cx) < reach) & (y > heart.cy - reach) & (below < depth)


def _effusion_alpha(anatomy: PatientAnatomy, lung: _Lung, contour: np.ndarray, severity: float,
                    x: np.ndarray, y: np.ndarray, below: np.ndarray, edge: float) -> np.ndarray:
    """Fluid in one hemithorax: fills the costophrenic angle first, rising with severity, its
    upper border a meniscus that climbs the lateral chest wall. Overlaps the heart freely."""
    if severity <= 0.0:
        return np.zeros_like(x)
    bottom = _costophrenic_y(anatomy, lung.side)
    level = bottom - severity * 0.55 * (bottom - anatomy.lung_apex_y)
    medial_span = anatomy.thorax_half_width - anatomy.mediastinum_half_width
    from_wall = np.clip((anatomy.thorax_half_width - lung.side * x) / medial_span, 0.0, 1.0)
    surface = level + (0.12 + 0.18 * severity) * from_wall**0.7
    hemithorax = np.maximum(np.maximum(contour, below), 0.02 - lung.side * x)
    return _inside(hemithorax, edge) * _inside(surface - y, 0.10)


def _body_distance(anatomy: PatientAnatomy, lungs: tuple[_Lung, _Lung], x: np.ndarray,
                   y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outer body outline (neck, sloping shoulders, arms down to the axillae, chest wall, abdomen):
    its signed distance, and the local body half width that sets the soft-tissue thickness."""
    lung = lungs[1]
    ax_abs = np.abs(x)
    rel = np.clip((lung.cy - y) / lung.ay, 0.0, 1.0)
    rib_cage = np.where(y < lung.cy, lung.cx + lung.ax * np.sqrt(1.0 - rel**2),
                        anatomy.thorax_half_width - 0.08 * (y - lung.cy))
    axilla = anatomy.lung_apex_y + 0.42
    arms = 1.08 - 0.38 * _smoothstep((y - axilla + 0.2) / 0.45)
    half_width = np.maximum(rib_cage + anatomy.chest_wall, arms)
    shoulder_line = anatomy.lung_apex_y - 0.16 + 0.3 * np.clip((ax_abs - 0.22) / 0.78, 0.0, 1.0) ** 1.6
    trunk = np.maximum(ax_abs - half_width, shoulder_line - y)
    neck = ax_abs - 0.26
    return np.minimum(trunk, neck), np.maximum(half_width, 0.3)


# --------------------------------------------------------------------------- bones & texture


def _band(offset: np.ndarray, half_width: float | np.ndarray, edge: float) -> np.ndarray:
    """Cross-section of a tubular bone: rounded body plus brighter cortical margins."""
    t = np.abs(offset) / half_width
    body = np.sqrt(np.clip(1.0 - t * t, 0.0, 1.0))
    cortex = np.exp(-(((t - 0.85) / 0.15) ** 2))
    return (0.6 * body + 0.5 * cortex) * _inside(np.abs(offset) - half_width, edge)


ABDOMEN_WASHOUT_DEPTH = 0.05  # ribs fade over this depth below the diaphragm
RIB_COUNT = 12
RIB_SPACING_GROWTH = 0.03  # intercostal spaces widen by 3% per rib downwards


def _nearest_rib_offset(anatomy: PatientAnatomy, below_first: np.ndarray) -> np.ndarray:
    """Vertical offset to the centre line of the nearest rib, given the offset below rib 0.

    Rib k lies ``spacing * k * (1 + g k)`` below rib 0; inverting that quadratic gives each
    pixel's fractional rib index, so all ribs cost one evaluation instead of one per rib.
    """
    spacing, g = anatomy.rib_spacing, RIB_SPACING_GROWTH
    index = (np.sqrt(np.maximum(1.0 + 4.0 * g * below_first / spacing, 0.0)) - 1.0) / (2.0 * g)
    k = np.clip(np.rint(index), 0, RIB_COUNT - 1)
    return below_first - spacing * k * (1.0 + g * k)


def _ribs(anatomy: PatientAnatomy, x: np.ndarray, y: np.ndarray, edge: float) -> np.ndarray:
    """Posterior ribs arc up from the spine then sweep down laterally; anterior ribs are fainter
    and run down towards the sternum."""
    ax_abs = np.abs(x)
    u = ax_abs / anatomy.thorax_half_width
    reach = _inside(ax_abs - anatomy.thorax_half_width - 0.6 * anatomy.chest_wall, 0.06)
    medial = _smoothstep((ax_abs - 0.06) / 0.06)
    half = 0.5 * anatomy.rib_width
    first = anatomy.lung_apex_y - 0.02
    posterior = _band(_nearest_rib_offset(anatomy, y - (first - 0.08 * u + 0.45 * u * u)), half * (1.0 + 0.25 * u),
                      edge)
    anterior_line = first + 0.33 + 0.45 * np.clip(1.0 - u, 0.0, 1.0) ** 1.2
    anterior = _band(_nearest_rib_offset(anatomy, y - anterior_line), 0.8 * half, edge)
    return (posterior + 0.35 * anterior * _smoothstep((u - 0.35) / 0.3)) * reach * medial


def _clavicles(anatomy: PatientAnatomy, x: np.ndarray, y: np.ndarray, edge: float) -> np.ndarray:
    ax_abs = np.abs(x)
    centre = anatomy.lung_apex_y + 0.17 - 0.16 * (ax_abs - 0.1) + 0.10 * (ax_abs - 0.1) ** 2
    extent = _inside(np.abs(ax_abs - 0.46) - 0.36, 0.08)
    return _band(y - centre, 0.034, edge) * extent


def _spine(x: np.ndarray, y: np.ndarray, edge: float) -> np.ndarray:
    """Vertebral column: a band with faint end plates every vertebra."""
    column = _inside(np.abs(x) - 0.065, edge) * (0.8 + 0.2 * np.abs(np.sin(np.pi * (y + 1.0) / 0.13)))
    pedicles = _inside(np.hypot(np.abs(x) - 0.045, (np.mod(y + 1.0, 0.13) - 0.05) * 1.6) - 0.02, edge)
    return column + 0.4 * pedicles


def _vessels(anatomy: PatientAnatomy, lungs: tuple[_Lung, _Lung], grids: tuple[np.ndarray, np.ndarray],
             x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Lung markings: polar noise around each hilum, smooth along the radius and fine across
    it, gives soft streaks radiating from the hila; they fade towards the periphery, and the
    hilar vessels themselves are a bright blob."""
    total = np.zeros_like(x)
    for lung, grid in zip(lungs, grids):
        hx = lung.side * (anatomy.mediastinum_half_width + 0.09)
        hy = anatomy.lung_apex_y + 0.45 * lung.ay - (0.03 if lung.side > 0 else 0.0)
        dx, dy = x - hx, y - hy
        r = np.hypot(dx, dy)
        theta = np.arctan2(dy, dx)
        value = _bilinear(grid, np.clip(r / 0.9, 0.0, 1.0) * (grid.shape[0] - 2),
                          (theta / (2 * np.pi) + 0.5) * grid.shape[1])
        streaks = np.clip(value - 0.5, 0.0, 1.5)
        fade = _smoothstep((r - 0.04) / 0.16) * np.exp(-r / 0.35)
        total += streaks * fade + 1.1 * np.exp(-((r / 0.09) ** 2))
    return anatomy.vessel_strength * total


# --------------------------------------------------------------------------- rendering


def _coordinates(anatomy: PatientAnatomy, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in the patient frame (the patient is rotated and shifted in the image)."""
    grid = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    yi, xi = grid[:, None] - anatomy.shift_y, grid[None, :] - anatomy.shift_x
    angle = math.radians(anatomy.rotation_deg)
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    return cos_a * xi + sin_a * yi, -sin_a * xi + cos_a * yi


def _horizontal_extent(mask: np.ndarray) -> int:
    """Columns spanned by the mask: the clinical transverse diameter (max right + max left
    distance from the midline, wherever along the height each occurs)."""
    columns = np.flatnonzero(mask.any(axis=0))
    return int(columns[-1] - columns[0] + 1) if columns.size else 0


def _check_size(size: int) -> None:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"phantom size must be in [{MIN_SIZE}, {MAX_SIZE}], got {size}")


@dataclass(frozen=True)
class _Patient:
    """One patient at one size: every field no disease can change, computed once (a
    progression clip renders many severities of the same patient)."""

    anatomy: PatientAnatomy
    edge: float
    x: np.ndarray
    y: np.ndarray
    lungs: tuple[_Lung, _Lung]
    contours: tuple[np.ndarray, np.ndarray]
    below: np.ndarray
    lung_alpha: np.ndarray
    air: np.ndarray  # attenuation the aerated lungs remove, before heart / fluid displace it
    tissue: np.ndarray  # attenuation of soft tissue and bone, ribs aside
    ribs: np.ndarray
    dense: np.ndarray  # abdomen and mediastinum: thick tissue whose scatter washes the ribs out
    acquisition: np.ndarray  # unit detector noise
    thorax: np.ndarray
    heart_roi: np.ndarray


def _patient(anatomy: PatientAnatomy, size: int) -> _Patient:
    """Draw the patient's random fields (always in the same order) and lay out the anatomy."""
    _check_size(size)
    edge = max(0.012, 2.2 / size)  # anti-aliasing: ~1 px, never sharper than the geometry
    rng = np.random.default_rng(anatomy.texture_seed)
    vessel_grids = (_smooth_noise(rng, (12, 128), (2.0, 1.0)), _smooth_noise(rng, (12, 128), (2.0, 1.0)))
    texture_grid = _smooth_noise(rng, (48, 48), (0.8, 0.8))
    acquisition = rng.standard_normal((size, size), dtype=np.float32)

    x, y = _coordinates(anatomy, size)
    lungs = _lungs(anatomy)
    contours = (_lung_contour(lungs[0], x, y), _lung_contour(lungs[1], x, y))
    below = _below_diaphragm(anatomy, x, y)
    lung_distance = np.minimum(*(_lung_distance(anatomy, lung, contour, x, y, below)
                                 for lung, contour in zip(lungs, contours)))
    lung_alpha = _inside(lung_distance, edge)
    depth = 0.55 + 0.45 * _smoothstep(-lung_distance / 0.12)
    in_lung = np.flatnonzero(lung_alpha > 0)  # texture is only ever seen through lung air
    lung_x, lung_y = x.ravel()[in_lung], y.ravel()[in_lung]
    texture = 1.0 - 0.06 * _bilinear(texture_grid, (lung_y + 1.0) * 20.0, (lung_x + 1.0) * 20.0)
    markings = np.clip(_vessels(anatomy, lungs, vessel_grids, lung_x, lung_y), 0.0, 0.6)
    air = np.zeros_like(lung_alpha)
    air.ravel()[in_lung] = 0.88 * lung_alpha.ravel()[in_lung] * depth.ravel()[in_lung] * texture * (1.0 - markings)

    body_distance, body_half = _body_distance(anatomy, lungs, x, y)
    body = _inside(body_distance, edge)
    soft = body * (0.60 + 0.50 * np.sqrt(np.clip(1.0 - (x / body_half) ** 2, 0.0, 1.0)))
    trachea = 0.22 * _inside(np.abs(x) - 0.035, edge) * _inside(y - anatomy.lung_apex_y - 0.38, 0.05) * body
    clavicles = _where(np.abs(y - anatomy.lung_apex_y - 0.1) < 0.2,
                       functools.partial(_clavicles, anatomy, edge=edge), x, y)
    spine = _where(np.abs(x) < 0.1, functools.partial(_spine, edge=edge), x, y)
    tissue = soft + (0.30 * clavicles + 0.25 * spine) * body - trachea
    mediastinum = _inside(np.abs(x) - anatomy.mediastinum_half_width - 0.04, 0.08)
    dense = np.maximum(_inside(-below, 2.0 * ABDOMEN_WASHOUT_DEPTH), mediastinum)
    thorax = _inside(_thorax_distance(anatomy, lungs, contours, x, y, below), edge) >= 0.5
    return _Patient(anatomy, edge, x, y, lungs, contours, below, lung_alpha, air, tissue,
                    _ribs(anatomy, x, y, edge) * body, dense, acquisition, thorax,
                    _heart_roi(anatomy, x, y, below))


def _render(patient: _Patient, disease: DiseaseState) -> Phantom:
    """Add the disease: heart and fluid displace lung air (fluid also adds density), then
    expose the film. Behind the thick heart, mediastinum and abdomen scatter washes the
    ribs out (so the heart's base never shows against the abdomen). Nothing here draws
    random numbers."""
    anatomy, x, y, below, edge = patient.anatomy, patient.x, patient.y, patient.below, patient.edge
    heart = _heart(anatomy, disease.cardiomegaly)

    def alpha(hx: np.ndarray, hy: np.ndarray) -> np.ndarray:
        return _inside(_heart_distance(heart, hx, hy), edge)

    # The heart shape is not cut at the diaphragm here: lung air is, and cutting both with
    # the same soft edge would leave a line of air under the heart. Deeper than
    # ABDOMEN_WASHOUT_DEPTH nothing depends on the heart any more.
    heart_alpha = _where(_near_heart(heart, x, y, below, edge, ABDOMEN_WASHOUT_DEPTH), alpha, x, y)
    effusions = [_effusion_alpha(anatomy, lung, contour, severity, x, y, below, edge)
                 for lung, contour, severity in zip(patient.lungs, patient.contours,
                                                    (disease.effusion_right, disease.effusion_left))]
    fluid = np.maximum(effusions[0], effusions[1])
    washout = np.maximum(patient.dense, heart_alpha)
    attenuation = (patient.tissue + 0.18 * patient.ribs * (1.0 - 0.6 * washout)
                   - patient.air * (1.0 - heart_alpha) * (1.0 - fluid) + 0.10 * fluid)

    film = (1.0 - np.exp(-anatomy.exposure * attenuation)) / (1.0 - math.exp(-anatomy.exposure * 2.6))
    grey = 255.0 * (0.03 + 0.94 * np.clip(film, 0.0, 1.0) ** anatomy.gamma) + anatomy.noise_std * patient.acquisition
    image = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    masks = {
        "heart": heart_alpha * _inside(below, edge) >= 0.5,
        "lungs": patient.lung_alpha * (1.0 - heart_alpha) * (1.0 - fluid) >= 0.5,
        "thorax": patient.thorax,
        "effusion_right": effusions[0] >= 0.5,
        "effusion_left": effusions[1] >= 0.5,
    }
    ctr = _horizontal_extent(masks["heart"]) / max(_horizontal_extent(masks["thorax"]), 1)
    return Phantom(image, masks, ctr, patient.heart_roi)


def render_phantom(anatomy: PatientAnatomy, disease: DiseaseState, size: int = 128) -> Phantom:
    """Render one patient at one disease state, with ground-truth masks, CTR and heart ROI."""
    return _render(_patient(anatomy, size), disease)


def _heart_roi(anatomy: PatientAnatomy, x: np.ndarray, y: np.ndarray, below: np.ndarray) -> np.ndarray:
    """The severity-1 heart (on the diaphragm) dilated by 3% of the image, feathered over 3% more:
    the editing ROI covers every pixel any severity of the heart can change."""
    heart = _heart(anatomy, 1.0)
    dilation, feather = 0.06, 0.06

    def roi(hx: np.ndarray, hy: np.ndarray, h_below: np.ndarray) -> np.ndarray:
        distance = np.maximum(_heart_distance(heart, hx, hy), h_below)
        return _smoothstep((dilation + feather - distance) / feather)

    return _where(_near_heart(heart, x, y, below, dilation + feather, dilation + feather), roi, x, y, below)


# --------------------------------------------------------------------------- captions & datasets


def _grade(value: float, grades: tuple[tuple[float, str], ...]) -> str:
    return next(label for limit, label in grades if value < limit)


def caption_for(disease: DiseaseState, negatives: bool = False) -> str:
    """Report-style caption, e.g. "moderate cardiomegaly and small left pleural effusion".

    Heart grades (by cardiomegaly severity): < 0.25 normal heart size, < 0.50 mild,
    < 0.75 moderate, else severe. Effusion grades: < 0.10 none, < 0.40 small, < 0.70
    moderate, else large; equal grades on both sides read "bilateral". Absent effusions
    are only mentioned ("no pleural effusion") when ``negatives`` is true.
    """
    parts = [_grade(disease.cardiomegaly, CARDIOMEGALY_GRADES)]
    left, right = _grade(disease.effusion_left, EFFUSION_GRADES), _grade(disease.effusion_right, EFFUSION_GRADES)
    if left and left == right:
        parts.append(f"{left} bilateral pleural effusions")
    else:
        parts += [f"{grade} {side} pleural effusion" for grade, side in ((left, "left"), (right, "right")) if grade]
    if negatives and not (left or right):
        parts.append("no pleural effusion")
    return " and ".join(parts)


def progression_clip(anatomy: PatientAnatomy, start: DiseaseState, end: DiseaseState, frames: int,
                     size: int = 128, end_texture_seed: int | None = None) -> np.ndarray:
    """(frames, size, size) uint8: one patient swept linearly in severity from start to end.

    With ``end_texture_seed`` the end state is also *re-textured inside the heart ROI*: the
    same patient drawn with that texture seed there (vessels, lung texture, detector noise),
    faded in linearly over the clip. That is what two PIE states look like: each round
    redraws the texture inside the ROI and keeps the outside, so a transition between two
    states must also carry one texture into the other, steadily, not only grow the heart.
    """
    if frames < 2:
        raise ValueError(f"a progression clip needs at least 2 frames, got {frames}")
    patient = _patient(anatomy, size)
    steps = np.linspace(0.0, 1.0, frames)
    sweep = np.stack([_render(patient, start.lerp(end, float(t))).image for t in steps])
    if end_texture_seed is None:
        return sweep
    other = _patient(replace(anatomy, texture_seed=end_texture_seed), size)
    retextured = np.stack([_render(other, start.lerp(end, float(t))).image for t in steps])
    weight = patient.heart_roi[None] * steps[:, None, None]  # the ROI is geometry: the same for both draws
    blended = sweep * (1.0 - weight) + retextured * weight
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def sample_dataset(n: int, seed: int, size: int = 128) -> Iterator[Sample]:
    """Yield ``n`` (image, caption, disease, anatomy) samples; sample i depends only on (seed, i).

    Distribution (:meth:`DiseaseState.sample`): a fresh patient per sample; cardiomegaly
    uniform on [0, 1], so the four heart grades get ~25% each; 70% have no effusion, the
    other 30% split 40% left only, 40% right only, 20% bilateral, each affected side's
    severity uniform on [0.15, 1] (so small, moderate and large effusions all occur).
    """
    _check_size(size)
    for index in range(n):
        rng = np.random.default_rng([seed, index])
        anatomy = PatientAnatomy.sample(rng)
        disease = DiseaseState.sample(rng)
        yield Sample(render_phantom(anatomy, disease, size).image, caption_for(disease), disease, anatomy)


__all__ = [
    "CAPTIONS", "CARDIOMEGALY_GRADES", "EFFUSION_GRADES", "DiseaseState", "PatientAnatomy", "Phantom", "Sample",
    "caption_for", "progression_clip", "render_phantom", "sample_dataset",
]
