"""The training layer: the K-fold loop (kfold.py) and the programs built on it: post-training (MLM/RTD, time
budget), HP search, pseudo-labels, distillation; and the settings checked against backends, files and runs."""
