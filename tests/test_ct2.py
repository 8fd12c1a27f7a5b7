"""The CTranslate2 serving engine against torch on a tiny model: the export decodes as torch does, the cached
prefix changes nothing, constrained decoding gives torch's constrained output, and streams stop when closed."""

from __future__ import annotations

import asyncio
import json

import pytest

from agent.reply.ct2 import Ct2ChatModel, export
from agent.reply.llm import ChatModel, build_tiny_chat_model
from agent.reply.understand import ModelReader, reading_messages
from agent.understanding.action import TurnAction

PROMPTS = [
    [{"role": "user", "content": "Do you have a room tonight?"}],
    [
        {"role": "system", "content": "You are a hotel receptionist."},
        {"role": "user", "content": "Is breakfast included?"},
        {"role": "assistant", "content": "Breakfast is served from six thirty."},
        {"role": "user", "content": "And parking?"},
    ],
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct2")
    hf_dir = build_tiny_chat_model(root / "hf")
    torch_model = ChatModel(hf_dir)
    served = Ct2ChatModel(export(hf_dir, root / "ct2", quantization="float32"), hf_dir, compute_type="float32")
    return torch_model, served


@pytest.mark.parametrize("messages", PROMPTS)
def test_the_export_decodes_greedily_as_torch_does(tiny, messages):
    torch_model, served = tiny
    expected = torch_model.complete(messages, max_new_tokens=24)
    assert served.complete(messages, max_new_tokens=24) == expected
    # twice: the second call starts from the cached prefix of the first
    assert served.complete(messages, max_new_tokens=24) == expected
    assert "".join(served.stream(messages, max_new_tokens=24)) == expected
    assert served.version == torch_model.version


def test_constrained_decoding_matches_torch_and_always_parses(tiny):
    torch_model, served = tiny
    for caller in ["Two nights from Friday, please.", "Is there parking?", "bye"]:
        messages = reading_messages("How can I help?", caller)
        torch_text = ModelReader(torch_model, max_new_tokens=64).chat.complete(
            messages, max_new_tokens=64, allowed_tokens=ModelReader(torch_model)._filter()
        )
        served_text = served.complete(messages, max_new_tokens=64, allowed_tokens=ModelReader(served)._filter())
        assert served_text == torch_text
    # a random model's every word is a repair here, yet what comes out is a valid action (or a cut-off prefix)
    reading = ModelReader(served, max_new_tokens=200).read("How can I help?", "A room for two, please.")
    assert reading is None or isinstance(reading, TurnAction)


def test_stop_strings_cut_the_stream(tiny):
    _, served = tiny
    full = served.complete(PROMPTS[0], max_new_tokens=24)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop and "".join(served.stream(PROMPTS[0], max_new_tokens=24, stop=[stop])) == full.split(stop)[0]


def test_astream_yields_the_reply_and_closing_it_frees_the_model(tiny):
    _, served = tiny

    async def run() -> tuple[str, bool]:
        pieces = [piece async for piece in served.astream(PROMPTS[0], max_new_tokens=24)]
        stream = served.astream(PROMPTS[0], max_new_tokens=200)
        await anext(stream)
        await stream.aclose()
        return "".join(pieces), served.generating

    text, generating = asyncio.run(run())
    assert text == served.complete(PROMPTS[0], max_new_tokens=24)
    assert not generating


def test_export_replaces_a_previous_export_whole(tiny, tmp_path):
    torch_model, _ = tiny
    out = export(torch_model.path, tmp_path / "ct2", quantization="int8")
    again = export(torch_model.path, out, quantization="int8")
    assert again == out and (out / "model.bin").is_file() and not (tmp_path / "ct2.partial").exists()
    assert json.loads((out / "config.json").read_text())  # CTranslate2's own config, readable


def test_a_reading_over_its_budget_is_abandoned_on_either_engine(tiny):
    for model in tiny:
        assert ModelReader(model, max_new_tokens=200, budget_s=0.0).read("How can I help?", "A room, please.") is None
        cut = model.complete(PROMPTS[0], max_new_tokens=24, max_time=0.0)
        assert len(cut) < len(model.complete(PROMPTS[0], max_new_tokens=24))
