#!/usr/bin/shifter /bin/bash
#SBATCH -N 1
#SBATCH --image=docker:test/debian:latest
# The whole batch script runs inside the image (bash from the image).
echo "$(grep ^PRETTY_NAME= /etc/os-release) bash ${BASH_VERSINFO[0]}"
