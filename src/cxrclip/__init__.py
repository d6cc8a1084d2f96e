"""cxrclip: align chest X-rays with radiology reports using CLIP (IU X-ray / NLM Open-i)."""

__version__ = "0.1.0"
