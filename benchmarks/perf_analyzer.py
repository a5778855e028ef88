"""Triton's perf_analyzer against fusionserve over HTTP, with its default binary tensors.

Serves the demo model (embedded Valkey, API, one worker), feeds perf_analyzer real
samples from the synthetic data set (random token ids would fall outside the
vocabulary), runs concurrency 1, 2, 4, 8 and 16, and saves the CSV it writes.

Needs perf_analyzer, which ships inside the ``tritonclient==2.51.0`` wheel (the PyPI
package ``perf-analyzer`` is an empty placeholder), Debian's ``libb64-0d``, and
``libcudart.so.12`` from the PyPI package ``nvidia-cuda-runtime-cu12``:

    pip install 'tritonclient[http]==2.51.0' nvidia-cuda-runtime-cu12
    apt-get install libb64-0d
    python -m benchmarks.perf_analyzer [--concurrency 1,2,4,8,16] [--window-ms 3000]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from benchmarks.common import RESULTS, served, table
from fusionserve.zoo import data
from fusionserve.zoo.tokenizer import encode_batch

ROOT = Path(__file__).resolve().parent.parent
MODEL = "demo"


def find_perf_analyzer() -> str:
    found = shutil.which("perf_analyzer") or str(Path(sys.executable).parent / "perf_analyzer")
    if not Path(found).is_file():
        raise SystemExit("perf_analyzer not found: pip install 'tritonclient[http]==2.51.0'")
    return found


def cuda_runtime_env() -> dict[str, str]:
    """perf_analyzer links libcudart even for HTTP: point it at the pip package's copy."""
    try:
        import nvidia.cuda_runtime  # type: ignore[import-not-found]
    except ImportError:
        return {}
    lib = Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib"
    return {"LD_LIBRARY_PATH": f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}"}


def input_data(path: Path, n: int = 32) -> Path:
    samples = data.generate(n, data.HELD_OUT_SEED)
    tokenizer = Tokenizer.from_file(str(ROOT / "model_repository" / MODEL / "tokenizer.json"))
    rows = []
    for s in samples:
        ids, mask = encode_batch(tokenizer, [s.question])
        image = np.round(data.normalize(s.image), 5)
        rows.append(
            {
                "input_ids": {"content": ids[0].tolist(), "shape": [ids.shape[1]]},
                "attention_mask": {"content": mask[0].tolist(), "shape": [ids.shape[1]]},
                "image": {"content": image.ravel().tolist(), "shape": list(image.shape)},
            }
        )
    path.write_text(json.dumps({"data": rows}))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--window-ms", type=int, default=3000)
    args = parser.parse_args()
    binary = find_perf_analyzer()
    env = {**os.environ, **cuda_runtime_env()}
    header, rows = None, []
    with tempfile.TemporaryDirectory() as tmp, served(ROOT / "model_repository", MODEL) as stack:
        inputs = input_data(Path(tmp) / "input.json")
        host = stack.url.removeprefix("http://")
        # perf_analyzer 2.51 takes no multiplicative step (1:16:x2): one run per level
        for level in args.concurrency.split(","):
            out = Path(tmp) / f"c{level}.csv"
            cmd = [binary, "-m", MODEL, "-u", host, "-i", "http"]
            cmd += ["--concurrency-range", f"{level}:{level}:1", "--input-data", str(inputs)]
            cmd += ["--measurement-interval", str(args.window_ms), "-f", str(out)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            print(done.stdout[-1500:])
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return done.returncode
            reader = csv.reader(io.StringIO(out.read_text()))
            header = next(reader)
            rows += list(reader)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "perf_analyzer.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    columns = ["Concurrency", "Inferences/Second", "p50 latency", "p99 latency", "Server Queue"]
    picked = [dict(zip(header, r, strict=True)) for r in rows]
    print(table([{c: p[c] for c in columns} for p in picked], columns))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
