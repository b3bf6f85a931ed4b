"""The launcher: the ``shifter`` command, its compiled fast path and plan replay (C, beside it), and private containers."""
