"""Scale-out on Ray Serve: one engine (model, batched cache) per replica, all behind the same OpenAI routes.

From the command line: `glm-ms-serve --ray --replicas 2 ...`. As a Ray Serve application::

    from ray import serve
    from glm_ms.serve.ray_app import build_app
    serve.run(build_app(["--model", "ZhipuAI/chatglm3-6b", "--mirror", "modelscope", "--replicas", "2",
                         "--replica-npus", "1"]), route_prefix="/")

or `serve run glm_ms.serve.ray_app:app_builder model=demo replicas=2`. Ray's proxy spreads requests over the
replicas (each takes up to slots + max_queue at once); a replica that dies fails only its own in-flight requests,
the others keep serving, and Ray starts a replacement.
"""
from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

from ray import serve

from .cli import api_keys, build_service, parse_args

log = logging.getLogger(__name__)


@serve.ingress()
class GlmMsReplica:
    """One replica: the model loaded from the glm-ms-serve flags, its engine, and the app serving it."""

    def __init__(self, options: dict[str, Any]):
        self.args = argparse.Namespace(**options)
        self.service = build_service(self.args)

    def __serve_build_asgi_app__(self):
        from .app import create_app
        return create_app(self.service, api_keys(self.args), self.args.cors_origin)

    def check_health(self) -> None:
        """Ray Serve's health probe: a replica whose engine has stopped is replaced."""
        if not self.service.engine.running:
            raise RuntimeError("the engine has stopped")

    def __del__(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.engine.shutdown(timeout=5)


def actor_options(args: argparse.Namespace) -> dict[str, Any]:
    """What each replica reserves: CPUs, and with --replica-npus Ascend NPUs (Ray resource 'NPU')."""
    options: dict[str, Any] = {"num_cpus": args.replica_cpus}
    if args.replica_npus:
        options["resources"] = {"NPU": args.replica_npus}
    return options


def build_app(argv: list[str] | argparse.Namespace):
    """The Ray Serve application for glm-ms-serve flags (a list) or parsed arguments."""
    args = argv if isinstance(argv, argparse.Namespace) else parse_args(argv)
    deployment = serve.deployment(GlmMsReplica, name="glm_ms", num_replicas=args.replicas,
                                  ray_actor_options=actor_options(args),
                                  max_ongoing_requests=args.slots + args.max_queue,
                                  health_check_period_s=5, graceful_shutdown_timeout_s=10)
    return deployment.bind(vars(args))


def app_builder(options: dict[str, str]):
    """For `serve run glm_ms.serve.ray_app:app_builder model=demo replicas=2`: key=value pairs as the flags."""
    return build_app([f"--{key.replace('_', '-')}={value}" for key, value in options.items()])


def serve_on_ray(args: argparse.Namespace) -> int:
    """`glm-ms-serve --ray`: start (or join) Ray, run the app on --host/--port until Ctrl-C / SIGTERM; exit 0."""
    import ray
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ray.init(address=args.ray_address, include_dashboard=False, logging_level=args.log_level.upper())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build_app(args), name="glm_ms", route_prefix="/", blocking=False)
        log.info("serving on Ray Serve at http://%s:%d/v1 with %d replicas", args.host, args.port, args.replicas)
        while not stop.wait(0.5):  # a timed wait lets the signal handlers run promptly
            pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
