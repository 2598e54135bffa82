"""glm-ms-serve: an OpenAI-compatible HTTP server with continuous batching (engine, protocol, app, CLI, Ray Serve).

Layers, bottom up: `rows` (the batched KV cache and its compiled steps), `sampling`, `engine` (the scheduler
thread: token ids in, token ids out), `text` and `conversation` (ids ↔ reply text, prompts, tool calls),
`service` (OpenAI semantics without HTTP; also the in-process API for other front ends), `protocol` and `app`
(the wire format and routes), `cli` and `ray_app`. Importing this package loads nothing.
"""
