"""A pickle reader that accepts only plain containers (dict, list, tuple, set, str, numbers, None).

The REFER ``refs(*).p`` files are pickles; a pickle can name any importable callable and run it while
loading, so this unpickler refuses every global except the set types.
"""

from __future__ import annotations

import builtins
import io
import pickle

_ALLOWED = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
}


class PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only plain containers (dict, list, tuple, set, str, numbers) are allowed"
        )


def load_plain_pickle(path: str):
    """Load ``path`` with ``PlainDataUnpickler`` (Python 2 strings decoded as UTF-8)."""
    with open(path, "rb") as f:
        return PlainDataUnpickler(io.BytesIO(f.read()), encoding="utf-8").load()
