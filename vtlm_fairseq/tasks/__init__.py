"""Registered with fairseq on import of vtlm_fairseq."""
