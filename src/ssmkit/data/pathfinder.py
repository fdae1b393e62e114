"""Pathfinder regenerated (Linsley et al. 2018, arXiv 1805.08315; LRA Pathfinder-32 and Path-X, arXiv 2011.04006):
is there a path between the two markers? A vectorised re-derivation of the snakes2 generator (drewlinsley/pathfinder,
MIT © 2018 Junkyung Kim) with the LRA parameters.

Algorithm per image (numpy; every step works on whole arrays, no pixel loops; images are independent, so
``generate_pathfinder`` spreads them over processes):

1. label ~ Bernoulli(0.5); a paddle margin m is drawn from the margin list.
2. Two target snakes. A snake is a chain of ``contour_length`` paddles (line segments of ``paddle_length`` L and
   ``thickness``). The first paddle of snake 1 starts at a free pixel at least 2·``seed_distance`` from the borders,
   with a uniform orientation θ (whole degrees); snake 2 starts ``seed_distance`` away in a uniform direction.
   Each paddle has a pivot 2m behind its start along the previous direction; the next pivot is the last pivot moved
   L + 2m along the last orientation, and the next paddle ends on the circle of radius L + m around it (candidates:
   the pixels one arc-pixel apart on that circle). The candidate law is
   P ∝ (1 − occupied) · max(cos(min(Δθ · continuity, π/2)), 0)², with the occupancy mask dilated by m; a drawn
   paddle whose margin-dilated mask overlaps the occupancy is redrawn (``max_paddle_retrial``), and if a snake
   dead-ends, the whole pair is drawn again. The two snakes grow alternately.
3. ``num_distractors`` snakes of ``distractor_length`` paddles anywhere free (each tried ``max_distractor_retrial``
   + 1 times, then skipped; no new one once under 1 % of the image is free), so fewer may appear.
4. Markers (discs of ``marker_radius``): label 1 on the start of one target snake and the end of the same snake;
   label 0 on the start of one and the end of the other.
5. Image = pixel-wise max of the strokes (paddle intensity = snake contrast × paddle contrast for the targets, a
   snake contrast for each distractor paddle) and the markers (1), min–max scaled to 0..255 (uint8).

Departures from the original, all of rendering detail: strokes and markers are anti-aliased by area sampling at
``antialias`` × resolution (the original draws at that resolution and resizes with a Lanczos filter), occupancy
the occupancy is the coverage of the margin-widened paddles (a paddle collides where it and the occupancy sum
to 1.8 or more, the original's test on its Lanczos-resized masks), and the second seed is placed without an
overlap test, as in the original.
The statistics tested are the label balance and the marker placement. The images are *regenerated*: report results
as "Pathfinder-32 (regenerated, N images)", never as LRA Pathfinder.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import torch

from ssmkit.data.pool import process_pool
from ssmkit.data.task import GeneratedTask, TaskInfo, check_positive, register_task


@dataclasses.dataclass(frozen=True)
class PathfinderParams:
    """The generator's parameters (defaults of neither preset; use ``PATHFINDER32`` or ``PATHX``).

    Args:
        window: image side in pixels.
        padding: border pixels kept free.
        antialias: supersampling factor of the strokes and markers.
        margins: paddle margins m to draw from (pixels kept free around each paddle).
        paddle_length: paddle length L in pixels.
        thickness: paddle thickness in pixels.
        marker_radius: marker disc radius in pixels.
        contour_length: paddles per target snake.
        seed_distance: distance between the starts of the two target snakes.
        continuity: the continuity factor of the orientation law.
        distractor_length: paddles per distractor snake.
        num_distractors: distractor snakes tried.
        snake_contrasts: snake contrasts to draw from.
        paddle_contrasts: paddle contrasts to draw from (targets only).
        max_paddle_retrial: redraws of a colliding paddle.
        max_distractor_retrial: redraws of a failed distractor snake.
    """

    window: int
    padding: int
    antialias: int
    margins: tuple
    paddle_length: int
    thickness: float
    marker_radius: float
    contour_length: int
    seed_distance: int
    continuity: float
    distractor_length: int
    num_distractors: int
    snake_contrasts: tuple
    paddle_contrasts: tuple
    max_paddle_retrial: int = 2
    max_distractor_retrial: int = 4


# LRA Pathfinder-32, curv_contour_length_14 (the LRA builder's overrides; distractors 14 // 3 = 4 paddles, 20 // 4 = 5)
PATHFINDER32 = PathfinderParams(32, 1, 2, (1,), 2, 0.5, 1.5, 14, 7, 1.0, 4, 5, (2.0,), (0.75,))
# LRA Path-X (Pathfinder-128): paddle_length keeps its default 5; Python-2 division gives 4 paddles and 35 // 4 = 8
PATHX = PathfinderParams(128, 1, 2, (2, 3), 5, 1.5, 3.0, 14, 20, 1.8, 4, 8, (0.9,), (1.0,))
PRESETS = {"pathfinder32": PATHFINDER32, "pathx": PATHX}


class _DeadEnd(Exception):
    pass


class _Canvas:
    """One image being drawn: strokes, occupancy, and the sub-pixel grid used to render."""

    def __init__(self, p: PathfinderParams, rng: np.random.Generator, margin: int):
        self.p, self.rng, self.m = p, rng, margin
        n = p.window
        self.image = np.zeros((n, n))
        self.occupied = np.zeros((n, n))  # soft occupancy in [0, 1]: the max of the paddles' footprints
        b = p.padding
        if b > 0:
            self.occupied[:b, :] = self.occupied[-b:, :] = self.occupied[:, :b] = self.occupied[:, -b:] = 1.0
        r = margin
        yy, xx = np.ogrid[-r:r + 1, -r:r + 1]
        self.disc_offsets = np.argwhere(xx ** 2 + yy ** 2 <= r ** 2) - r  # (D, 2): the margin's dilation disc
        a = p.antialias
        self.sub = (np.arange(a) + 0.5) / a - 0.5  # sub-pixel offsets inside a pixel

    # -- rendering: coverage of a segment or a disc, vectorised over a local window ------------------------------
    def _window(self, lo, hi):
        n = self.p.window
        y0, x0 = max(int(math.floor(lo[0])), 0), max(int(math.floor(lo[1])), 0)
        y1, x1 = min(int(math.ceil(hi[0])) + 1, n), min(int(math.ceil(hi[1])) + 1, n)
        return y0, y1, x0, x1

    def segment(self, a, b, radius: float, antialiased: bool):
        """Coverage (antialiased) or mask (pixel centres) of the points within ``radius`` of segment a-b."""
        a, b = np.asarray(a, float), np.asarray(b, float)
        ext = radius + 1
        y0, y1, x0, x1 = self._window(np.minimum(a, b) - ext, np.maximum(a, b) + ext)
        out = np.zeros((self.p.window, self.p.window), dtype=float if antialiased else bool)
        if y0 >= y1 or x0 >= x1:
            return out
        offsets = self.sub if antialiased else np.zeros(1)
        ys = (np.arange(y0, y1)[:, None] + offsets[None, :]).reshape(-1)  # (rows * k,)
        xs = (np.arange(x0, x1)[:, None] + offsets[None, :]).reshape(-1)
        d = b - a
        t = ((ys[:, None] - a[0]) * d[0] + (xs[None, :] - a[1]) * d[1]) / max(float(d @ d), 1e-12)
        t = np.clip(t, 0.0, 1.0)
        dist2 = (ys[:, None] - a[0] - t * d[0]) ** 2 + (xs[None, :] - a[1] - t * d[1]) ** 2
        inside = dist2 <= radius ** 2
        k = len(offsets)
        patch = inside.reshape(y1 - y0, k, x1 - x0, k).mean(axis=(1, 3)) if antialiased else inside
        out[y0:y1, x0:x1] = patch
        return out

    def stroke(self, a, b):
        half = self.p.thickness / 2 + 0.25 / self.p.antialias  # a line at least one sub-pixel wide
        return self.segment(a, b, half, antialiased=True)

    def footprint(self, a, b):
        """The paddle widened by the margin, as coverage in [0, 1]."""
        return self.segment(a, b, self.p.thickness / 2 + self.m, antialiased=True)

    def collides(self, foot) -> bool:
        """A footprint collides where it and the occupancy are both (nearly) full: sum >= 1.8, as in snakes2."""
        return bool((foot + self.occupied).max() >= 1.8)

    def occupy(self, foot) -> None:
        self.occupied = np.maximum(self.occupied, foot)

    def free(self) -> np.ndarray:
        """Pixels counted as free (occupancy < 0.3)."""
        return self.occupied < 0.3

    def inside(self, point) -> bool:
        n = self.p.window
        return 0 <= point[0] < n and 0 <= point[1] < n

    # -- snakes --------------------------------------------------------------------------------------------------
    def seed(self, tail, theta):
        """The first paddle from ``tail`` along ``theta``: (segment, footprint, pivot) or None if out of bounds."""
        u = np.array([math.sin(theta), math.cos(theta)])
        L, m = self.p.paddle_length, self.m
        head, pivot = tail + L * u, tail - m * u
        if not (self.inside(head) and self.inside(pivot)):
            return None
        return (tail, head), self.footprint(tail, head), pivot

    def extend(self, pivot, theta):
        """The next paddle of a snake whose last pivot and orientation are given (raises _DeadEnd)."""
        p, m, rng = self.p, self.m, self.rng
        L = p.paddle_length
        new_pivot = pivot + (L + 2 * m) * np.array([math.sin(theta), math.cos(theta)])
        radius = L + m
        step = 2 * math.pi / (2 * math.pi * radius)  # one pixel of arc
        angles = np.arange(0, 2 * math.pi, step)
        ring = np.stack([new_pivot[0] + radius * np.sin(angles), new_pivot[1] + radius * np.cos(angles)], 1)
        ok = (ring >= 0).all(1) & (ring < p.window).all(1)
        if not ok.any():
            raise _DeadEnd
        coords = np.unique(ring[ok].astype(int), axis=0)  # (K, 2) candidate ends
        disp = coords - new_pivot
        orient = np.arctan2(disp[:, 0], disp[:, 1])
        delta = np.abs(orient - theta)
        delta = np.minimum(np.minimum(delta, 2 * math.pi - delta) * p.continuity, math.pi / 2)
        # the occupancy widened by the margin (a grey dilation with the margin's disc), read at the candidates only
        near = coords[:, None, :] + self.disc_offsets[None, :, :]  # (K, D, 2)
        n = p.window
        valid = ((near >= 0) & (near < n)).all(-1)
        values = np.where(valid, self.occupied[near[..., 0].clip(0, n - 1), near[..., 1].clip(0, n - 1)], 0.0)
        pmf = np.clip(1 - values.max(1), 0, 1) * np.maximum(np.cos(delta), 0) ** 2
        if pmf.sum() < 1e-4:
            raise _DeadEnd
        pmf = pmf / pmf.sum()
        for _ in range(p.max_paddle_retrial + 1):
            i = rng.choice(len(pmf), p=pmf)
            end = coords[i].astype(float)
            u = np.array([math.sin(orient[i]), math.cos(orient[i])])
            start = end - L * u
            foot = self.footprint(start, end)
            if not self.collides(foot):
                return (start, end), foot, new_pivot, float(orient[i])
        raise _DeadEnd

    def draw(self, segment, contrast):
        self.image = np.maximum(self.image, contrast * self.stroke(*segment))

    def contrast(self, choices) -> float:
        return float(choices[self.rng.integers(len(choices))])


def _target_pair(c: _Canvas):
    """Grow the two target snakes; returns (segments per snake, starts, ends) or raises _DeadEnd."""
    p, rng = c.p, c.rng
    mu = list(p.snake_contrasts) * 2
    rng.shuffle(mu)
    n = p.window
    zone = c.free()
    s = 2 * p.seed_distance
    zone[:s, :] = zone[n - s:, :] = zone[:, :s] = zone[:, n - s:] = False
    free = np.argwhere(zone)
    if len(free) == 0:
        raise _DeadEnd
    seeds = []
    for k in range(2):
        for _ in range(p.max_paddle_retrial + 1):
            theta = math.radians(int(rng.integers(-180, 180)))
            if k == 0:
                tail = free[rng.integers(len(free))].astype(float)
            else:
                phi = math.radians(int(rng.integers(0, 360)))
                tail = np.round(seeds[0][0][0] + p.seed_distance * np.array([math.sin(phi), math.cos(phi)]))
            got = c.seed(tail, theta)
            if got is not None:
                break
        else:
            raise _DeadEnd
        segment, foot, pivot = got
        c.draw(segment, c.contrast(p.paddle_contrasts) * mu[k])
        seeds.append((segment, foot, pivot, theta))
    segments = [[seeds[0][0]], [seeds[1][0]]]
    state = [[s_[1], s_[2], s_[3]] for s_ in seeds]  # last footprint, pivot, orientation
    for _ in range(p.contour_length - 1):
        contrast = c.contrast(p.paddle_contrasts)
        for k in range(2):
            last_foot, pivot, theta = state[k]
            segment, foot, pivot, theta = c.extend(pivot, theta)
            c.draw(segment, contrast * mu[k])
            c.occupy(last_foot)  # the previous paddle joins the occupancy once its successor is placed
            state[k] = [foot, pivot, theta]
            segments[k].append(segment)
    for k in range(2):
        c.occupy(state[k][0])
    starts = [segments[k][0][0] for k in range(2)]
    ends = [segments[k][-1][1] for k in range(2)]
    return segments, starts, ends


def _distractor(c: _Canvas) -> bool:
    """Try to add one distractor snake; on failure the canvas is left as it was."""
    p, rng = c.p, c.rng
    if c.free().mean() < 0.01:
        return False
    image, occupied = c.image.copy(), c.occupied.copy()
    try:
        free_px = c.free()
        free_px[0, :] = free_px[-1, :] = free_px[:, 0] = free_px[:, -1] = False
        free = np.argwhere(free_px)
        if len(free) == 0:
            raise _DeadEnd
        for _ in range(p.max_paddle_retrial + 1):
            theta = math.radians(int(rng.integers(-180, 180)))
            got = c.seed(free[rng.integers(len(free))].astype(float), theta)
            if got is not None and not c.collides(got[1]):
                break
        else:
            raise _DeadEnd
        segment, foot, pivot = got
        c.draw(segment, c.contrast(p.snake_contrasts))
        for _ in range(p.distractor_length - 1):
            segment, new_foot, pivot, theta = c.extend(pivot, theta)
            c.draw(segment, c.contrast(p.snake_contrasts))
            c.occupy(foot)
            foot = new_foot
        c.occupy(foot)
        return True
    except _DeadEnd:
        c.image, c.occupied = image, occupied
        return False


def _disc(c: _Canvas, centre) -> np.ndarray:
    return c.segment(centre, centre, c.p.marker_radius, antialiased=True)


def render_pathfinder(params: PathfinderParams, rng: np.random.Generator, max_attempts: int = 1000) -> tuple:
    """Draw one Pathfinder image.

    Args:
        params: the parameters (``PATHFINDER32`` or ``PATHX`` for the LRA settings).
        rng: the numpy random generator.
        max_attempts: target-pair draws before giving up (``RuntimeError``).

    Returns:
        (image, label, detail): the image as a (window, window) uint8 array, the label (1: the markers are on the
        same snake), and a dict with ``segments`` (the paddles of each target snake), ``markers`` (the two marker
        centres) and ``marked`` (the target snake of each marker).
    """
    label = int(rng.integers(0, 2))
    margin = int(params.margins[rng.integers(len(params.margins))])
    for _ in range(max_attempts):
        c = _Canvas(params, rng, margin)
        try:
            segments, starts, ends = _target_pair(c)
            break
        except _DeadEnd:
            continue
    else:
        raise RuntimeError(f"no pair of target snakes fitted in {max_attempts} attempts; check the parameters")
    for _ in range(params.num_distractors):
        for _ in range(params.max_distractor_retrial + 1):
            if _distractor(c):
                break
    first = int(rng.integers(0, 2))
    second = first if label == 1 else 1 - first
    markers = np.maximum(_disc(c, starts[first]), _disc(c, ends[second]))
    image = np.maximum(c.image, markers)
    lo, hi = image.min(), image.max()
    scaled = np.round((image - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
    return scaled, label, {"segments": segments, "markers": (starts[first], ends[second]), "marked": (first, second)}


def _render_batch(job: tuple) -> tuple[np.ndarray, np.ndarray]:
    params, seed, indices = job
    images, labels = [], []
    for i in indices:
        image, label, _ = render_pathfinder(params, np.random.default_rng(np.random.SeedSequence([seed, i])))
        images.append(image)
        labels.append(label)
    return np.stack(images), np.array(labels)


def generate_pathfinder(
    n: int, params: PathfinderParams = PATHFINDER32, seed: int = 0, workers: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` images; image i uses the seed (``seed``, i), so the data do not depend on ``workers``.

    Args:
        n: number of images (B).
        params: ``PATHFINDER32``, ``PATHX`` or custom parameters.
        seed: the seed.
        workers: processes drawing images (1: in this process).

    Returns:
        pixels (B, L, 1) uint8 in raster order (L = window²) and labels (B,) int64.
    """
    check_positive(n=n, workers=workers)
    chunks = [range(i, min(i + 64, n)) for i in range(0, n, 64)]
    jobs = [(params, seed, list(r)) for r in chunks]
    if workers == 1:
        parts = list(map(_render_batch, jobs))
    else:  # never forked from this (threaded) process: data/pool.py
        with process_pool(workers) as pool:
            parts = pool.map(_render_batch, jobs)
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images.reshape(n, -1, 1)), torch.from_numpy(labels).long()


