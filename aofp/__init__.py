"""AOFP: binary-search masking with accumulated damage (Ding et al., ICML 2019; see the README)."""
