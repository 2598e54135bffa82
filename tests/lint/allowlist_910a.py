"""(op, dtype) pairs a compiled glm_ms graph may contain to run on an Ascend 910A's AI Core.

Keyed by MindSpore's backend op name; the value is every tensor dtype the op may touch (inputs and outputs:
data and its int32 indices alike). Sources, cited per entry: CANN's TBE operator specifications for the Ascend
910 AI Core ("CANN Operator List", op info file aic-ascend910-ops-info.json shipped in the CANN kernel package),
and issue 13's audit of CANN's kernel selection for TopK/Sort under 910A's default precision mode
allow_fp32_to_fp16. Int64 appears nowhere on purpose. An op or dtype missing here makes the lint fail: add it
only with its source, after checking that the 910A's op info lists it for the AI Core (not the AI CPU).
"""

F16, F32, I32, BOOL = "Float16", "Float32", "Int32", "Bool"

ALLOWED = {
    # --- matrix products: the Cube unit takes float16 inputs (CANN MatMul/BatchMatMul(V2) op info, 910).
    "MatMul": {F16},                       # CANN MatMulV2: float16 x float16 (float32 not a 910A AI Core input)
    "BatchMatMul": {F16},                  # CANN BatchMatMulV2: float16
    # --- selection: TopK on the AI Core is float16 only on 910A (issue 13 audit of CANN's TopK kernel select);
    # no Sort at all (float32 Sort falls to the AI CPU, float16 Sort corrupts ids above 2048).
    "TopK": {F16, I32},                    # CANN TopK(V2): x float16, k / indices int32
    "ReduceMax": {F32, I32},               # CANN ReduceMaxD: float16/float32/int32 (int8, uint8)
    "Argmax": {F32, I32},                  # CANN ArgMaxV2: x float16/float32, output int32
    # --- normalization and activations (float32 statistics, see cells/layers.py)
    "LayerNorm": {F32},                    # CANN LayerNorm: float16/float32
    "ReduceMean": {F32},                   # CANN ReduceMeanD: float16/float32
    "Rsqrt": {F32},                        # CANN Rsqrt: float16/float32
    "Softmax": {F32},                      # CANN SoftmaxV2: float16/float32
    "GeLU": {F16},                         # CANN Gelu: float16/float32
    "SiLU": {F16},                         # CANN Swish/SiLU: float16/float32
    "CumSum": {F32},                       # CANN Cumsum: float16/float32/int32 (int8, uint8)
    "SumExt": {F32},                       # CANN ReduceSum(D): float16/float32 (only float sums: int32→int64 SumExt banned)
    # --- elementwise arithmetic: CANN Add/Sub/Mul/Muls/Div/Neg/Minimum: float16/float32/int32
    "Add": {F16, F32},                     # CANN Add
    "Sub": {F16, F32},                     # CANN Sub
    "Mul": {F16, F32},                     # CANN Mul
    "Muls": {F16, F32},                    # CANN Muls
    "Div": {F32},                          # CANN RealDiv
    "Neg": {F16},                          # CANN Neg
    "Minimum": {F32},                      # CANN Minimum
    # --- comparisons and logic: CANN Equal/Greater/Less/LessEqual: float16/float32/int32 in, bool out
    "Equal": {F32, BOOL},                  # CANN Equal
    "Greater": {F32, I32, BOOL},           # CANN Greater
    "Less": {F32, I32, BOOL},              # CANN Less
    "LessEqual": {F32, BOOL},              # CANN LessEqual
    "LessScalar": {F32, BOOL},             # CANN Less with a scalar operand
    "IsFinite": {F32, BOOL},               # CANN IsFinite: float16/float32 in, bool out
    "LogicalAnd": {BOOL},                  # CANN LogicalAnd: bool
    "LogicalOr": {BOOL},                   # CANN LogicalOr: bool
    "LogicalNot": {BOOL},                  # CANN LogicalNot: bool
    "ReduceAll": {BOOL},                   # CANN ReduceAllD: bool
    "Select": {F32, I32, BOOL},            # CANN Select: float16/float32/int32 with a bool condition
    "MaskedFill": {F16, BOOL},             # CANN MaskedFill: float16/float32/int32 with a bool mask
    "Cast": {F16, F32, I32, BOOL},         # CANN Cast: between float16/float32/int32/bool
    # --- data movement: CANN Gather(V2)/GatherElements(GatherD)/ScatterUpdate: float16/float32/int32 data,
    # int32 indices
    "Gather": {F16, F32, I32},             # CANN GatherV2
    "GatherD": {F32, I32},                 # CANN GatherElements
    "ScatterUpdate": {F16, F32, I32},      # CANN ScatterUpdate: float16/float32 (int8) var, int32 indices; in place
    "Concat": {F16, F32, I32},             # CANN ConcatD
    "Split": {F16},                        # CANN SplitD/SplitV
    "StridedSlice": {F16, F32, I32},       # CANN StridedSliceD
    "Slice": {F16},                        # CANN Slice(D): float16/float32/int32 (the cache slots read)
    "Transpose": {F16},                    # CANN TransposeD
    "Tile": {F32, I32, BOOL},              # CANN TileD: float16/float32/int32 (bool as uint8)
    "Reshape": {F16, F32, I32, BOOL},      # no kernel (a view of the same memory)
    "ExpandDims": {F32},                   # no kernel (a view)
    "Contiguous": {F16},                   # CANN ViewCopy / TensorMove: materializes a view before a scatter
}
