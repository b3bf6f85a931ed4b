"""The SPANK plugin: a C shim (shim.c) that loads the cffi-embedded Python module
(embed_build.py) only when a job uses shifter, and a dispatcher (dispatch.py) that
runs one module per SPANK context (allocator.py, local.py, remote.py, job_script.py)."""
