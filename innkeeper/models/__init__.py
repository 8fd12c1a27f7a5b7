"""Model versions: the artifact format (a delta on a base), the registry, which model serves, and the serving slot.

Above `agent` (it loads `agent.reply.llm` models), below `serve` and `tuning` (which register and swap them).
"""
