"""One call: the conversation (words to a worded reply), the voice pipeline, playback, the recording, the call log."""
