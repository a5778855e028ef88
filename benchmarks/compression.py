"""fp32 against its int8 and fp16 variants: held-out accuracy, CPU samples/s, model size.

Each model named (default: the shipped ``demo``, and ``avqa`` when present) is copied to
a scratch repository and compressed there exactly as ``fusionserve export --variants
int8,fp16`` does; every variant is then run side by side in one process on the same
held-out samples (batch 64, one ORT thread, as a served worker runs, best of three).
Writes ``benchmarks/results/compression.json``.

    python -m benchmarks.compression [--models demo,avqa] [--samples 2000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import table, write_json
from fusionserve.zoo.compress import compress

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,avqa")
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="fusionserve-compression-"))
    report: dict[str, list[dict]] = {}
    for name in args.models.split(","):
        if not (REPOSITORY / name).is_dir():
            print(f"skipping {name}: not in {REPOSITORY}")
            continue
        shutil.copytree(REPOSITORY / name, scratch / name)
        rows = compress(scratch, name, samples=args.samples)
        fp32 = rows[0]
        report[name] = [
            {
                "variant": r.variant,
                "accuracy": round(r.accuracy, 4),
                "accuracy_delta_points": round(100 * (r.accuracy - fp32.accuracy), 2),
                "samples_per_s": round(r.samples_per_s, 1),
                "speed_vs_fp32": round(r.samples_per_s / fp32.samples_per_s, 2),
                "megabytes": round(r.megabytes, 3),
                "size_vs_fp32": round(r.megabytes / fp32.megabytes, 2),
            }
            for r in rows
        ]
        print(f"\n{name} ({args.samples} held-out samples, batch 64, 1 thread)")
        print(table(report[name], list(report[name][0])))
    print(write_json("compression", {"samples": args.samples, "models": report}))
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
