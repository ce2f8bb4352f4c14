"""PyTorch side: the TimeSformer model, checkpoints, preprocessing, datasets and training."""
