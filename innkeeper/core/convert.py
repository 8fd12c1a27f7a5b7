"""GGUF → safetensors: the bundled SmolLM2 ships as a quantised GGUF file; it is dequantised once, at
provisioning, into a plain float32 Hugging Face directory that loads without `gguf_file`, and that directory
is checked against the GGUF model (same tokenizer and chat template, same logits) before it is kept.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from innkeeper.core.wheels import TMP_PREFIX, ProvisionError, copy_members, say

# GGUF dequantisation is deterministic, so the saved model must reproduce the GGUF model's logits exactly;
# the tolerance only absorbs float summation-order noise.
_ROUND_TRIP_ATOL = 1e-4


def convert_gguf(wheel_path: Path, member: str, out_dir: Path, progress: bool) -> None:
    """Dequantise the GGUF once into a plain float32 HF directory that loads without `gguf_file`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f"{TMP_PREFIX}gguf-") as scratch:
        gguf = Path(scratch) / Path(member).name
        copy_members([(wheel_path, member)], gguf, progress)
        say(progress, f"converting {gguf.name} to a float32 safetensors directory")
        tokenizer = AutoTokenizer.from_pretrained(scratch, gguf_file=gguf.name)
        # float32, not bf16: on a short chat prompt bf16 moved logits by up to 1.25 and changed 3% of the
        # greedy next-token choices, and bf16 generation was not faster on the 2-core dev CPU.
        model = AutoModelForCausalLM.from_pretrained(scratch, gguf_file=gguf.name, dtype=torch.float32)
        _drop_quantization_marker(model)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        say(progress, "checking the converted directory against the GGUF model")
        diff = _check_round_trip(model, tokenizer, out_dir)
        say(progress, f"round trip ok: max |logit difference| vs the GGUF model = {diff:.2g}")


def _drop_quantization_marker(model: Any) -> None:
    """The weights are already dequantised; without the GGUF marker the saved dir is a plain float model."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # Removes `config.quantization_config`, `hf_quantizer` and the model's `is_quantized` flag.
        quantizer.remove_quantization_config(model)
    if hasattr(model.config, "_is_quantized"):
        del model.config._is_quantized


def _check_round_trip(reference: Any, reference_tokenizer: Any, out_dir: Path) -> float:
    """Reload `out_dir` without `gguf_file` and compare it with the GGUF model; returns the max logit diff."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    problems = []
    if hasattr(model.config, "quantization_config") or getattr(model, "hf_quantizer", None) is not None:
        problems.append("still marked as quantised")
    embeddings = model.get_input_embeddings().weight
    if not model.config.tie_word_embeddings or model.get_output_embeddings().weight is not embeddings:
        problems.append("word embeddings are no longer tied")
    if not tokenizer.chat_template or tokenizer.chat_template != reference_tokenizer.chat_template:
        problems.append("chat template lost")
    messages = [{"role": "user", "content": "Do you have a room for two nights?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ref_ids = reference_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    diff = float("inf")
    if not torch.equal(ids["input_ids"], ref_ids["input_ids"]):
        problems.append("tokenizer encodes differently")
    else:
        with torch.inference_mode():
            diff = (model(**ids).logits - reference.eval()(**ref_ids).logits).abs().max().item()
        if diff > _ROUND_TRIP_ATOL:
            problems.append(f"logits differ from the GGUF model by {diff:.3g}")
    if problems:
        raise ProvisionError(f"converted model in {out_dir} is wrong: {', '.join(problems)}")
    return diff
