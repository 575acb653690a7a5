"""syncd: keeps container images in step across OCI registries."""

__version__ = "0.1.0"
USER_AGENT = f"syncd/{__version__}"
