"""`TURN_STAGES` stays true to the code: every stage names a `VoiceCall` method, defined in stage order."""

from agent.call.voice import BARGE_IN, TURN_STAGES, VoiceCall


def test_every_stage_names_a_method_of_the_voice_call():
    named = [stage.method for stage in (*TURN_STAGES, BARGE_IN)]
    assert [m for m in named if not callable(vars(VoiceCall).get(m))] == []


def test_the_stage_methods_are_defined_in_stage_order():
    defined = list(vars(VoiceCall))
    positions = [defined.index(stage.method) for stage in TURN_STAGES]
    assert positions == sorted(positions)
    assert [stage.name for stage in TURN_STAGES][:4] == ["hear", "endpoint", "transcribe", "respond"]
