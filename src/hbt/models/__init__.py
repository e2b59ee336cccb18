"""Encoders: one wrapper for any Hugging Face text encoder, plus the tiny offline default."""
