"""Scripts the tests start as separate processes (e.g. under `accelerate launch`); not collected as tests."""
