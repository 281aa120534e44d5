"""SFP: soft filter zeroing every epoch (see ../shared/specs/aofp_sfp.md, part B)."""
