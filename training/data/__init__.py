"""Data for training and evaluation: file and label lists, the seeded video datasets, and VideoMix."""
