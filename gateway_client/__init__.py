"""Client of the image gateway (munge auth, failover) and the shifterimg command."""
