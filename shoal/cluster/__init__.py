"""The virtual cluster: a real Slurm cluster of layer1 node containers on one machine."""
