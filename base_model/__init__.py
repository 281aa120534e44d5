"""Base models of the four pruning methods, built from a flat `deps` width list."""
from .layers import DepsError
from .registry import ARCHS, ArchSpec, build_model, default_deps, get_arch

__all__ = ["ARCHS", "ArchSpec", "DepsError", "build_model", "default_deps", "get_arch"]
