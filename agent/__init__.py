"""The call path, in the order a caller's turn crosses it.

`speech` (VAD, ASR, TTS engines) → `understanding` (what the words mean) → `dialogue` (state, policies,
hotel tools, the reply plan) → `reply` (the language model and grounded wording) → `call` (the conversation,
the voice pipeline, playback and the call log). Each subpackage imports only those before it (see
`.importlinter`); `agent` imports `telephony` and `innkeeper.core`, nothing above.
"""
