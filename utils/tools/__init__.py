"""Tools around the core: the hdf5 store, latency, ONNX export, the comparison's entries, table and plot.
Import the core, never the training layer."""
