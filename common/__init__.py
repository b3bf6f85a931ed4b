"""shifter: HPC environment containers built around the Slurm job lifecycle.

The source tree keeps its top-level layout (spank/, wlm/, runtime/, ...); setuptools maps
each directory into this one import namespace (``shifter.spank``, ``shifter.runtime``, ...).
"""

__version__ = "0.1.0"
