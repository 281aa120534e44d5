"""Training: data, processes (dist), the engine with hooks, checkpoints, the run log, the command line and
the run skeleton (skeleton.py) that train_base_model.py and every method's entry script use."""
