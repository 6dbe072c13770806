"""Model loading, the tiny preset and SFT example building (torch + transformers, never Ray)."""
