"""`fusionserve export`: train a fusion model and write it into the model repository.

torch is imported inside run_export only, so the main CLI stays importable on serving hosts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_STRATEGY = "cross_attention"  # keep in step with fusionserve.zoo.train.DEMO_STRATEGY
STRATEGY_CHOICES = ("early", "late", "cross_attention", "gated_hybrid")  # = models.STRATEGIES


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the export subcommand (the main CLI mounts them on its own subparser)."""
    parser.add_argument(
        "--task",
        choices=("vqa", "embedding", "generate"),
        default="vqa",
        help="vqa: a fusion classifier; embedding: the CLIP-style dual encoder (text + image); "
        "generate: the encoder-decoder that writes answers and descriptions (text + image)",
    )
    parser.add_argument(
        "--pretrained",
        action="store_true",
        help="vqa: start the text and image encoders from contrastive pre-training",
    )
    parser.add_argument(
        "--pretrain-steps", type=int, default=1500, help="contrastive pre-training steps"
    )
    parser.add_argument("--strategy", choices=STRATEGY_CHOICES, default=DEFAULT_STRATEGY)
    parser.add_argument(
        "--modalities",
        default="text,image",
        help="two or three of text, image, audio, comma-separated (default text,image)",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="model name in the repository (default: the shipped model of the task: demo, "
        "clip with --task embedding, captioner with --task generate)",
    )
    parser.add_argument("--version", type=int, default=1, help="model version directory")
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default: the demo's)"
    )
    parser.add_argument("--seed", type=int, default=None, help="training seed")
    parser.add_argument(
        "--variants",
        default="",
        help="also write compressed variants: int8, fp16 (comma-separated), as <name>_<variant>",
    )
    parser.add_argument(
        "--skip-training",
        action="store_true",
        help="with --variants: compress the model already in the repository, train nothing",
    )
    parser.add_argument(
        "--min-accuracy",
        type=float,
        default=0.95,
        help="exit non-zero (and write nothing) below this held-out accuracy "
        "(generate: exact answers)",
    )
    parser.add_argument(
        "--min-describe",
        type=float,
        default=0.90,
        help="generate: exit non-zero (and write nothing) below this share of held-out "
        "descriptions naming exactly the picture's objects",
    )


DEFAULT_NAMES = {"vqa": "demo", "embedding": "clip", "generate": "captioner"}
"""Each task's shipped model: an export without --name replaces it, never another task's."""


def model_name(args: argparse.Namespace) -> str:
    """--name, or the task's default model name."""
    return args.name or DEFAULT_NAMES[args.task]


def run_export(args: argparse.Namespace) -> int:
    """Train, check accuracy, export with a parity check; returns the process exit code."""
    from fusionserve.zoo import train as training
    from fusionserve.zoo.export import ParityError, export_to_repository

    args.name = model_name(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - {"int8", "fp16"})
    if unknown:
        print(f"error: unknown variant(s) {unknown}; choose int8, fp16", file=sys.stderr)
        return 2
    if args.skip_training:
        if not variants:
            print("error: --skip-training needs --variants", file=sys.stderr)
            return 2
        return _compress(args.model_repository, args.name, variants)
    if args.task == "embedding":
        return _export_embedding(args)
    if args.task == "generate":
        return _export_generation(args, variants)
    started = time.perf_counter()
    modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    default_steps = training.AUDIO_STEPS if "audio" in modalities else training.DEMO_STEPS
    steps = args.steps if args.steps is not None else default_steps
    seed = args.seed if args.seed is not None else training.TRAIN_SEED
    print(
        f"training {args.strategy} over {'+'.join(modalities)} for {steps} steps (seed {seed})",
        flush=True,
    )
    start = None
    if args.pretrained:
        from fusionserve.zoo.pretrain import pretrain, transfer_model

        start = transfer_model(pretrain(args.pretrain_steps, seed), args.strategy, modalities)
    model, accuracy = training.train(args.strategy, steps, seed, modalities=modalities, model=start)
    trained = time.perf_counter() - started
    print(f"held-out accuracy {accuracy:.4f} after {trained:.0f}s of training")
    by_kind = training.accuracy_by_kind(model)
    print("by question kind: " + ", ".join(f"{k} {v:.4f}" for k, v in by_kind.items()))
    if accuracy < args.min_accuracy:
        print(f"error: accuracy below --min-accuracy {args.min_accuracy}", file=sys.stderr)
        return 1
    try:
        result = export_to_repository(
            model,
            args.model_repository,
            args.name,
            args.version,
            args.strategy,
            accuracy,
            extra={f"accuracy_{k}": round(v, 4) for k, v in by_kind.items()},
        )
    except ParityError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for batch, diff in result.parity.items():
        print(f"parity batch {batch}: max abs diff {diff:.2e}")
    print(f"wrote {result.model_path} ({result.parameters} parameters)")
    wall = time.perf_counter() - started
    print(f"model files {result.total_bytes / 1e6:.2f} MB; wall time {wall:.0f}s")
    return _compress(args.model_repository, args.name, variants) if variants else 0


