"""Argument helpers so every command spells the shared options the same way (CONVENTIONS.md)."""

from __future__ import annotations

import argparse

TASKS = ("classification", "segmentation", "detection", "unlabeled")


def add_seed(p: argparse.ArgumentParser, default: int = 0) -> None:
    p.add_argument("--seed", type=int, default=default, help=f"random seed (default {default})")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a machine-readable JSON result on stdout")


def add_task(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=TASKS, default=None, help="dataset task; inferred from the folder when omitted")


def add_workers(p: argparse.ArgumentParser, default: int = 0) -> None:
    p.add_argument("--workers", type=int, default=default, help="worker processes for decoding/encoding (0 = in process)")


def epilog(*examples: str) -> str:
    return "examples:\n" + "\n".join(f"  {e}" for e in examples)


def add_on_bad(p, default: str = "skip") -> None:
    p.add_argument("--on-bad", choices=["skip", "fail"], default=default,
                   help=f"unreadable images: skip them and report each by path, or stop with the file named (default {default})")


def add_no_progress(p) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_speed(p) -> None:
    """Mixed precision and memory format of training (train, adapt, translator train)."""
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="mixed precision: auto = float16 on CUDA; on = also bfloat16 on CPU "
                        "(about 3x faster steps on AMX/AVX-512-BF16 processors); off = float32")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (often faster with --amp)")


def add_inference(p) -> None:
    """Options of the commands that run a trained model over a folder (evaluate, predict)."""
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    add_on_bad(p)
    add_no_progress(p)
    add_device(p)
    add_workers(p)
    add_json(p)
