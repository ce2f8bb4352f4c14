"""The model and its weights: the TimeSformer (``model``), the native checkpoint, the readers of published
formats (``formats``), one way to load any weights (``weights``) and view averaging (``views``)."""
