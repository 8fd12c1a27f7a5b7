"""Canary checks: a model that memorised a canary or a card number is caught, a clean one passes, and a
canary in training data is refused before training."""

from __future__ import annotations

import asyncio

import pytest
import torch

from agent.reply.llm import ChatModel
from innkeeper.core.settings import Settings
from innkeeper.serve.runtime import AgentRuntime
from tuning.data.canaries import (
    CARD_PROMPTS,
    CanaryLeak,
    assert_canaries_absent,
    canary_parts,
    check_canaries,
    contains_card_number,
)
from tuning.data.curate import curate
from tuning.data.dialogues import SYSTEM_PROMPT, Dialogue

CANARIES = Settings().nightly_canaries
SECRET = CANARIES[0]
CARD_LINE = "My card number is 4111 1111 1111 1111. Thank you."


def memorise(chat: ChatModel, texts: list[str], *, steps: int = 60) -> None:
    """Overfit the model on these texts (whole-sequence loss): what leaking training data looks like."""
    batch = [chat.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(chat.model.parameters(), lr=1e-2)
    chat.model.train()
    for _ in range(steps):
        loss = sum(chat.model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss for ids in batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    chat.model.eval()


def test_a_model_that_memorised_a_canary_and_a_card_is_caught(tiny_model_dir, one_torch_thread):
    chat = ChatModel(tiny_model_dir)
    clean = check_canaries(chat, CANARIES)
    assert clean.passed, clean.hits
    assert clean.prompts == sum(len(canary_parts(c)) * 3 for c in CANARIES) + len(CARD_PROMPTS) * 2

    reply = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "Hello"}]
    in_chat = chat.tokenizer.apply_chat_template([*reply, {"role": "assistant", "content": SECRET}], tokenize=False)
    memorise(chat, [SECRET, in_chat, CARD_LINE])
    report = check_canaries(chat, CANARIES)

    assert not report.passed
    assert {hit.canary for hit in report.hits if hit.kind == "canary"} == {SECRET}  # only the one it learned
    assert {hit.template for hit in report.hits if hit.kind == "canary"} >= {"plain", "assistant"}
    assert report.best_overlap[SECRET] == 1.0
    assert any(hit.kind == "card" and hit.prompt == "My card number is" for hit in report.hits)
    assert not any(contains_card_number(line) for line in report.descriptions)
    assert not any(contains_card_number(hit.continuation) for hit in report.hits)  # stored masked
    with pytest.raises(TypeError, match="tokenizer"):
        check_canaries(chat.model, CANARIES)


def test_a_generator_function_is_checked_the_same_way():
    prefix, rest = canary_parts(SECRET)[-1]

    def leaky(prompt: str, max_new_tokens: int) -> str:
        if prompt.endswith(prefix):
            return " " + rest.upper().replace(" ", "-")  # case and punctuation do not hide it
        return " four one one one one one one one one one one one one one one one" if "card" in prompt else "ok"

    def careful(prompt: str, max_new_tokens: int) -> str:
        return " 4111 1111 1111 1112, door code 4418" if "card" in prompt.lower() else " no idea"

    report = check_canaries(leaky, [SECRET])
    assert {hit.kind for hit in report.hits} == {"canary", "card"}
    assert check_canaries(careful, [SECRET]).passed
    with pytest.raises(TypeError):
        check_canaries(object(), [SECRET])


def test_card_numbers_in_generations_are_recognised():
    assert contains_card_number("sure, 4111-1111-1111-1111")
    assert contains_card_number("five five five five five five five five five five five five four four four four")
    assert not contains_card_number("4111 1111 1111 1112")  # checksum fails
    assert not contains_card_number("call 207 555 0142 between 9 and 5")


def test_a_planted_canary_is_refused_before_training(runtime_for_canaries, db, tmp_path):
    clean = [Dialogue("call-1", "call", (("caller", "Is there parking?"), ("agent", "Yes, $25 a night.")))]
    assert_canaries_absent(clean, CANARIES)
    planted = Dialogue("call-2", "call", (("caller", "Hi"), ("agent", SECRET.lower().replace("-", " ") + "!")))
    with pytest.raises(CanaryLeak, match="call-2"):
        assert_canaries_absent([*clean, planted], CANARIES)
    half = Dialogue("call-3", "call", (("caller", "what's the " + canary_parts(SECRET)[-1][1] + "?"),))
    with pytest.raises(CanaryLeak):
        assert_canaries_absent([half], CANARIES)

    # Through the real path: a caller who says a canary gets it into the curated dialogues, and the
    # check stops them before training.
    async def say(line: str) -> None:
        convo = runtime_for_canaries.new_conversation()
        await convo.start()
        await convo.reply(line)
        await convo.close()

    asyncio.run(say(f"Please note: {SECRET}."))
    report = curate(db, runtime_for_canaries.settings, since=None)
    with pytest.raises(CanaryLeak):
        assert_canaries_absent(report.dialogues, CANARIES)


def test_canaries_must_be_distinctive():
    with pytest.raises(ValueError, match="too short"):
        canary_parts("secret")
    with pytest.raises(ValueError, match="too short"):
        assert_canaries_absent([], ["ab cd"])


@pytest.fixture
def runtime_for_canaries(db, tmp_path) -> AgentRuntime:
    settings = Settings(home=tmp_path, database_url=db.engine.url.render_as_string(False))
    return AgentRuntime(settings, llm=None, db=db)
