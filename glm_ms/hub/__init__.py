"""The ModelScope client (`modelscope`) and `resolve` (a folder or model id → weights to load) — no MindSpore."""
