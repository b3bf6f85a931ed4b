"""shifter: HPC environment containers built around the Slurm job lifecycle.

The package root.  Each top-level folder F/ of the source tree installs as ``shifter.F``
(``runtime/config.py`` is ``shifter.runtime.config``); this folder, ``shifter/``, holds the
root's own modules (``shifter/errors.py`` is ``shifter.errors``).
"""

import os as _os

__version__ = "0.1.0"

# Imported from a checkout rather than from site-packages (a `python -c` started in the
# checkout, say), the sibling folders are this package's subpackages, as once installed.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "pyproject.toml")) and \
        _os.path.isfile(_os.path.join(_checkout, "runtime", "__init__.py")):
    __path__.append(_checkout)  # noqa: F821 (a package's __path__)
del _checkout
