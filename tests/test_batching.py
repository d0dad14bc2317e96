"""dgp_jax.batching.pad_to: a short batch filled up with copies of its last entry."""

from __future__ import annotations

import numpy as np

from dgp_jax.batching import pad_to


def test_pad_to_repeats_the_last_entry_along_the_axis():
    a = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(pad_to(a, 4), [[0, 1, 2], [3, 4, 5], [3, 4, 5], [3, 4, 5]])
    np.testing.assert_array_equal(pad_to(a, 5, axis=1), [[0, 1, 2, 2, 2], [3, 4, 5, 5, 5]])
    assert pad_to(a, 2) is a and pad_to(a, 1) is a  # long enough: the array itself
