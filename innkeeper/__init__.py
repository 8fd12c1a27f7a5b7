"""Innkeeper, the application: layers from `core` (settings, hotel, database, provisioned models) through
`models` (versions, registry, serving slot) and `serve` (the server) to `cli`; `simulation` holds the
harnesses the tests, benchmarks and demo use. The call path is `agent/`, audio transport `telephony/`,
nightly learning `tuning/`; `.importlinter` is the map of who may import whom.
"""

__version__ = "0.1.0"
