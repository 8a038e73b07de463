"""shoal model: carry study measurements to a site\x27s scale (docs/MODEL.md)."""