@register_task("pathfinder")
@dataclasses.dataclass(frozen=True)
class PathfinderTask(GeneratedTask):
    """Pathfinder regenerated with the LRA parameters (``preset`` "pathfinder32" or "pathx"); pixels in [−1, 1].

    The LRA sets have 200,000 images per difficulty split 80 / 10 / 10; the defaults here are a reduced set
    (named with its size in the title). Inputs (B, L, 1) with L = 1,024 (Path-X: 16,384), 2 classes.

    Args:
        preset: "pathfinder32" (LRA Pathfinder-32, curv_contour_length_14) or "pathx" (Path-X, 128 × 128).
        n_train: training images.
        n_val: validation images.
        n_test: test images.
        workers: processes drawing (0: every CPU); not part of the cache key (the data do not depend on it).
        seed: the seed.
    """

    preset: str = "pathfinder32"
    n_train: int = 16_000
    n_val: int = 2_000
    n_test: int = 2_000
    workers: int = 0
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()  # the options' kinds
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}; got {self.preset!r}")
        check_positive(n_train=self.n_train, n_val=self.n_val, n_test=self.n_test)
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0: every CPU); got {self.workers}")

    def options(self) -> dict:
        """The cache key: every option but ``workers``."""
        out = super().options()
        del out["workers"]
        return out

    def info(self) -> TaskInfo:
        """Float inputs (B, window², 1), 2 classes."""
        side = PRESETS[self.preset].window
        total = self.n_train + self.n_val + self.n_test
        name = "Pathfinder-32" if self.preset == "pathfinder32" else "Path-X (Pathfinder-128)"
        return TaskInfo(self.name, f"{name} (regenerated, {total:,} images)", "generated", "classify", side * side,
                        1, None, 2, "snakes2 generator re-derived with the LRA parameters (arXiv 1805.08315, "
                        "2011.04006)", "nothing (generated; minutes to hours for large sets)")

    def generate(self) -> dict[str, torch.Tensor]:
        """Draw every image once and split in order (train, val, test)."""
        total = self.n_train + self.n_val + self.n_test
        x, y = generate_pathfinder(total, PRESETS[self.preset], self.seed, self.workers or os.cpu_count() or 1)
        a, b = self.n_train, self.n_train + self.n_val
        return {"train_x": x[:a], "train_y": y[:a], "val_x": x[a:b], "val_y": y[a:b], "test_x": x[b:], "test_y": y[b:]}

    def splits(self, root: str | os.PathLike | None = None):
        """The cached uint8 pixels, returned scaled to [−1, 1] (as the LRA loaders do).

        Args:
            root: the data root (default ``$SSMKIT_DATA`` or ``~/.cache/ssmkit``).
        """
        from ssmkit.data.sequences import ScaledSequences
        from ssmkit.data.store import cached

        tensors = cached(self.name, self.options(), self.generate, root)
        return {s: ScaledSequences(tensors[f"{s}_x"], tensors[f"{s}_y"], 2 / 255, -1.0)
                for s in ("train", "val", "test")}
