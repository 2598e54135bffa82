"""Compile every family's prefill and decode graphs (greedy and sampling) in float16 with MindSpore's IR dump on.

`python -m tests.lint.compile_graphs FOLDER` (as a child process: the dump is configured by environment before
MindSpore starts) writes the IR of each graph into FOLDER, family by family in the order prefill, greedy decode,
sampling decode, and prints {family: layers} as JSON.
"""
import json
import os
import sys

from tests.lint.ir import DUMPED_PASS

GRAPHS = ("prefill", "decode", "decode-sampling")


def compile_family(family: str) -> int:
    import numpy as np
    from glm_ms import AutoModel
    from glm_ms.decoding import Decoder, TokenChoice
    from tests.support import FAMILY_FOLDERS
    model = AutoModel.from_pretrained(FAMILY_FOLDERS[family], dtype="float16")
    for _, cell in model.cells_and_names():
        if hasattr(cell, "half_kernel"):
            cell.half_kernel = False  # the MatMul Ascend runs, not glm_ms's float16 CPU kernel
        if hasattr(cell, "fused_attention"):
            cell.fused_attention = False  # likewise the attention ops, not the CPU decode-attention kernel
        if hasattr(cell, "gelu_kernel"):
            cell.gelu_kernel = False  # and MindSpore's GeLU, not glm_ms's CPU GELU kernel
        if hasattr(cell, "residual_kernel"):
            cell.residual_kernel = False  # and MindSpore's Mul and Add, not glm_ms's CPU residual kernel
    ids = model.check_ids([[7, 8, 9, 10, 11]])
    mask, positions = model.prompt_inputs(ids)
    decoder = Decoder(model, ids, mask, positions, max_length=24, compiled=True)
    tokens = decoder.step(decoder.prefill(TokenChoice()), TokenChoice())
    decoder.step(tokens, TokenChoice(do_sample=True, top_k=5, top_p=0.8, rng=np.random.default_rng(0)))
    return len(model.attention_layers())


def main(folder: str) -> None:
    os.environ.update(MS_DEV_SAVE_GRAPHS="1", MS_DEV_SAVE_GRAPHS_PATH=folder, MS_DEV_DUMP_IR_PASSES=DUMPED_PASS)
    from tests.support import FAMILIES
    print(json.dumps({family: compile_family(family) for family in FAMILIES}))


if __name__ == "__main__":
    main(sys.argv[1])
