"""SFP: soft filter zeroing every epoch (He et al., IJCAI 2018; see the README)."""
