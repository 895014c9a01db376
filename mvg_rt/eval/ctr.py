"""Classical cardiothoracic-ratio (CTR) measurement from a frontal chest X-ray alone.

Why classical: the CTR is the yardstick for whether a simulated cardiomegaly progression
is real, so it must not share failure modes with the generator (no learning, no ground
truth masks). It follows what a radiologist does with a ruler:

1. Lung fields are the dark regions enclosed by the body. After median + Gaussian
   smoothing, a three-class Otsu finds the air around the patient (dark, touching the
   border); a two-class Otsu inside the body separates aerated lung from soft tissue, so
   the threshold follows the exposure. The largest enclosed dark region on each side is
   a lung; closing and hole filling absorb ribs and vessel markings.
2. The internal thoracic diameter is the horizontal extent of the two lung fields (their
   lateral margins are the inner margins of the rib cage).
3. The transverse cardiac diameter is the horizontal extent of the heart, whose borders
   are the lungs' medial edges below the hila. Each medial edge is followed down row by
   row while it stays one continuous edge, and cut at the cardiophrenic angle, the
   concave corner where it leaves the heart and runs along the diaphragm dome.
4. Every edge is finally moved to the steepest intensity rise within a few pixels, the
   middle of the edge, so blur or a threshold that sits off-centre does not bias it.
5. CTR = cardiac diameter / thoracic diameter (max right + max left extents, each at
   whatever level it occurs, as in the clinical definition).

Lengths are tuned at 128 px and scale with the image, so 128x128 and 512x512 behave
alike, and the morphology keeps it working on the blurry, noisy outputs of a small
diffusion model trained on the phantoms (:mod:`mvg_rt.demo.phantom`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mvg_rt.errors import MvgError

MIN_SIDE = 48
MIN_CONTRAST = 6.0  # grey levels (std of the smoothed image): less is a blank frame
# Lung-field plausibility (fractions of the image). Phantoms with large bilateral effusions
# still give >= 0.06 area and 0.33 height per lung and 0.12 in all; smoothed noise does not.
MIN_LUNG_AREA = 0.04  # each lung
MIN_LUNGS_AREA = 0.10  # both lungs together
MIN_LUNG_HEIGHT = 0.28  # of the image height, each lung
MIN_VERTICAL_OVERLAP = 0.5  # of the shorter lung: the two fields sit side by side
OPENING_RADII = (1.5, 3.0, 4.5)  # px at 128, tried in turn to detach the lungs from the outside air
HILUM_LEVEL = 0.45  # the heart borders are searched below this fraction of the lung height
CARDIOPHRENIC_LEVEL = 0.65  # the cardiophrenic angles lie below this fraction of the lung height
CORNER_SLOPE = 0.5  # px/row: a jump in the edge's outward slope this big is a concave corner


class NotAChestXray(MvgError, ValueError):
    """The image has no pair of lung fields, so no CTR can be measured."""


@dataclass(frozen=True)
class CtrMeasurement:
    """A CTR with the spans it came from (columns inclusive, in input pixels)."""

    ctr: float
    heart_width: int
    thorax_width: int
    heart_row: int  # where the cardiac diameter is drawn: between its two extreme rows
    thorax_row: int  # likewise for the thoracic diameter
    heart_span: tuple[int, int]  # (right heart border = image-left column, apex-side column)
    thorax_span: tuple[int, int]


def measure_ctr(image: np.ndarray) -> CtrMeasurement:
    """Measure the CTR of a PA chest X-ray given as uint8 (H, W) or (H, W, 3).

    Raises :class:`NotAChestXray` (a ``ValueError``) when no pair of lung fields is found.
    """
    smooth = _smoothed(_grey(image))
    right_lung, left_lung = _lung_fields(smooth)
    thorax_left, thorax_left_row = _rib_cage_margin(smooth, right_lung, leftmost=True)
    thorax_right, thorax_right_row = _rib_cage_margin(smooth, left_lung, leftmost=False)
    heart_left, heart_left_row, heart_right, heart_right_row = _heart_borders(smooth, right_lung, left_lung)
    heart_width = heart_right - heart_left + 1
    thorax_width = thorax_right - thorax_left + 1
    return CtrMeasurement(
        ctr=heart_width / thorax_width,
        heart_width=heart_width,
        thorax_width=thorax_width,
        heart_row=(heart_left_row + heart_right_row) // 2,
        thorax_row=(thorax_left_row + thorax_right_row) // 2,
        heart_span=(heart_left, heart_right),
        thorax_span=(thorax_left, thorax_right),
    )


def _grey(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        array = array[..., :3].mean(axis=2)
    if array.ndim != 2:
        raise NotAChestXray(f"expected a grey (H, W) or RGB (H, W, 3) image, got shape {np.shape(image)}")
    if min(array.shape) < MIN_SIDE:
        raise NotAChestXray(f"image is {array.shape[1]}x{array.shape[0]}: too small to measure a CTR "
                            f"(need at least {MIN_SIDE} px a side)")
    return array.astype(np.float32)


def _scale(shape: tuple[int, ...]) -> float:
    """Lengths below are tuned at 128 px and scale with the image."""
    return min(shape[:2]) / 128.0


def _smoothed(grey: np.ndarray) -> np.ndarray:
    """Median removes salt-and-pepper noise, the Gaussian melts ribs and vessel markings
    into the lung field so it segments as one region."""
    sigma = max(1.0, 1.2 * _scale(grey.shape))
    return ndimage.gaussian_filter(ndimage.median_filter(grey, size=3), sigma)


def _otsu(values: np.ndarray) -> float:
    """Threshold maximising the between-class variance of a 256-bin histogram."""
    counts, edges = np.histogram(values, bins=256)
    centres = 0.5 * (edges[:-1] + edges[1:])
    weight = np.cumsum(counts).astype(np.float64)
    mass = np.cumsum(counts * centres)
    total, total_mass = weight[-1], mass[-1]
    below, above = weight[:-1], total - weight[:-1]
    valid = (below > 0) & (above > 0)
    mean_below = np.divide(mass[:-1], below, out=np.zeros_like(below), where=valid)
    mean_above = np.divide(total_mass - mass[:-1], above, out=np.zeros_like(above), where=valid)
    between = np.where(valid, below * above * (mean_below - mean_above) ** 2, -1.0)
    return float(edges[1:][int(np.argmax(between))])


def _air_threshold(values: np.ndarray) -> float:
    """Lower threshold of a three-class Otsu (air / lung / dense tissue) on 64 bins: the
    air around the patient is the darkest class, darker than aerated lung."""
    counts, edges = np.histogram(values, bins=64)
    centres = 0.5 * (edges[:-1] + edges[1:])
    weight = np.concatenate([[0.0], np.cumsum(counts)])
    mass = np.concatenate([[0.0], np.cumsum(counts * centres)])
    i, j = np.triu_indices(len(counts) + 1, k=1)  # classes [0, i), [i, j), [j, end)
    keep = (i > 0) & (j < len(counts))
    i, j = i[keep], j[keep]
    score = np.zeros(i.shape)
    for lo, hi in ((np.zeros_like(i), i), (i, j), (j, np.full_like(j, len(counts)))):
        w = weight[hi] - weight[lo]
        m = mass[hi] - mass[lo]
        score += np.divide(m * m, w, out=np.zeros_like(score), where=w > 0)
    return float(edges[i[int(np.argmax(score))]])


def _disk(radius: float) -> np.ndarray:
    r = max(1, int(round(radius)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return xx * xx + yy * yy <= r * r + r


def _touching_border(mask: np.ndarray) -> np.ndarray:
    labels, _ = ndimage.label(mask)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, border[border > 0])


def _lung_fields(smooth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image-left lung = patient's right, image-right lung = patient's left), cleaned masks.

    On a blurred image the thin chest wall can fade below the lung threshold and a lung
    field then touches the air around the body; a stronger opening cuts such bridges, so
    it is tried in turn (a clean image never needs it).
    """
    if float(smooth.std()) < MIN_CONTRAST:
        raise NotAChestXray("image has almost no contrast: not a chest X-ray")
    scale = _scale(smooth.shape)
    outside = ndimage.binary_dilation(_touching_border(smooth < _air_threshold(smooth)), _disk(1.5 * scale))
    if outside.sum() > 0.8 * smooth.size:
        raise NotAChestXray("no body found: the dark area covers most of the image")
    dark = (smooth < _otsu(smooth[~outside])) & ~outside
    error = NotAChestXray("no lung fields found")
    for radius in OPENING_RADII:
        try:
            return _pick_lungs(ndimage.binary_opening(dark, _disk(radius * scale)), scale)
        except NotAChestXray as failure:
            error = failure
    raise error


