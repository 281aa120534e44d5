"""ResRep: compactors, gradient resetting, mask selection, conversion (see ../shared/specs/resrep.md)."""
