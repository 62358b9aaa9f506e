import math

import pytest
import torch

from shiftkit.train.schedule import dann_annealing, warmup_cosine
from shiftkit.train.selection import Selector, im_score, snd_score


def test_im_score_hand():
    confident_diverse = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert im_score(confident_diverse) == pytest.approx(math.log(2))
    collapsed = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert im_score(collapsed) == pytest.approx(0.0, abs=1e-9)
    uniform = torch.full((4, 2), 0.5)
    assert im_score(uniform) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        im_score(torch.zeros(3))


def test_snd_prefers_clustered_features():
    g = torch.Generator().manual_seed(0)
    clustered = torch.cat([torch.randn(20, 8, generator=g) * 0.01 + 5 * torch.eye(8)[0],
                           torch.randn(20, 8, generator=g) * 0.01 + 5 * torch.eye(8)[1]])
    spread = torch.randn(40, 8, generator=g)
    assert snd_score(clustered) > snd_score(spread)
    with pytest.raises(ValueError):
        snd_score(torch.zeros(1, 3))


def test_selector_modes():
    s = Selector("label-free")
    assert s.update(0, {"select_im": 0.1}) and not s.update(1, {"select_im": 0.1}) and s.update(2, {"select_im": 0.2})
    assert s.best_epoch == 2
    last = Selector("last")
    assert last.update(0, {}) and last.update(1, {}) and last.best_epoch == 1
    with pytest.raises(ValueError):
        Selector("oracle")
    with pytest.raises(ValueError):
        Selector("target-test").update(0, {"select_im": 1.0})


def test_warmup_cosine_values():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, min_ratio=0.1) == pytest.approx(0.1)
    assert dann_annealing(50, 100) == pytest.approx((1 + 10 * 0.5) ** -0.75)
    with pytest.raises(ValueError):
        warmup_cosine(0, 0)
