"""Innkeeper core: settings, database, bundled-model provisioning and the command line.

The call path lives in `agent/` (dialogue brain, tools, voice loop), audio transport in
`telephony/`, and nightly learning in `tuning/`; this package holds what they share.
"""

__version__ = "0.1.0"
