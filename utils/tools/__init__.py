"""Tools around the core: the hdf5 store, latency (and the per-layer latency table), ONNX export, the
comparison's entries, table and plot. Import the core, never the training layer."""
