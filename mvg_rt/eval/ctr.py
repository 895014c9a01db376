"""Classical cardiothoracic-ratio (CTR) measurement from a frontal chest X-ray alone.

Why classical: the CTR is the yardstick for whether a simulated cardiomegaly progression
is real, so it must not share failure modes with the generator (no learning, no ground
truth masks). It follows what a radiologist does with a ruler:

1. Lung fields are the dark regions enclosed by the body. After median + Gaussian
   smoothing, a three-class Otsu finds the air around the patient (dark, touching the
   border); a two-class Otsu inside the body separates aerated lung from soft tissue, so
   the threshold follows the exposure. The largest enclosed dark region on each side is
   a lung; closing and hole filling absorb ribs and vessel markings.
2. Every edge used below is moved, row by row, to the intensity rise within a few
   pixels, the middle of the edge, so blur or a threshold that sits off-centre does not
   bias it. It is placed to a fraction of a pixel (the centroid of the rise above half
   its peak), and a running median over rows keeps one row (a vessel crossing the
   border, a noisy row) from setting an extreme.
3. The internal thoracic diameter is the horizontal extent of the two lung fields (their
   lateral margins are the inner margins of the rib cage).
4. The transverse cardiac diameter is the horizontal extent of the heart, whose borders
   are the lungs' medial edges below the hila. Each medial edge is followed down row by
   row while it stays one continuous edge, and cut at the cardiophrenic angle, the
   concave corner where it leaves the heart and runs out along the diaphragm dome: the
   point of its lower part lying furthest medial of the chord between that part's ends
   (the knee of the curve). The heart's extreme on that side is the edge's outermost
   point above the cut.
5. CTR = cardiac diameter / thoracic diameter (max right + max left extents, each at
   whatever level it occurs, as in the clinical definition).

Why sub-pixel, and why a knee rather than a slope threshold: at 128 px one pixel of heart
width is ~0.009 CTR, so whole-pixel borders, and a corner test that tips from one row to
another, made the readout jump when one grey level of noise was added. Each step after
the segmentation now varies continuously with the image, except where it picks one of
separate candidates (or the lung mask's edge, which centres an edge's search window,
moves a pixel). The readout's jitter under +-1 grey level of noise and its accuracy on
phantoms are in ``benchmarks/results/cpu-2core/ctr_noise.md`` (``benchmarks/ctr_noise.py``).

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
CORNER_DEPTH = 0.5  # px at 128: how far a concave corner must dip below the edge's chord
RIB_CAGE_ROWS = 5  # rows at 128 px of the running median along a rib-cage margin
HEART_BORDER_ROWS = 7  # likewise along a heart border (vessels and blobs cross it)


class NotAChestXray(MvgError, ValueError):
    """The image has no pair of lung fields, so no CTR can be measured."""


@dataclass(frozen=True)
class CtrMeasurement:
    """A CTR with the spans it came from, in input pixels.

    Spans are sub-pixel border positions in column coordinates: the border between columns
    c and c + 1 is at c + 0.5, so a width is the difference of its span's ends (a region
    covering columns a..b whole is b - a + 1 wide).
    """

    ctr: float
    heart_width: float
    thorax_width: float
    heart_row: int  # where the cardiac diameter is drawn: between its two extreme rows
    thorax_row: int  # likewise for the thoracic diameter
    heart_span: tuple[float, float]  # (right heart border = image-left border, apex-side border)
    thorax_span: tuple[float, float]


def measure_ctr(image: np.ndarray) -> CtrMeasurement:
    """Measure the CTR of a PA chest X-ray given as uint8 (H, W) or (H, W, 3).

    Raises :class:`NotAChestXray` (a ``ValueError``) when no pair of lung fields is found.
    """
    smooth = _smoothed(_grey(image))
    right_lung, left_lung = _lung_fields(smooth)
    thorax_left, thorax_left_row = _rib_cage_margin(smooth, right_lung, leftmost=True)
    thorax_right, thorax_right_row = _rib_cage_margin(smooth, left_lung, leftmost=False)
    heart_left, heart_left_row, heart_right, heart_right_row = _heart_borders(smooth, right_lung, left_lung)
    heart_width = heart_right - heart_left
    thorax_width = thorax_right - thorax_left
    return CtrMeasurement(
        ctr=heart_width / thorax_width,
        heart_width=heart_width,
        thorax_width=thorax_width,
        heart_row=(heart_left_row + heart_right_row) // 2,
        thorax_row=(thorax_left_row + thorax_right_row) // 2,
        heart_span=(heart_left, heart_right),
        thorax_span=(thorax_left, thorax_right),
    )


def noise_jitter(image: np.ndarray, rng: np.random.Generator, draws: int = 16, grey_levels: int = 1) -> float:
    """Largest CTR change over ``draws`` copies of ``image`` with uniform integer noise in
    [-grey_levels, grey_levels] added (clipped to uint8): the readout's own resolution on
    that image, the floor under any CTR difference between two runs that it is asked to judge."""
    ctr = measure_ctr(image).ctr
    noisy = (np.clip(np.asarray(image, dtype=np.int16) + rng.integers(-grey_levels, grey_levels + 1, np.shape(image)),
                     0, 255).astype(np.uint8) for _ in range(draws))
    return max(abs(measure_ctr(copy).ctr - ctr) for copy in noisy)


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
    r = max(1, round(radius))
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


def _rib_cage_margin(smooth: np.ndarray, lung: np.ndarray, leftmost: bool) -> tuple[float, int]:
    """(column, row) of the lung's outermost lateral margin, i.e. the inner rib-cage margin.

    Each row's mask edge is moved to the centre of the lung-to-chest-wall rise within a few
    pixels: on a blurred image the thin chest wall falls below the lung threshold and the
    mask spills past it, but the wall's inner edge is still where the image rises. A
    running median over rows keeps one noisy row from setting the extreme.
    """
    rows = np.flatnonzero(lung.any(axis=1))
    sub = lung[rows]
    coarse = sub.argmax(axis=1) if leftmost else lung.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    margin = _running_median(_rise_centre(smooth, rows, coarse, -1 if leftmost else 1), RIB_CAGE_ROWS, smooth.shape)
    best = int(margin.argmin() if leftmost else margin.argmax())
    return float(margin[best]), int(rows[best])


def _running_median(values: np.ndarray, rows_at_128: int, shape: tuple[int, ...]) -> np.ndarray:
    """Median over an odd number of neighbouring rows (``rows_at_128`` at 128 px, scaled)."""
    size = 2 * round((rows_at_128 * _scale(shape) - 1) / 2) + 1
    return ndimage.median_filter(values, size=max(3, size), mode="nearest")


def _rise_centre(smooth: np.ndarray, rows: np.ndarray, columns: np.ndarray, toward: int) -> np.ndarray:
    """Per row, the sub-pixel column (within a few pixels of ``columns``) where the smoothed
    image rises in direction ``toward`` (+1: brighter to the right): the middle of the
    edge, whatever the threshold was.

    The rise between two neighbouring pixels sits half-way between them (column c + 0.5 for
    c and c + 1). The edge is the centroid of the rises above half the largest one (the
    edge's full width at half maximum), not the largest rise itself: a whole-pixel argmax
    jumps a pixel (~0.01 CTR at 128 px), or to a second edge a few pixels away, when one
    grey level tips it, whereas the centroid moves continuously with the image.
    """
    reach = max(2, round(3 * _scale(smooth.shape)))
    dark = np.clip(columns[:, None] + np.arange(-reach, reach + 1)[None, :], 1, smooth.shape[1] - 2)
    rise = smooth[rows[:, None], dark + toward] - smooth[rows[:, None], dark]
    top = rise.max(axis=1, keepdims=True)
    # a row with no rise at all (top <= 0) keeps its largest one
    weight = np.where(top > 0, np.maximum(rise - 0.5 * top, 0.0), rise == top)
    return (weight * (dark + 0.5 * toward)).sum(axis=1) / weight.sum(axis=1)


def _parabola_peak(before: np.ndarray, peak: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Offset in [-0.5, 0.5] samples of the vertex of the parabola through three samples
    around a maximum (0 where they are not curved down)."""
    curvature = before - 2.0 * peak + after
    offset = np.divide(before - after, 2.0 * curvature, out=np.zeros_like(curvature), where=curvature < 0)
    return np.clip(offset, -0.5, 0.5)


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


def _cardiophrenic_corner(outward: np.ndarray, first: int, min_depth: float) -> float:
    """Sub-sample index of the cardiophrenic angle along a medial edge given as its outward
    position per row, searched from sample ``first`` down; the last sample if there is none.

    Above the angle the edge is the heart's border, below it the diaphragm dome, which runs
    out towards the chest wall much faster: the edge turns a concave corner there. The
    corner is the knee of that part of the edge: the point lying furthest medial of the
    chord joining its ends. That is the extreme of a quantity every row feeds, so it moves
    smoothly with the image, where the first row whose local change of slope passes a
    threshold tips from row to row. Higher up, the corner where the heart leaves the
    mediastinum is concave too, hence ``first``. A knee less than ``min_depth`` px deep is
    no corner (e.g. an effusion ends the lung above the diaphragm): all of it is heart.
    """
    n = len(outward)
    if first >= n - 2:
        return float(n - 1)
    samples = np.arange(n, dtype=np.float64)
    chord = outward[first] + (outward[-1] - outward[first]) * (samples - first) / (n - 1 - first)
    depth = (chord - outward)[first:]
    i = int(np.argmax(depth))
    if depth[i] < min_depth:  # also where the knee is an end, so i - 1 and i + 1 exist below
        return float(n - 1)
    return first + i + float(_parabola_peak(depth[i - 1], depth[i], depth[i + 1]))


def _extreme_above(outward: np.ndarray, corner: float) -> tuple[float, int]:
    """The largest outward position of the edge down to the sub-sample ``corner`` (the edge
    interpolated there, so it changes continuously as the corner moves) and the sample it
    is nearest to."""
    best = int(np.argmax(outward[:int(corner) + 1]))
    at_corner = float(np.interp(corner, np.arange(len(outward)), outward))
    if at_corner > outward[best]:
        return at_corner, round(corner)
    return float(outward[best]), best


def _heart_borders(smooth: np.ndarray, right_lung: np.ndarray, left_lung: np.ndarray
                   ) -> tuple[float, int, float, int]:
    """(left column, its row, right column, its row) of the cardiac silhouette."""
    top = min(_row_range(right_lung)[0], _row_range(left_lung)[0])
    bottom = max(_row_range(right_lung)[1], _row_range(left_lung)[1])
    start = top + int(HILUM_LEVEL * (bottom - top))
    corner_from_row = top + int(CARDIOPHRENIC_LEVEL * (bottom - top))
    min_depth = CORNER_DEPTH * _scale(smooth.shape)
    extremes = []
    for lung, medial_is_right in ((right_lung, True), (left_lung, False)):
        rows, edges = _medial_edge(lung, start, medial_is_right)
        if rows.size == 0:
            raise NotAChestXray("no cardiac border: the lung fields do not reach below the hila")
        toward = 1 if medial_is_right else -1
        outward = -toward * _running_median(_rise_centre(smooth, rows, edges, toward), HEART_BORDER_ROWS,
                                            smooth.shape)
        corner = _cardiophrenic_corner(outward, corner_from_row - start, min_depth)
        extreme, best = _extreme_above(outward, corner)
        extremes.append((-toward * extreme, int(rows[best])))
    (left, left_row), (right, right_row) = extremes
    if right <= left:
        raise NotAChestXray("the lung fields overlap: no mediastinum between them")
    return left, left_row, right, right_row
