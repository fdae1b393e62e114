"""The Pathfinder generator: label law, marker placement on the right snake ends, the snake geometry (paddle
gaps and the continuity bound on turns), LRA parameters, determinism, and the task's naming."""

import math

import numpy as np
import pytest
import torch

from ssmkit.data import get_task
from ssmkit.data.pathfinder import PATHFINDER32, PATHX, generate_pathfinder, render_pathfinder


def test_label_law_is_a_fair_coin():
    # the label is the first draw of each image's own generator: over 4,000 images the mean is 0.5 +- 0.008 (1 s.e.)
    draws = [np.random.default_rng(np.random.SeedSequence([0, i])).integers(0, 2) for i in range(4000)]
    assert abs(np.mean(draws) - 0.5) < 0.03
    _, y = generate_pathfinder(12, PATHFINDER32, seed=0)
    assert y.tolist() == draws[:12]


@pytest.fixture(scope="module")
def images():
    return [render_pathfinder(PATHFINDER32, np.random.default_rng(np.random.SeedSequence([5, i]))) for i in range(16)]


def test_markers_sit_on_the_ends_of_the_right_snakes(images):
    labels = []
    for image, label, detail in images:
        first, second = detail["marked"]
        start, end = detail["markers"]
        segments = detail["segments"]
        assert len(segments) == 2 and all(len(s) == PATHFINDER32.contour_length for s in segments)
        assert np.allclose(start, segments[first][0][0])  # the free end of the first paddle of one snake ...
        assert np.allclose(end, segments[second][-1][1])  # ... and the far end of the last paddle of a snake
        assert (first == second) == (label == 1)  # label 1: same snake; label 0: one end of each
        for centre in (start, end):
            y, x = np.round(centre).astype(int)
            assert image[y, x] >= 100  # a marker (value 1 of 2 before scaling, i.e. ~127) is drawn there
        labels.append(label)
    assert set(labels) == {0, 1}


def test_snake_geometry_follows_the_lra_parameters(images):
    p = PATHFINDER32
    for image, _, detail in images:
        assert image.shape == (32, 32) and image.dtype == np.uint8 and image.max() == 255 and image.min() == 0
        for snake in detail["segments"]:
            for (a, b), (c, d) in zip(snake[:-1], snake[1:]):
                assert abs(np.linalg.norm(b - a) - p.paddle_length) < 1e-9  # paddles of paddle_length
                assert np.linalg.norm(c - b) <= 2 * p.margins[0] + 1.5  # a gap of ~2m between paddles (+ rounding)
                turn = math.atan2(*(d - c)) - math.atan2(*(b - a))
                turn = abs((turn + math.pi) % (2 * math.pi) - math.pi)
                # the orientation law is zero beyond pi / (2 continuity); pixel rounding of the ends adds < 30 deg
                assert turn < math.pi / (2 * p.continuity) + math.radians(30)


def test_lra_parameters():
    assert (PATHFINDER32.window, PATHFINDER32.paddle_length, PATHFINDER32.contour_length) == (32, 2, 14)
    assert (PATHFINDER32.distractor_length, PATHFINDER32.num_distractors, PATHFINDER32.seed_distance) == (4, 5, 7)
    assert (PATHX.window, PATHX.paddle_length, PATHX.distractor_length, PATHX.num_distractors) == (128, 5, 4, 8)
    assert PATHX.margins == (2, 3) and PATHX.antialias == 2


def test_deterministic_and_independent_of_workers():
    x1, y1 = generate_pathfinder(3, PATHFINDER32, seed=2, workers=1)
    x2, y2 = generate_pathfinder(3, PATHFINDER32, seed=2, workers=2)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.shape == (3, 1024, 1)


def test_task_is_named_as_regenerated_with_its_size(tmp_path):
    task = get_task("pathfinder", n_train=2, n_val=1, n_test=1, workers=1)
    assert task.info().title == "Pathfinder-32 (regenerated, 4 images)"
    assert "LRA Pathfinder" not in get_task("pathfinder").info().title
    assert get_task("pathfinder", preset="pathx").info().length == 128 * 128
    splits = task.splits(tmp_path)
    x, y = splits["train"][0]
    assert x.shape == (1024, 1) and -1 <= float(x.min()) and float(x.max()) == 1.0
    with pytest.raises(ValueError, match="preset must be one of"):
        get_task("pathfinder", preset="pathfinder64")
