#!/bin/bash
#SBATCH -N 1
#SBATCH --image=docker:test/debian:latest
# An import-heavy Python start-up, timed inside the prepared container.
srun -N 1 shifter python3 -c '
import time; t0 = time.perf_counter()
import json, email.parser, http.client, xml.dom.minidom, asyncio
print(f"imports took {(time.perf_counter() - t0) * 1000:.0f} ms")'
