import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
from shiftkit.train import fit
r = fit(sys.argv[1], sys.argv[2], method="dann", epochs=1, batch_size=4, size=16, out=sys.argv[3], progress=False,
        device="cpu", bottleneck=8)
rank = __import__("os").environ["RANK"]
# one file per rank: two processes printing to one pipe can interleave their lines
open(f"{sys.argv[4]}/result_{rank}.json", "w").write(json.dumps({"rank": rank, "im": r["history"][-1]["select_im"]}))
"""


@pytest.mark.slow
def test_two_process_gloo_smoke(tiny, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    torchrun = Path(sys.executable).parent / "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(script), str(tiny["source"]),
                           str(tiny["target"]), str(tmp_path / "run"), str(tmp_path)], capture_output=True, text=True,
                          timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    rows = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("result_*.json"))]
    assert sorted(r["rank"] for r in rows) == ["0", "1"]
    assert rows[0]["im"] == pytest.approx(rows[1]["im"], rel=1e-6)  # same weights and statistics on both ranks
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["resolved"]["world_size"] == 2
    assert (tmp_path / "run" / "checkpoints" / "best.safetensors").is_file()