def _export_embedding(args: argparse.Namespace) -> int:
    from fusionserve.zoo.pretrain import export_embedding_model, pretrain, retrieval_accuracy

    seed = args.seed if args.seed is not None else 0
    print(f"contrastive pre-training for {args.pretrain_steps} steps (seed {seed})", flush=True)
    model = pretrain(args.pretrain_steps, seed)
    print(f"caption retrieval (top-1 of 256 held-out pictures): {retrieval_accuracy(model):.3f}")
    path, worst = export_embedding_model(model, args.model_repository, args.name, args.version)
    print(f"parity: max abs diff {worst:.2e}; wrote {path}")
    return 0


def _export_generation(args: argparse.Namespace, variants: list[str]) -> int:
    from fusionserve.zoo import captioner

    modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    if variants or args.pretrained or modalities != ("text", "image"):
        print(
            "error: --task generate is text + image only, without --variants or --pretrained",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    steps = args.steps if args.steps is not None else captioner.CAPTIONER_STEPS
    seed = args.seed if args.seed is not None else captioner.TRAIN_SEED
    print(f"training the captioner for {steps} steps (seed {seed})", flush=True)
    model, figures = captioner.train_captioner(steps, seed, held_out=captioner.HELD_OUT_SAMPLES)
    trained = time.perf_counter() - started
    print(
        f"held-out after {trained:.0f}s of training: answers exact {figures['answer_exact']:.4f}, "
        f"descriptions naming the objects {figures['describe_objects']:.4f} "
        f"(exact {figures['describe_exact']:.4f})"
    )
    if figures["answer_exact"] < args.min_accuracy or figures["describe_objects"] < (
        args.min_describe
    ):
        print(
            f"error: below --min-accuracy {args.min_accuracy} or --min-describe "
            f"{args.min_describe}",
            file=sys.stderr,
        )
        return 1
    try:
        result = captioner.export_captioner(
            model,
            args.model_repository,
            args.name,
            args.version,
            figures,
            extra={"steps": steps, "seed": seed, "training_seconds": round(trained)},
        )
    except captioner.ParityError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    parity = result.parity
    print(
        f"parity on {captioner.PARITY_SAMPLES} held-out samples: max abs logit diff "
        f"{parity['max_logit_diff']:.2e}, {parity['token_mismatches']:.0f} token mismatches; "
        f"joined late: {parity['joined_max_logit_diff']:.2e}"
    )
    print(f"wrote {result.encoder_path} and {result.decoder_path} ({result.parameters} parameters)")
    wall = time.perf_counter() - started
    print(f"model files {result.total_bytes / 1e6:.2f} MB; wall time {wall:.0f}s")
    return 0


def _compress(repository: Path, name: str, variants: list[str]) -> int:
    from fusionserve.zoo.compress import compress

    if not (repository / name / "config.toml").is_file():
        print(f"error: no model {name!r} in {repository}", file=sys.stderr)
        return 1
    rows = compress(repository, name, variants)
    fp32 = rows[0]
    print(f"{'variant':8} {'accuracy':>9} {'samples/s':>10} {'speed':>6} {'MB':>6}")
    for row in rows:
        speed = row.samples_per_s / fp32.samples_per_s
        print(
            f"{row.variant:8} {row.accuracy:9.4f} {row.samples_per_s:10.0f} "
            f"{speed:5.2f}x {row.megabytes:6.2f}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fusionserve.zoo.cli", description="train and export a fusion model"
    )
    add_export_arguments(parser)
    return run_export(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
