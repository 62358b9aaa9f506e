import pytest
import torch

from shiftkit.adapt.views import strong_view, weak_view


@pytest.mark.parametrize("c", [1, 3])
def test_views_keep_shape_and_range(c):
    torch.manual_seed(0)
    x = torch.rand(4, c, 16, 16)
    w, s = weak_view(x), strong_view(x)
    assert w.shape == s.shape == x.shape
    assert float(s.min()) >= 0 and float(s.max()) <= 1
    assert not torch.equal(s, x) and not torch.equal(w, x)


def test_views_are_reproducible_from_the_global_seed():
    x = torch.rand(2, 3, 16, 16)
    torch.manual_seed(3)
    a = strong_view(x)
    torch.manual_seed(3)
    assert torch.equal(a, strong_view(x))


def test_feature_views_and_bad_input():
    f = torch.ones(8, 10)
    assert torch.equal(weak_view(f), f)
    s = strong_view(f)
    assert s.shape == f.shape and bool((s == 0).any())  # dropout zeroes some features
    with pytest.raises(ValueError):
        weak_view(torch.zeros(3, 4, 5))
    with pytest.raises(ValueError):
        strong_view(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
