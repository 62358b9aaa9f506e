"""Fixtures shared by the whole suite."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread: the models under test are tiny, and on a 2-core CI machine two torch
    threads fighting other processes are much slower than one."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



@pytest.fixture
def kill_at():
    """Factory of engine `step_end` hooks that raise KeyboardInterrupt at one global step, as a kill would."""

    def make(step):
        def hook(engine, global_step):
            if global_step == step:
                raise KeyboardInterrupt("simulated kill")

        return hook

    return make


@pytest.fixture
def same_last_weights():
    """Check that two run folders end with the same weights (last.safetensors, key by key); returns the keys."""

    def check(run_a, run_b, atol=1e-6):
        import torch
        from safetensors.torch import load_file

        wa, wb = (load_file(str(r / "checkpoints" / "last.safetensors")) for r in (run_a, run_b))
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.allclose(wa[k].float(), wb[k].float(), atol=atol), k
        return set(wa)

    return check

def _seg_folder(root, n, seed, shift=0.0):
    """A tiny segmentation set: a bright 7x7 square (class 1) on noise, one ignored pixel (255)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\nsquare\n")
    for i in range(n):
        img = rng.normal(0.3 + shift, 0.1, (16, 16))
        mask = np.zeros((16, 16), np.uint8)
        r, c = rng.integers(0, 9, 2)
        img[r : r + 7, c : c + 7] += 0.5
        mask[r : r + 7, c : c + 7] = 1
        mask[0, 0] = 255
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def seg_folder():
    """`seg_folder(root, n, seed, shift=0.0)` writes a tiny segmentation dataset and returns its root."""
    return _seg_folder
