"""shoal: HPC node services and user workloads in containers, and fast image distribution."""

__version__ = "0.1.0"
