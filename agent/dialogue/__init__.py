"""What the agent decides: the dialogue state and its stages, the policies, the hotel tools, the reply plan."""
