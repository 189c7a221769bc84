"""What fairseq reads at training and decoding time: the region-feature store, the (V)TLM and translation datasets, masking and batching."""
