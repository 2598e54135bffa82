"""The ModelScope client and `resolve` (model id or path → local folder) — no MindSpore."""
