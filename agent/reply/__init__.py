"""What the agent says: the language model's generate/stream core and the grounded wording of a reply plan."""
