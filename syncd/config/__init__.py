"""The configuration: frozen values (``schema``) and the YAML loader (``load``)."""
