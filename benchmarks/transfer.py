"""Does contrastive pre-training pay? Held-out accuracy with 1 %, 10 % and 100 % of the
labels, fine-tuned from CLIP-style pre-trained encoders and from scratch, side by side.

1. Pre-train the dual encoder (text + image towers, InfoNCE) on caption batches: no
   question labels. Report caption-retrieval accuracy on held-out pictures.
2. A labelled pool of ``--pool`` question samples; budgets of 1 %, 10 %, 100 % of it.
3. For each budget: fine-tune a cross-attention fusion model for ``--steps`` steps
   from the pre-trained encoders, and the same model from random weights, on exactly
   the same labelled samples and batches. Held-out accuracy on 1,000 samples.

Writes ``benchmarks/results/transfer.json``.

    python -m benchmarks.transfer [--pretrain-steps 1500] [--steps 800] [--pool 10000]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from benchmarks.common import table, write_json
from fusionserve.zoo.data import HELD_OUT_SEED, generate
from fusionserve.zoo.pretrain import pretrain, retrieval_accuracy, transfer_model
from fusionserve.zoo.train import evaluate, train

BUDGETS = (0.01, 0.1, 1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=800, help="fine-tuning steps per run")
    parser.add_argument("--pool", type=int, default=10_000, help="labelled samples at 100 %%")
    args = parser.parse_args()

    started = time.perf_counter()
    encoders = pretrain(args.pretrain_steps, log_every=500)
    pretrain_s = time.perf_counter() - started
    retrieval = retrieval_accuracy(encoders)
    print(f"pre-trained in {pretrain_s:.0f}s; caption retrieval top-1 of 256: {retrieval:.3f}")

    pool = generate(args.pool, [1, 2, 3])  # labelled stream, disjoint from pre-training's
    held_out = generate(1000, HELD_OUT_SEED)
    rows = []
    for budget in BUDGETS:
        labelled = pool[: max(1, round(budget * args.pool))]
        row: dict[str, object] = {"labels": f"{budget:.0%}", "samples": len(labelled)}
        for name, start in (("pretrained", encoders), ("scratch", None)):
            torch.manual_seed(0)  # the same head (and, from scratch, encoder) initialisation
            model = transfer_model(copy.deepcopy(start) if start is not None else None)
            t0 = time.perf_counter()
            model, _ = train(
                model=model, steps=args.steps, train_samples=labelled, held_out=0, log=None
            )
            row[f"{name}_accuracy"] = round(evaluate(model, held_out), 4)
            row[f"{name}_s"] = round(time.perf_counter() - t0, 1)
        row["gain_points"] = round(
            100 * (float(row["pretrained_accuracy"]) - float(row["scratch_accuracy"])), 1
        )
        rows.append(row)
        print(table([row], list(row)), flush=True)
    print()
    print(table(rows, list(rows[0])))
    report = {
        "pretrain_steps": args.pretrain_steps,
        "pretrain_s": round(pretrain_s, 1),
        "caption_retrieval_top1_of_256": round(retrieval, 4),
        "finetune_steps": args.steps,
        "pool": args.pool,
        "results": rows,
    }
    print(write_json("transfer", report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
