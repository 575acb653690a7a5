"""OCI image layouts (``oci:`` directories, ``oci-archive:`` tars) as sources and targets.

``LayoutClient`` offers the methods of ``RegistryClient`` that the copy engine, blob mover
and referrers call, so a layout takes part in rules exactly like a registry.
"""

from syncd.layout.client import LayoutClient

__all__ = ["LayoutClient"]
