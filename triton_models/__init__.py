"""Sources of the generated Triton model repository: config templates, thin model.py files, the server launcher."""
