"""The call path: dialogue brain, hotel tools, language model and (later) the voice loop.

Data flow for one caller turn: text (typed, or from ASR) → `brain.Conversation.respond`
→ understanding (slots, intents) → policy → tools (hotel database) → reply plan → LLM wording
→ grounded reply chunks (→ TTS in the voice loop).
"""
