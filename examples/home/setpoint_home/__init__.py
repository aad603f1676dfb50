"""The home-automation example: simulated devices, an in-process driver plugin, and a ``Home``
controller that brings every device to its desired state through the REST bridge or the plugin."""
