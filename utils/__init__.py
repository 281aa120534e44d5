"""The shared machinery, in three layers, each importing only those above it in this list:

pruning/   the pruning core, on any nn.Module: channel graph, surgery (keep / merge / fold), zeroing,
           FLOPs, the conversion proof and the one convert-and-prove step
tools/     the hdf5 store, latency, ONNX export, the comparison's entries, table and plot
training/  data, processes, the engine with hooks, checkpoints, run log, command-line flags and the
           run skeleton every entry script uses

and two small modules every layer may use: atomic.py (files written atomically) and command.py (one
way to turn errors into an exit code).
"""
