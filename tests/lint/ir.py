"""Read MindSpore's text IR dumps of compiled graphs.

The graph read is the backend's, right before the CPU backend legalizes dtypes for its own kernels (it has no
float16 MatMul and rewrites every one to float32): what any backend receives, with MindSpore's backend op names.
"""
import re
from dataclasses import dataclass
from pathlib import Path

_NODE = re.compile(r"^\s+%\d+\([^)]*\) = (?:PrimFunc_)?(\w+)\(")
# Constants (", value=…", e.g. TopK's k) are folded when the graph is built: not tensors the kernels see.
_TENSOR = re.compile(r"Tensor\[(\w+)\], \(([^)]*)\)(?!, value=)")
_LAYER = re.compile(r"layers-CellList/(\d+)-")
DUMPED_PASS = "hwopt_common_eliminate_illegal_data_type_before"  # for $MS_DEV_DUMP_IR_PASSES
_IGNORED = {"Load", "UpdateState", "MakeTuple", "TupleGetItem", "Depend", "Return"}  # bookkeeping, no kernel


@dataclass(frozen=True)
class Node:
    """One kernel of a graph: its op, the dtypes and shapes of its tensor inputs and outputs, its layer."""
    op: str
    dtypes: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    layer: int | None


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.replace(" ", "").split(",") if d)


def parse(path: Path) -> list[Node]:
    """The kernels of one dumped graph, in order."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    nodes = []
    for i, line in enumerate(lines):
        match = _NODE.match(line)
        if not match or match.group(1) in _IGNORED:
            continue
        types = lines[i + 1] if i + 1 < len(lines) else ""
        tensors = _TENSOR.findall(types.split("-> (")[0]) + _TENSOR.findall("".join(types.split("-> (")[1:]))
        scope = next((l for l in lines[i + 1:i + 6] if "# Scope:" in l), "")
        layer = _LAYER.search(scope)
        nodes.append(Node(match.group(1), tuple(d for d, _ in tensors), tuple(_shape(s) for _, s in tensors),
                          int(layer.group(1)) if layer else None))
    return nodes


def final_graphs(folder: Path) -> list[Path]:
    """The final kernel graphs dumped in `folder`, in compilation order."""
    return sorted(folder.glob(f"{DUMPED_PASS}_graph_*.ir"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
