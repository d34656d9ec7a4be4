"""This machine's matmul peak in fp32 and bf16: the physical ceiling for training throughput.

    python bench/matmul.py [--sizes 512 1024 2048] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch

from common import matmul_tflops, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    rows = [{"dtype": str(dtype).removeprefix("torch."), "n": n, "TFLOP/s": matmul_tflops(n, dtype, args.device)}
            for dtype in (torch.float32, torch.bfloat16) for n in args.sizes]
    report("matmul", rows)


if __name__ == "__main__":
    main()
