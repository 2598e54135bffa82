"""Graph lint: the float16 prefill and decode graphs (greedy and sampling) of every family, as MindSpore's IR
dump records them on CPU, hold only what a 910A's AI Core runs: (op, dtype) pairs from tests/lint/allowlist_910a.py,
no int64 tensor, no dynamic dimension, exactly one key and one value scatter per layer and no Assign, and no more
ops per layer and per graph than recorded below."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mindspore
import pytest

from tests.lint.allowlist_910a import ALLOWED
from tests.lint.compile_graphs import GRAPHS
from tests.lint.ir import final_graphs, parse
from tests.support import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
# Kernels scoped to a transformer layer, per layer (the busiest of the three graphs). An op more per layer is
# ~28 more kernel launches per token on a 6B model: lower these when a change saves ops, raise them only with
# a reason in the commit.
# chatglm-6b 59 → 60: its prefill graph's last-position Slice (models.base.last_position) is scoped into layer 0
# by MindSpore, though it runs once per graph; the graph totals did not grow.
OPS_PER_LAYER = {"chatglm-6b": 60, "chatglm2": 92, "chatglm3": 92}
# Kernels in the busiest graph (2-layer fixtures; the sampling decode step): the per-layer count above misses
# ops MindSpore hoists out of the layers' scope (such as weight casts: float32 norm parameters saved 10 / 5).
OPS_PER_GRAPH = {"chatglm-6b": 227, "chatglm2": 279, "chatglm3": 279}
# Recorded on MindSpore 2.10; 2.7.2's passes leave 5 more ops outside the layers in the same graphs (measured).
OLDER_RELEASE_OPS = 5 if tuple(int(p) for p in mindspore.__version__.split(".")[:2]) < (2, 9) else 0


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """{(family, graph name): (nodes, layers)} from one child process compiling them all with the dump on."""
    folder = tmp_path_factory.mktemp("ir")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "tests.lint.compile_graphs", str(folder)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    layers = json.loads(done.stdout.strip().splitlines()[-1])
    files = final_graphs(folder)
    assert len(files) == len(FAMILIES) * len(GRAPHS), [f.name for f in files]
    names = [(family, graph) for family in FAMILIES for graph in GRAPHS]
    return {name: (parse(path), layers[name[0]]) for name, path in zip(names, files)}


def test_every_op_and_dtype_is_on_the_910a_allowlist(graphs):
    bad = sorted({(op, dtype, f"{family}/{graph}") for (family, graph), (nodes, _) in graphs.items()
                  for op, dtypes in ((n.op, n.dtypes) for n in nodes) for dtype in dtypes
                  if dtype not in ALLOWED.get(op, ())})
    assert not bad, f"not on the 910A allowlist (tests/lint/allowlist_910a.py): {bad}"
    assert all(len(nodes) > 50 for nodes, _ in graphs.values())  # the parser did read the graphs


def test_no_int64_tensor_and_no_dynamic_dimension(graphs):
    for (family, graph), (nodes, _) in graphs.items():
        assert not [n.op for n in nodes if "Int64" in n.dtypes], f"{family}/{graph}"
        assert not [(n.op, n.shapes) for n in nodes if any(d < 0 for s in n.shapes for d in s)], f"{family}/{graph}"


def test_one_key_and_one_value_scatter_per_layer_and_no_assign(graphs):
    for (family, graph), (nodes, layers) in graphs.items():
        ops = [n.op for n in nodes]
        assert ops.count("ScatterUpdate") == 2 * layers, f"{family}/{graph}"
        assert not {"Assign", "TopKV2Sort", "Sort", "ArgSort"} & set(ops), f"{family}/{graph}"


@pytest.mark.parametrize("family", FAMILIES)
def test_ops_per_layer_within_the_recorded_budget(graphs, family):
    per_layer = max(math.ceil(sum(n.layer is not None for n in nodes) / layers)
                    for (f, _), (nodes, layers) in graphs.items() if f == family)
    assert per_layer <= OPS_PER_LAYER[family], f"{family}: {per_layer} ops per layer"


@pytest.mark.parametrize("family", FAMILIES)
def test_ops_per_graph_within_the_recorded_budget(graphs, family):
    most = max(len(nodes) for (f, _), (nodes, _) in graphs.items() if f == family)
    assert most <= OPS_PER_GRAPH[family] + OLDER_RELEASE_OPS, f"{family}: {most} ops in its largest graph"
