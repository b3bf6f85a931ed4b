"""The container runtime (udiRoot): configuration, image and volume grammar, UDI build."""
