"""Training examples: imported and logged dialogues, the protected corpus, curation (redaction, filters), canaries."""
