import numpy as np
import pytest
import torch
import torch.nn.functional as F


@pytest.fixture(scope="session")
def chelsea_224() -> torch.Tensor:
    """skimage's cat photo: resize the short side to 256, centre-crop 224, float [0, 1] (1, 3, 224, 224)."""
    import skimage.data

    img = skimage.data.chelsea()
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[-2:]
    s = 256 / min(h, w)
    x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", antialias=True, align_corners=False)
    h, w = x.shape[-2:]
    t, l = (h - 224) // 2, (w - 224) // 2
    return x[..., t : t + 224, l : l + 224].contiguous()


# ImageNet ids: 281 tabby, 282 tiger cat, 283 Persian, 285 Egyptian cat, 287 lynx
CAT_CLASSES = {281, 282, 283, 285, 287}
