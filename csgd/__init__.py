"""Centripetal SGD: filter clustering, the centripetal update, merging (see ../shared/specs/csgd.md)."""
