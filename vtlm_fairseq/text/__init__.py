"""Stage 3, offline, and at inference: raw parallel text to a fairseq data-bin (reading, Moses tokenisation, BPE, fairseq-preprocess)."""
