"""What a site admin prepares on a host: ``shifter-admin`` and site modules from the host's MPI and GPU libraries."""
