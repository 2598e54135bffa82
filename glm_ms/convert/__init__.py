"""Upstream ChatGLM checkpoints → MindSpore safetensors folders, and every reader of weights (no MindSpore).

`driver.convert_checkpoint` converts, `converted` reads what it wrote, `readers.open_weights` opens any folder of
weights, `names` holds the name tables and `cli` is `glm-ms-convert`.
"""
