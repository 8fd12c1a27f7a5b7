"""Teach the model to read caller turns: train on the annotated turns (SGD train, MultiWOZ hotel dialogues that
are not the measured hotel-only ones; tuning/data/actions.py), export the
tuned model, and print its loss before and after; then measure it turn by turn with

    .venv/bin/innkeeper eval understanding <dev file> --today 2019-03-01 --model <exported dir> --limit N

    .venv/bin/python benchmarks/understanding_model.py --method full --steps 60 --out /tmp/reader

`--method projected` needs the protected corpus and calibration (minutes more; cached under
INNKEEPER_HOME/tuning). Writes <out>/model (a plain HF directory) and <out>/metrics.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from transformers import AutoTokenizer

from innkeeper.core.settings import Settings
from innkeeper.models.artifacts import export_hf
from innkeeper.models.resolve import start_model_dir
from tuning.data.actions import annotated_readings, encode_action_examples
from tuning.methods import get_method
from tuning.pipeline import tune, tune_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="full")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists")
    settings = Settings()
    base_dir = start_model_dir(settings)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    examples = annotated_readings(settings.shared_data)
    random.Random(0).shuffle(examples)
    held_out = len(examples) // 20
    encoded = encode_action_examples(examples, tokenizer)
    train, dev = encoded[held_out:], encoded[:held_out]
    print(f"{len(train)} training / {len(dev)} held-out annotated turn readings", file=sys.stderr)
    cfg = tune_config(settings, steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    method = get_method(args.method)
    protected = None if method.needs_bases or method.needs_protected else ([], {})  # None: build the corpus
    outcome = tune(
        settings,
        method=args.method,
        cfg=cfg,
        base_dir=base_dir,
        train_examples=train,
        eval_examples=dev,
        out_dir=args.out / "run",
        lineage={"readings": "SGD train + MultiWOZ hotel (not hotel-only)", "examples": len(train)},
        protected=protected,
    )
    export_hf(base_dir, outcome.artifact, args.out / "model")
    (args.out / "metrics.json").write_text(json.dumps(outcome.metrics, indent=2))
    print(json.dumps(outcome.metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
