"""Bridges between our models and Hugging Face transformers / torch layers, one module per model, each beside its
parity tests in tests/convert: the same weights in both, the same outputs."""
