"""Sources of the generated Triton model repository: thin model.py files, the server launcher."""
