"""unipetl: search the unified design space of parameter-efficient transfer learning.

He, Zhou, Ma, Berg-Kirkpatrick and Neubig, "Towards a Unified View of Parameter-Efficient
Transfer Learning" (ICLR 2022, arXiv 2110.04366). `unipetl` is the only top-level name the
package installs; its parts are `unipetl.spaces` (variants, presets, accounting, realization),
`unipetl.evaluators` (tasks, training, metrics), `unipetl.search` (studies, workers, CLI) and
`unipetl.reports` (frontier, effects, rendering). In the repository the four parts are the
top-level folders of the same names (a setuptools package-dir mapping).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("unipetl")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
