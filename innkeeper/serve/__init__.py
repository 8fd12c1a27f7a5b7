"""`innkeeper serve`: the composition root (runtime), the FastAPI app, the call websockets wired to the
voice pipeline, and the model admin routes. Nothing in the product imports it except the CLI.
"""
