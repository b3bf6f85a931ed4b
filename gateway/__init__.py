"""The image gateway: pulls images from Docker registries, flattens them to squashfs, keeps a catalog, serves Shifter's imagegw REST API."""
