"""What the agent decides: the dialogue state, its routing and booking flows, the policies, the hotel tools."""
