"""Layer maps of KV Prediction, worked by hand from the paper's rules."""

from __future__ import annotations

import pytest

from kvpred.layer_map import c_layer_map, check_layer_map, lp_kept_layers, lp_layer_map


def test_lp_kept_layers():
    assert lp_kept_layers(8, 0.25) == [0, 4]
    assert lp_kept_layers(8, 0.5) == [0, 2, 4, 6]
    assert lp_kept_layers(8, 0.75) == [0, 1, 2, 4, 5, 6]
    with pytest.raises(ValueError, match="fraction"):
        lp_kept_layers(8, 0.3)


def test_lp_map_uses_last_kept_layer_at_or_below():
    # kept [0, 4] -> aux layers 0, 1
    assert lp_layer_map(8, 0.25) == [0, 0, 0, 0, 1, 1, 1, 1]
    # kept [0, 1, 2, 4, 5, 6] -> base 3 uses aux 2 (base 2), base 7 uses aux 5 (base 6)
    assert lp_layer_map(8, 0.75) == [0, 1, 2, 2, 3, 4, 5, 5]
    assert lp_layer_map(5, 0.5) == [0, 0, 1, 1, 2]


def test_c_map_is_front_loaded():
    # 28 base layers over 12 aux layers: 2 each, the first 4 once more
    m = c_layer_map(28, 12)
    assert [m.count(j) for j in range(12)] == [3] * 4 + [2] * 8
    assert m == sorted(m) and len(m) == 28
    assert c_layer_map(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="needs 1..4 layers"):
        c_layer_map(4, 5)


def test_explicit_map_is_checked():
    assert check_layer_map((0, 0, 1), 3, 2) == [0, 0, 1]
    with pytest.raises(ValueError, match="2 entries for 3"):
        check_layer_map([0, 1], 3, 2)
    with pytest.raises(ValueError, match=r"auxiliary layers \[2\]"):
        check_layer_map([0, 1, 2], 3, 2)
