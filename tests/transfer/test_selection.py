import pytest
import torch

from shiftkit.transfer.selection import pair_nearest, pair_random, stable_hash, style_features, subset_indices


def test_stable_hash_is_fixed():
    # a fixed value: the pairing of a file must not change between runs, machines or Python versions
    assert stable_hash(0, "a.png") == stable_hash(0, "a.png") != stable_hash(1, "a.png")
    assert stable_hash(3, "cls/x.png") == int.from_bytes(__import__("hashlib").blake2b(b"3\0cls/x.png", digest_size=8).digest(), "little")


def test_pair_random_depends_only_on_seed_and_key():
    keys = [f"c/{i}.png" for i in range(50)]
    a = pair_random(keys, 7, seed=1)
    b = pair_random(list(reversed(keys)), 7, seed=1)
    assert a == list(reversed(b)) and all(0 <= j < 7 for j in a) and len(set(a)) > 3
    assert a != pair_random(keys, 7, seed=2)
    with pytest.raises(ValueError, match="empty"):
        pair_random(keys, 0, 0)


def test_subset_indices():
    assert subset_indices(5, 0, 0) == [0, 1, 2, 3, 4]
    s = subset_indices(100, 10, 3)
    assert len(s) == 10 and s == sorted(s) and s == subset_indices(100, 10, 3) and s != subset_indices(100, 10, 4)


def test_style_features_shape_and_values():
    x = torch.zeros(2, 3, 4, 4)
    x[1] = 1.0
    f = style_features(x)
    assert f.shape == (2, 24)
    assert f[0, 0] == 0 and f[1, 0] == pytest.approx(1.0)  # luminance mean
    assert f[0, 2] == 1 and f[1, 2 + 15] == 1  # all mass in the first / last brightness bin
    assert style_features(torch.zeros(1, 1, 4, 4)).shape == (1, 24)  # gray works too


def test_pair_nearest_picks_closest_style():
    tg = torch.stack([torch.full((3, 8, 8), v) for v in (0.1, 0.5, 0.9)])
    src = torch.stack([torch.full((1, 8, 8), v) for v in (0.85, 0.12, 0.55)])
    ft = style_features(tg)
    assert pair_nearest(style_features(src), ft) == [2, 0, 1]
    keys = ["a", "b", "c"]
    two = pair_nearest(style_features(src), ft, keys, seed=0, k=2)
    assert two == pair_nearest(style_features(src), ft, keys, seed=0, k=2)
    assert all(j in ({2, 1}, {0, 1}, {1, 0, 2})[i] for i, j in enumerate(two))
    with pytest.raises(ValueError, match="k must be"):
        pair_nearest(style_features(src), ft, k=0)
    with pytest.raises(ValueError, match="feature sizes"):
        pair_nearest(torch.zeros(2, 5), ft)