def _pick_lungs(dark: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The largest dark region enclosed by the body on each side of the image."""
    candidates = dark & ~_touching_border(dark)
    labels, count = ndimage.label(candidates)
    if count == 0:
        raise NotAChestXray("no lung fields found: no dark region enclosed by the body")
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(candidates, labels, index=index)
    centres = ndimage.center_of_mass(candidates, labels, index=index)
    half = dark.shape[1] / 2.0
    lungs = []
    for on_left in (True, False):
        side = [i for i, (_, col) in enumerate(centres) if (col < half) == on_left]
        if not side:
            raise NotAChestXray(f"no lung field found on the image {'left' if on_left else 'right'} side")
        best = max(side, key=lambda i: areas[i])
        lungs.append(_clean(labels == best + 1, scale))
    _check_pair(lungs[0], lungs[1])
    return lungs[0], lungs[1]


def _clean(lung: np.ndarray, scale: float) -> np.ndarray:
    """Close small notches (vessels touching the border) and fill enclosed markings."""
    pad = int(3 * scale) + 2
    closed = ndimage.binary_closing(np.pad(lung, pad), _disk(2.5 * scale))[pad:-pad, pad:-pad]
    return ndimage.binary_fill_holes(closed)


def _row_range(mask: np.ndarray) -> tuple[int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    return int(rows[0]), int(rows[-1])


def _check_pair(right_lung: np.ndarray, left_lung: np.ndarray) -> None:
    h, w = right_lung.shape
    for name, lung in (("image-left", right_lung), ("image-right", left_lung)):
        if lung.sum() < MIN_LUNG_AREA * h * w:
            raise NotAChestXray(f"the {name} dark region is too small to be a lung field")
        top, bottom = _row_range(lung)
        if bottom - top + 1 < MIN_LUNG_HEIGHT * h:
            raise NotAChestXray(f"the {name} dark region is too short to be a lung field")
    if right_lung.sum() + left_lung.sum() < MIN_LUNGS_AREA * h * w:
        raise NotAChestXray("the dark regions are too small to be lung fields")
    (top_r, bottom_r), (top_l, bottom_l) = _row_range(right_lung), _row_range(left_lung)
    overlap = min(bottom_r, bottom_l) - max(top_r, top_l) + 1
    if overlap < MIN_VERTICAL_OVERLAP * min(bottom_r - top_r + 1, bottom_l - top_l + 1):
        raise NotAChestXray("the two dark regions are not side by side like lung fields")


def _rib_cage_margin(smooth: np.ndarray, lung: np.ndarray, leftmost: bool) -> tuple[int, int]:
    """(column, row) of the lung's outermost lateral margin, i.e. the inner rib-cage margin.

    Each row's mask edge is moved to the steepest lung-to-chest-wall rise within a few
    pixels: on a blurred image the thin chest wall falls below the lung threshold and the
    mask spills past it, but the wall's inner edge is still the steepest rise. A running
    median over rows keeps one noisy row from setting the extreme.
    """
    rows = np.flatnonzero(lung.any(axis=1))
    sub = lung[rows]
    coarse = sub.argmax(axis=1) if leftmost else lung.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    refined = ndimage.median_filter(_steepest_rise(smooth, rows, coarse, -1 if leftmost else 1, keep_bright=False),
                                    size=5, mode="nearest")
    best = int(refined.argmin() if leftmost else refined.argmax())
    return int(refined[best]), int(rows[best])


def _steepest_rise(smooth: np.ndarray, rows: np.ndarray, columns: np.ndarray, toward: int,
                   keep_bright: bool) -> np.ndarray:
    """Per row, move ``columns`` (within a few pixels) to the pixel pair where the smoothed
    image rises fastest in direction ``toward`` (+1: brighter to the right): the middle of
    the edge, whatever the threshold was. Returns the bright or the dark pixel of the pair."""
    reach = max(2, int(round(3 * _scale(smooth.shape))))
    dark = np.clip(columns[:, None] + np.arange(-reach, reach + 1)[None, :], 1, smooth.shape[1] - 2)
    rise = smooth[rows[:, None], dark + toward] - smooth[rows[:, None], dark]
    best = dark[np.arange(len(rows)), rise.argmax(axis=1)]
    return best + toward if keep_bright else best


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (start, end) of the true runs of a 1-D mask."""
    padded = np.concatenate([[False], row, [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b) - 1) for a, b in zip(changes[::2], changes[1::2])]


def _medial_edge(lung: np.ndarray, start: int, medial_is_right: bool) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the first non-lung pixel medial to the lung, walking down from
    ``start`` while it stays one continuous edge (each row's run overlaps the previous one)."""
    rows, edges = [], []
    previous: tuple[int, int] | None = None
    for r in range(start, lung.shape[0]):
        runs = _runs(lung[r])
        if previous is not None:
            runs = [run for run in runs if run[0] <= previous[1] + 1 and run[1] >= previous[0] - 1]
        if not runs:
            break
        previous = max(runs, key=lambda run: run[1]) if medial_is_right else min(runs, key=lambda run: run[0])
        rows.append(r)
        edges.append(previous[1] + 1 if medial_is_right else previous[0] - 1)
    return np.array(rows, dtype=np.int64), np.array(edges, dtype=np.int64)


def _cardiac_length(outward: np.ndarray, rows: np.ndarray, corner_from_row: int, window: int) -> int:
    """How many leading samples of a medial edge are cardiac border.

    The heart bulges into the lung, so along its border the edge's outward slope only
    decreases. Where the heart rests on the diaphragm the edge turns a concave corner (the
    cardiophrenic angle) and runs out along the dome; that corner is the first place in the
    lower lung where the slope over ``window`` rows jumps up by CORNER_SLOPE px/row. Higher
    up, the corner where the heart leaves the mediastinum is concave too, hence the floor.
    """
    n = len(outward)
    concavity = np.full(n, -np.inf)
    for i in range(1, n - 1):
        if rows[i] >= corner_from_row:
            after = _slope(outward[i:i + window + 1])
            before = _slope(outward[max(0, i - window):i + 1])
            concavity[i] = after - before
    corners = np.flatnonzero(concavity >= CORNER_SLOPE)
    if corners.size == 0:
        return n
    i = int(corners[0])
    while i + 1 < n and concavity[i + 1] > concavity[i]:
        i += 1
    return i + 1


def _slope(values: np.ndarray) -> float:
    """Least-squares slope per sample: robust to the 1 px staircase of a digitised edge."""
    t = np.arange(len(values), dtype=np.float64) - (len(values) - 1) / 2.0
    return float(np.dot(t, values) / np.dot(t, t))


def _heart_borders(smooth: np.ndarray, right_lung: np.ndarray, left_lung: np.ndarray) -> tuple[int, int, int, int]:
    """(left column, its row, right column, its row) of the cardiac silhouette."""
    top = min(_row_range(right_lung)[0], _row_range(left_lung)[0])
    bottom = max(_row_range(right_lung)[1], _row_range(left_lung)[1])
    start = top + int(HILUM_LEVEL * (bottom - top))
    corner_from_row = top + int(CARDIOPHRENIC_LEVEL * (bottom - top))
    window = max(4, int(round(5 * _scale(right_lung.shape))))
    extremes = []
    for lung, medial_is_right in ((right_lung, True), (left_lung, False)):
        rows, edges = _medial_edge(lung, start, medial_is_right)
        if rows.size == 0:
            raise NotAChestXray("no cardiac border: the lung fields do not reach below the hila")
        edges = _steepest_rise(smooth, rows, edges, 1 if medial_is_right else -1, keep_bright=True)
        outward = -edges if medial_is_right else edges
        keep = _cardiac_length(outward, rows, corner_from_row, window)
        best = int(np.argmax(outward[:keep]))
        extremes.append((int(edges[best]), int(rows[best])))
    (left, left_row), (right, right_row) = extremes
    if right <= left:
        raise NotAChestXray("the lung fields overlap: no mediastinum between them")
    return left, left_row, right, right_row
