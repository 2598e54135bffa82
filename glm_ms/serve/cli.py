"""`glm-ms-serve`: the OpenAI-compatible server, on one machine (uvicorn) or scaled out on Ray Serve (`--ray`)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from .. import families
from ..errors import GlmMsError
from ..loading import DEMO_NOTE, add_model_arguments, is_demo, load_from_args

log = logging.getLogger("glm_ms.serve")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
API_KEY_ENV = "GLM_MS_API_KEY"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags of `glm-ms-serve`."""
    parser = argparse.ArgumentParser(
        prog="glm-ms-serve", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models, /health, /metrics) "
                    "with continuous batching for " + ", ".join(r.title for r in families.FAMILIES.values()) + ".",
        epilog="example: glm-ms-serve --model ZhipuAI/chatglm3-6b --mirror modelscope --slots 4 --api-key SECRET; "
               "then point any OpenAI client at http://127.0.0.1:8000/v1")
    add_model_arguments(parser)
    http = parser.add_argument_group("http")
    http.add_argument("--host", default=DEFAULT_HOST,
                      help="address to bind (127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    http.add_argument("--port", type=int, default=DEFAULT_PORT, help="port")
    http.add_argument("--served-model-name", default=None,
                      help="the model id clients send and /v1/models lists (default: the --model value)")
    http.add_argument("--api-key", action="append", default=None,
                      help=f"require 'Authorization: Bearer KEY' (repeatable; default: ${API_KEY_ENV} if set, "
                           "else no auth). /health stays open")
    http.add_argument("--cors-origin", action="append", default=[],
                      help="allow browsers from this origin (repeatable; default: no CORS)")
    engine = parser.add_argument_group("engine")
    engine.add_argument("--slots", type=int, default=4,
                        help="requests decoded together (rows of the batched KV cache)")
    engine.add_argument("--max-queue", type=int, default=64,
                        help="requests waiting for a free slot before new ones get 429")
    engine.add_argument("--max-model-len", type=int, default=None,
                        help="tokens per slot, prompt + answer (default: the family's chat max_length, "
                             + ", ".join(f"{r.title} {r.chat.max_length}" for r in families.FAMILIES.values())
                             + "); rounded up to a cache bucket")
    engine.add_argument("--eager", action="store_true", help="run the Cells eagerly instead of compiled graphs")
    ray = parser.add_argument_group("scale-out (Ray Serve, needs the [serve] extra)")
    ray.add_argument("--ray", action="store_true", help="serve with Ray Serve: one engine per replica")
    ray.add_argument("--replicas", type=int, default=1, help="engine replicas behind the one endpoint")
    ray.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    ray.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica")
    ray.add_argument("--replica-npus", type=float, default=0.0,
                     help="Ascend NPUs per replica (Ray custom resource 'NPU'; 1 on a 910 node)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    for name in ("slots", "port", "replicas"):
        if getattr(args, name) < (0 if name == "port" else 1):
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_queue < 0:
        parser.error("--max-queue must be >= 0")
    return args


def api_keys(args: argparse.Namespace) -> list[str]:
    """The keys from --api-key, else from $GLM_MS_API_KEY (comma-separated), else none."""
    if args.api_key:
        return list(args.api_key)
    return [k for k in os.environ.get(API_KEY_ENV, "").split(",") if k]


def model_id(args: argparse.Namespace) -> str:
    """What clients call the model: --served-model-name, else the folder name or model id given."""
    if args.served_model_name:
        return args.served_model_name
    if is_demo(args.model):
        return "glm-ms-demo"
    return Path(args.model).name if Path(args.model).is_dir() else str(args.model)


def prefer_batched_kernels(slots: int) -> None:
    """Before MindSpore starts on a CPU: with several slots, let oneDNN use its AVX-512 matrix kernels.

    glm_ms caps oneDNN at AVX2 by default (glm_ms.device), the fastest choice for one row at a time; but there a
    product of a few rows costs about twice one row, while the AVX-512 kernels cost about the same for one to
    eight rows, which is what a batched decode step needs. A value the user set wins; on a CPU without
    AVX-512 the cap changes nothing.
    """
    if slots > 1:
        os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")


def build_service(args: argparse.Namespace):
    """Load the model and start its engine: a ChatService (raises GlmMsError on a bad model or settings)."""
    from .engine import Engine
    from .service import ChatService
    prefer_batched_kernels(args.slots)
    model, tokenizer = load_from_args(args)
    engine = Engine(model, slots=args.slots, max_queue=args.max_queue, capacity=args.max_model_len,
                    compiled=False if args.eager else None)
    engine.warmup(tokenizer.encode("hi"))
    return ChatService(engine, tokenizer, model_id(args))


def graceful_server(config, on_exit: Callable[[], None]):
    """A uvicorn Server whose Ctrl-C / SIGTERM first runs `on_exit` (streams end with an error chunk) and whose
    process then exits 0: unlike uvicorn's default, the signal is not raised again after shutdown."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            on_exit()
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C stops waiting for open connections
            self.should_exit = True

    return GracefulServer(config)


def serve_locally(args: argparse.Namespace) -> int:
    """Run the app on uvicorn in this process until Ctrl-C / SIGTERM."""
    import uvicorn
    from .app import create_app
    service = build_service(args)
    app = create_app(service, api_keys(args), args.cors_origin)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=10)
    server = graceful_server(config, lambda: service.engine.shutdown(timeout=0))
    log.info("serving %s (%s) on http://%s:%d/v1 with %d slots of %d tokens", service.model_id, service.title,
             args.host, args.port, args.slots, service.engine.capacity)
    server.run()
    service.engine.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`glm-ms-serve`: serve until interrupted (exit 0); 1 with a one-line error when the model or flags fail."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if is_demo(args.model):
        log.warning(DEMO_NOTE)
    try:
        if args.ray:
            from .ray_app import serve_on_ray
            return serve_on_ray(args)
        return serve_locally(args)
    except GlmMsError as err:
        print(f"glm-ms-serve: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
