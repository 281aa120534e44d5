"""AOFP: binary-search masking with accumulated damage (see ../shared/specs/aofp_sfp.md, part A)."""
