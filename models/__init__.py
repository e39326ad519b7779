"""NF models: the API (models.api) and the bundled NFs, by name."""
from .api import NF
from .nat import Nat

NFS: dict[str, type[NF]] = {cls.name: cls for cls in (Nat,)}


def lookup(name: str) -> type[NF]:
    """The bundled NF called `name`; KeyError lists the valid names."""
    try:
        return NFS[name]
    except KeyError:
        raise KeyError(f"unknown NF {name!r}; valid: {', '.join(sorted(NFS))}") from None
