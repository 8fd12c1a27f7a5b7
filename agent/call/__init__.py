"""One call: the conversation (a turn from words to a worded reply), the voice pipeline, playback, the call log."""
