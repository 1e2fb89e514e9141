"""The released code's render procedure, re-enacted as the speed baseline (render/released_procedure.py, design §9).

Nothing in the pipeline calls it, so these tests keep it honest as a baseline: its z-buffer keeps the
largest z per truncated pixel (the released rule, design §5.6), and one sample runs every view's windows.
"""

from __future__ import annotations

import numpy as np
import pytest

from pointad.render import released_procedure
from pointad.render.synthetic.dense import dense_sample


def test_zbuffer_keeps_the_largest_z_per_truncated_pixel():
    # points 0-2 truncate to pixel (3, 4): z 1.0, 2.0 and 2.0 (both tied maxima win); point 3 is alone in
    # (0, 0); point 4 lies off the 336 x 336 image and point 5 at u = -0.5, which int() truncates to 0
    # (kept, as the released code's truncation does), in (0, 0) with the larger z
    uv = np.array([[3.2, 4.9], [3.9, 4.0], [3.0, 4.5], [0.1, 0.2], [336.0, 1.0], [-0.5, 0.3]])
    z = np.array([1.0, 2.0, 2.0, 0.5, 9.0, 0.7])
    assert released_procedure._zbuffer_loop(uv, z).tolist() == [False, True, True, False, False, True]


@pytest.mark.slow
def test_one_sample_runs_every_view_and_reports_its_split():
    sample = dense_sample(32)
    seconds = released_procedure.run_sample(sample.points, sample.point_labels)
    assert set(seconds) == {"render", "visibility", "total", "visible_pairs"}
    assert seconds["total"] == seconds["render"] + seconds["visibility"]
    # a height field seen from 9 tilts at most 45 degrees: most points win a pixel in some view, none twice
    views = len(released_procedure.VIEWS)
    assert views == 9 and len(sample.points) < seconds["visible_pairs"] <= views * len(sample.points)
