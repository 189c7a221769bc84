"""Probes of pre-trained and fine-tuned models."""
