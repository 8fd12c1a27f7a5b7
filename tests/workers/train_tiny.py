"""Train a tiny model with one method for a few steps and save the result: run once as one process and once
under `accelerate launch --num_processes 2`, the two results must agree (tests/test_distributed.py).

    python tests/workers/train_tiny.py MODEL_DIR METHOD OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from tuning import distributed
from tuning.methods import get_method, train
from tuning.methods.projected import ProjectedConfig, calibrate_bases, select_rows, weights_fingerprint

PROTECTED_IDS, DOMAIN_IDS = (3, 19), (300, 316)


def batches(seed: int, ids: tuple[int, int], n: int, rows: int = 4, length: int = 24) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        tokens = torch.randint(*ids, (rows, 6), generator=generator).repeat(1, length // 6)
        out.append({"input_ids": tokens, "attention_mask": torch.ones_like(tokens)})
    return out


def main(model_dir: str, method: str, out_dir: str) -> None:
    distributed.start()
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = ProjectedConfig(progress=False, steps=6, lr=3e-3, batch_size=2, grad_accum=2, eps=0.9, row_budget=0.5, seed=1)
    domain, protected = batches(1, DOMAIN_IDS, 4), batches(2, PROTECTED_IDS, 4)
    inputs: dict = {}
    if get_method(method).needs_bases:
        bases = distributed.from_main(lambda: calibrate_bases(model, protected, cfg, model_id="tiny", corpus="t"))
        masks = distributed.from_main(lambda: select_rows(model, bases, domain[:2], cfg))
        inputs |= {"bases": bases, "masks": masks}
    if get_method(method).needs_protected:
        inputs["protected_batches"] = protected
    result = train(method, model, domain, cfg, **inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Every rank says which weights it ended with; the main rank saves them and the losses.
    (out / f"rank{distributed.rank()}.sha256").write_text(weights_fingerprint(model, cfg.targets))
    if distributed.is_main():
        state = {name: p.detach().contiguous() for name, p in model.named_parameters()}
        save_file(state, out / "weights.safetensors")
        (out / "losses.txt").write_text("\n".join(f"{loss:.8f}" for loss in result.losses))
        backend = torch.distributed.get_backend() if distributed.active() else "none"
        (out / "world.txt").write_text(f"{distributed.world_size()} {backend}")
    distributed.barrier()


if __name__ == "__main__":
    main(*sys.argv[1:4])
