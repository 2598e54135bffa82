"""(op, dtype) pairs a compiled glm_ms graph may contain to run on an Ascend 910A's AI Core.

Keyed by MindSpore's backend op name; the value is every tensor dtype the op may touch (inputs and outputs:
data and its int32 indices alike). Sources, cited per entry: CANN's TBE op info for the 910 AI Core,
aic-ascend910-ops-info.json, as read in a real copy (Ascend/ModelZoo-TensorFlow,
TensorFlow/built-in/nlp/GNMT_ID0015_for_TensorFlow/test/aic-ascend910-ops-info.json, 613 ops, a CANN 5.0.x build
of 2021, cross-checked with the CANN 5.0.1 copy under TensorFlow/contrib/nlp/char-level_cnn/) — "op info" below;
and issue 13's audit of CANN's kernel selection for TopK/Sort under 910A's default precision mode
allow_fp32_to_fp16. Ops whose op info entry is `dynamicFormat` carry no dtype list there (their kernels pick
formats when compiled): those entries cite the op's static sibling. Three ops here are missing from that 2021
op info altogether (IsFinite, SiLU, GatherD/GatherElements) and rest on CANN 8's operator list, unchecked
against an 8.x op info file (none is public). Int64 appears nowhere on purpose. An op or dtype missing here
makes the lint fail: add it only with its source, after checking that the 910A's op info lists it for the AI
Core (not the AI CPU).
"""

F16, F32, I32, BOOL = "Float16", "Float32", "Int32", "Bool"

ALLOWED = {
    # --- matrix products: the Cube unit takes float16 inputs (CANN MatMul/BatchMatMul(V2) op info, 910).
    "MatMul": {F16},                       # op info MatMul(V2): float16 on the Cube (float32 ND too, kept off: slow)
    "BatchMatMul": {F16},                  # op info BatchMatMul(V2): dynamicFormat; float16 as MatMul
    # --- selection: TopK on the AI Core is float16 only on 910A (issue 13 audit of CANN's TopK kernel select);
    # no Sort at all (op info has float16 Sort only, which corrupts ids above 2048; float32 goes to the AI CPU).
    "TopK": {F16, I32},                    # op info TopKD/TopKV2D only: x float16, k / indices int32
    "ReduceMax": {F32, I32},               # op info ReduceMaxD: float16/float32/int32 (bool, int8, uint8)
    "Argmax": {F32, I32},                  # CANN ArgMaxV2: x float16/float32, output int32
    # --- normalization and activations (float32 statistics, see cells/layers.py)
    "LayerNorm": {F32},                    # CANN LayerNorm: float16/float32
    "ReduceMean": {F32},                   # CANN ReduceMeanD: float16/float32
    "Rsqrt": {F32},                        # CANN Rsqrt: float16/float32
    "Softmax": {F32},                      # CANN SoftmaxV2: float16/float32
    "GeLU": {F16},                         # CANN Gelu: float16/float32
    "SiLU": {F16},                         # CANN 8 Silu: float16/float32 (not in the 2021 op info)
    "CumSum": {F32},                       # op info CumsumD: float16/float32/int32 (int8, uint8)
    "SumExt": {F32},                       # CANN ReduceSum(D): float16/float32 (only float sums: int32→int64 SumExt banned)
    # --- elementwise arithmetic: CANN Add/Sub/Mul/Muls/Div/Neg/Minimum: float16/float32/int32
    "Add": {F16, F32},                     # op info Add: dynamicFormat; AddV2 float16/float32/int32
    "Sub": {F16, F32},                     # CANN Sub
    "Mul": {F16, F32},                     # op info Mul: dynamicFormat; Muls float16/float32/int32
    "Muls": {F16, F32},                    # CANN Muls
    "Div": {F32},                          # op info RealDiv: dynamicFormat; Div float16/float32/int32
    "Neg": {F16},                          # CANN Neg
    "Minimum": {F32},                      # CANN Minimum
    # --- comparisons and logic: CANN Equal/Greater/Less/LessEqual: float16/float32/int32 in, bool out
    "Equal": {F32, BOOL},                  # CANN Equal
    "Greater": {F32, I32, BOOL},           # CANN Greater
    "Less": {F32, I32, BOOL},              # CANN Less
    "LessEqual": {F32, BOOL},              # CANN LessEqual
    "LessScalar": {F32, BOOL},             # CANN Less with a scalar operand
    "IsFinite": {F32, BOOL},               # CANN 8 IsFinite: float16/float32 in, bool out (not in the 2021 op info)
    "LogicalAnd": {BOOL},                  # CANN LogicalAnd: bool
    "LogicalOr": {BOOL},                   # CANN LogicalOr: bool
    "LogicalNot": {BOOL},                  # CANN LogicalNot: bool
    "ReduceAll": {BOOL},                   # CANN ReduceAllD: bool
    "Select": {F32, I32, BOOL},            # op info Select: dynamicFormat; SelectV2 f16/f32/int32, bool condition
    "MaskedFill": {F16, BOOL},             # CANN MaskedFill: float16/float32/int32 with a bool mask
    "Cast": {F16, F32, I32, BOOL},         # op info Cast: every pair of these but float32 → bool
    # --- data movement: CANN Gather(V2)/GatherElements(GatherD)/ScatterUpdate: float16/float32/int32 data,
    # int32 indices
    "Gather": {F16, F32, I32},             # CANN GatherV2
    "GatherD": {F32, I32},                 # CANN 8 GatherElements (not in the 2021 op info)
    "ScatterUpdate": {F16, F32, I32},      # op info ScatterUpdate: float16/float32 var, int32 indices; in place
    "Concat": {F16, F32, I32},             # op info ConcatD/ConcatV2D: dynamicFormat
    "Split": {F16},                        # op info SplitV/Split: float16/float32/int*
    "StridedSlice": {F16, F32, I32},       # op info StridedSlice: bool/float16/float32/int32/int8/uint8
    "Slice": {F16},                        # CANN Slice(D): float16/float32/int32 (the cache slots read)
    "Transpose": {F16},                    # op info TransposeD/Transpose: float16/float32/int*/bool
    "Tile": {F32, I32, BOOL},              # op info Tile: bool/float16/float32/int32 (TileD dynamicFormat)
    "Reshape": {F16, F32, I32, BOOL},      # no kernel (a view of the same memory)
    "ExpandDims": {F16, F32},              # no kernel (a view)
    "Contiguous": {F16},                   # op info TensorMove: materializes a view before a scatter
}
