"""ReaSeq, open: LLM world knowledge in a real-time sequential ranker."""

__version__ = "0.1.0"
