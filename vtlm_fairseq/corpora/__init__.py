"""Stage 1, offline: a captioned corpus and its images (Conceptual Captions TSVs, image downloads, split filtering)."""
