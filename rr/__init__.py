"""ResRep: compactors, gradient resetting, mask selection, conversion (Ding et al., ICCV 2021; see the README)."""
