"""The logic behind the MNIST / Fashion-MNIST MLflow pipeline.

The top-level scripts (download.py, explore.py, preprocess.py, train.py, ...) own the
command lines and the printing; this package owns everything they share: the dataset
specs and IDX files, finding and reusing runs, and the one preprocessing transform that
training and the served model both apply.
"""
