"""shoal.images package."""
