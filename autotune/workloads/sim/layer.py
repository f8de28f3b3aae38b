"""One decoder layer (and the ops around the layers) as the twin lays it out on the compute stream.

The op sequence is docs/analysis.md's decode layer with roofline durations: quantize + int8
matmul for static-W8A8 linears, bf16 matmul otherwise, a collective after o_proj and down_proj.
A plan adds where each firing prefetch is issued (a record before its first op) and joined (a
compute-stream wait after an op), as vllm-ascend 0.23 places them; nothing here knows how the
analysis finds windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autotune.errors import AutotuneError
from autotune.hardware import Hardware
from autotune.models import STATIC_W8A8, ModelSpec, scheme_bits, weight_bytes
from autotune.target import ResolvedPrefetch, Setup, sequence_parallel

# Where the twin joins mlp.gate_up: after SwiGLU (0.23) or after its norm (before #4168).
GATE_UP_JOINS: tuple[str, ...] = ("swiglu", "norm")


@dataclass(frozen=True, slots=True)
class Op:
    """One compute-stream kernel (or collective) with its isolated duration (ns) and HBM bytes."""

    name: str  # kernel name in the aclnn<Api>_<Impl>_<OpType> shape
    op_type: str
    core: str  # accelerator core / task type: AI_CORE, AI_VECTOR_CORE, MIX_AIC, HCCL
    dur: float
    hbm: float
    weight: str = ""  # matmul: the weight it reads (a prefetch target)
    w_bytes: float = 0.0  # matmul: bytes of that weight it reads
    w_full: float = 0.0  # matmul: bytes of the whole weight (prefetch offsets are into it)
    compute: float = 0.0  # matmul: cube-bound time (ns)
    attention: bool = False  # duration grows with context
    in_shapes: str = ""
    out_shapes: str = ""
    in_types: str = ""
    out_types: str = ""
    # The name under "mixed" kernel names when it is not the aclnn one: an op-cache node name
    # (OpType + index, like the real capture's `Conv2D1`) or a custom kernel's own name.
    node_name: str = ""
    comm_bytes: float = 0.0  # collective: bytes each rank contributes

    @property
    def is_comm(self) -> bool:
        return self.core == "HCCL"


@dataclass(frozen=True, slots=True)
class Issue:
    """Issue prefetch `index` (a record on the compute stream) before the next op."""

    index: int


@dataclass(frozen=True, slots=True)
class Join:
    """A compute-stream wait for every prefetch issued so far."""


Item = Op | Issue | Join


@dataclass(frozen=True)
class Plan:
    """One layer's items in compute-stream order, with the prefetches it issues."""

    items: tuple[Item, ...]
    prefetches: tuple[ResolvedPrefetch, ...]
    gap: float  # ns between consecutive kernels
    t_sync: float  # ns


def kernel_name(api: str, op_type: str, impl: str | None = None) -> str:
    return f"aclnn{api}_{impl or op_type}_{op_type}"


class Builder:
    """Builds one layer's (or the head's / tail's) op list with the perf model's durations."""

    def __init__(self, spec: ModelSpec, setup: Setup, hw: Hardware) -> None:
        self.spec, self.setup, self.hw = spec, setup, hw
        self.items: list[Item] = []
        self.labels: dict[str, int] = {}
        self.b = setup.max_num_seqs
        # Sequence parallel (flashcomm1, and on dense models only above 1000 tokens) splits the
        # norms' rows over the TP ranks and swaps all-reduce for all-gather + reduce-scatter.
        # A dense decode step stays below that, so flashcomm1 only arms the gate_up hook there.
        self.sp = sequence_parallel(setup, self.b)
        self.t_norm = -(-self.b // setup.tp) if self.sp else self.b
        self.wb = weight_bytes(spec, setup.tp, setup.ep)

    def linear(
        self, scheme: str, weight: str, k: int, n: int, label: str, quant_bytes: float
    ) -> None:
        """A linear as its checkpoint scheme runs it: activation quantize + int8 matmul, or bf16."""
        b = self.b
        if scheme_bits(scheme) < 16:
            # Static W8A8 quantizes with a fixed scale; the dynamic flavours (W8A8_MIX outside
            # decode nodes) compute per-token scales.
            api, op_type = (
                ("AscendQuantV3", "AscendQuantV2")
                if scheme == STATIC_W8A8
                else ("DynamicQuant", "DynamicQuant")
            )
            self.vec(api, op_type, quant_bytes, f"{b},{k}", label)
            self.matmul("QuantMatmulV4", "QuantBatchMatmulV3", weight, self.wb[weight], k, n)
        else:
            self.matmul("Mm", "MatMulV2", weight, self.wb[weight], k, n, int8=False)

    def add(self, op: Op, label: str = "") -> None:
        if label:
            self.labels[label] = len(self.items)
        self.items.append(op)

    def vec(
        self, api: str, op_type: str, nbytes: float, shape: str, label: str = "", node: str = ""
    ) -> None:
        hw = self.hw
        dur = hw.t0_vec_us * 1e3 + nbytes / hw.vec_gbs  # GB/s == bytes/ns
        self.add(
            Op(
                kernel_name(api, op_type),
                op_type,
                "AI_VECTOR_CORE",
                dur,
                nbytes,
                in_shapes=shape,
                out_shapes=shape,
                in_types="DT_BF16",
                out_types="DT_BF16",
                node_name=node,
            ),
            label,
        )

    def comm(self, kind: str, dur_us: float, nbytes: float, label: str = "") -> None:
        seq = len(self.items)
        self.add(
            Op(
                f"hcom_{kind}__{seq}_0_1",
                f"hcom_{kind}_",
                "HCCL",
                dur_us * 1e3,
                0.0,
                comm_bytes=nbytes,
            ),
            label,
        )

    def matmul(
        self,
        api: str,
        op_type: str,
        weight: str,
        w_full: float,
        k: int,
        n: int,
        *,
        rows: int | None = None,
        read_frac: float = 1.0,
        int8: bool = True,
        label: str = "",
        node: str = "",
    ) -> None:
        hw = self.hw
        m = self.b if rows is None else rows
        peak = hw.peak_int8_tops * 1e12 * (1.0 if int8 else 0.5) * hw.eff_cube
        compute = 2.0 * m * k * n / peak * 1e9
        w_bytes = w_full * read_frac
        dur = hw.t0_mm_us * 1e3 + max(w_bytes / hw.mm_gbs, compute)
        dtype = "INT8" if int8 else "DT_BF16"
        self.add(
            Op(
                kernel_name(api, op_type, "MatMulCommon" if op_type == "MatMulV2" else None),
                op_type,
                "AI_CORE",
                dur,
                w_bytes,
                weight=weight,
                w_bytes=w_bytes,
                w_full=w_full,
                compute=compute,
                in_shapes=f"{m},{k};{k},{n}",
                out_shapes=f"{m},{n}",
                in_types=f"{dtype};{dtype}",
                out_types="DT_BF16",
                node_name=node,
            ),
            label,
        )

    # -- the decoder layer of docs/analysis.md ------------------------------------------------

    def layer(self) -> None:
        spec, setup, hw, b = self.spec, self.setup, self.hw, self.b
        h, hd, tp = spec.hidden_size, spec.head_dim, setup.tp
        q_l = spec.num_attention_heads // tp * hd
        kv_heads = spec.num_key_value_heads
        kv_l = (kv_heads // tp if kv_heads >= tp else 1) * hd
        tn = self.t_norm
        sp = self.sp
        act = b * h * 2  # one bf16 activation row block: what a collective moves per rank
        # Input norm with residual: read x and residual, write both (bf16).
        self.vec("AddRmsNorm", "AddRmsNorm", tn * h * 8 + h * 2, f"{tn},{h}", "input_norm")
        if sp:
            self.comm("allGather", hw.t_comm_us, act)
        self.linear(spec.attn_quant, "qkv_proj", h, q_l + 2 * kv_l, "quant_qkv", b * h * 3)
        self.vec("RmsNorm", "RmsNorm", b * (q_l + kv_l) * 4, f"{b},{q_l + kv_l}")
        # The rope and cache update are vllm-ascend custom kernels: named by their op type.
        self.vec(
            "ApplyRotaryPosEmb",
            "ApplyRotaryPosEmb",
            b * (q_l + kv_l) * 4,
            f"{b},{q_l}",
            node="ApplyRotaryPosEmb",
        )
        self.vec(
            "ReshapeAndCache",
            "ReshapeAndCache",
            b * kv_l * 8,
            f"{b},{kv_l}",
            node="ReshapeAndCache",
        )
        # Decode attention streams the batch's KV cache; its duration is set per context length.
        self.add(
            Op(
                kernel_name("FusedInferAttentionScoreV3", "FusedInferAttentionScore"),
                "FusedInferAttentionScore",
                "MIX_AIC",
                hw.t0_mm_us * 1e3,
                0.0,
                attention=True,
                in_shapes=f"{b},1,{q_l}",
                out_shapes=f"{b},1,{q_l}",
                in_types="DT_BF16",
                out_types="DT_BF16",
            ),
            "attention",
        )
        self.linear(spec.o_quant, "o_proj", q_l, h, "quant_o", b * q_l * 3)
        self.comm("reduceScatter" if sp else "allReduce", hw.t_comm_us, act)
        self.vec("AddRmsNorm", "AddRmsNorm", tn * h * 8 + h * 2, f"{tn},{h}", "post_norm")
        if spec.has_experts:
            self._moe()
        else:
            self._mlp()

    def _mlp(self) -> None:
        spec, setup, hw, b = self.spec, self.setup, self.hw, self.b
        h, i_l = spec.hidden_size, spec.intermediate_size // setup.tp
        sp = self.sp
        act = b * h * 2
        if sp:
            self.comm("allGather", hw.t_comm_us, act)
        q = spec.mlp_quant
        self.linear(q, "gate_up_proj", h, 2 * i_l, "quant_gate_up", b * h * 3)
        self.vec("SwiGlu", "SwiGlu", b * i_l * 6, f"{b},{2 * i_l}", "swiglu")
        self.linear(q, "down_proj", i_l, h, "quant_down", b * i_l * 3)
        self.comm("reduceScatter" if sp else "allReduce", hw.t_comm_us, act)

    def _moe(self) -> None:
        spec, setup, hw, b = self.spec, self.setup, self.hw, self.b
        h, e, k = spec.hidden_size, spec.num_experts, spec.num_experts_per_tok
        ep = setup.ep
        inter = spec.moe_intermediate_size if ep > 1 else spec.moe_intermediate_size // setup.tp
        rows = b * k // ep if ep > 1 else b * k
        act = b * h * 2
        # Experts that receive at least one of the batch's b*k routed rows read their weights.
        active = 1.0 - (1.0 - 1.0 / e) ** (b * k)
        self.matmul("Mm", "MatMulV2", "gate", h * e * 2, h, e, int8=False)
        self.vec("MoeGatingTopK", "MoeGatingTopK", b * e * 4, f"{b},{e}", "gating")
        if ep > 1:
            self.comm("alltoAll", hw.t_dispatch_us, act * k, "dispatch")
        else:
            self.comm("allGather", hw.t_comm_us, act, "dispatch")
        self.vec("DynamicQuant", "DynamicQuant", rows * h * 3, f"{rows},{h}", "quant_moe")
        self.matmul(
            "GroupedMatmulV4",
            "GroupedMatmul",
            "w13",
            self.wb["w13"],
            h,
            2 * inter,
            rows=rows,
            read_frac=active,
        )
        self.vec(
            "DequantSwigluQuant",
            "DequantSwigluQuant",
            rows * inter * 9,
            f"{rows},{2 * inter}",
            "swiglu",
        )
        self.matmul(
            "GroupedMatmulV4",
            "GroupedMatmul",
            "w2",
            self.wb["w2"],
            inter,
            h,
            rows=rows,
            read_frac=active,
        )
        if ep > 1:
            self.comm("alltoAll", hw.t_combine_us, act * k)
        else:
            self.comm("reduceScatter", hw.t_comm_us, act)

    def head(self) -> None:
        """Ops before the first layer: the embedding lookup."""
        b, h = self.b, self.spec.hidden_size
        self.vec("Embedding", "GatherV2", b * h * 4, f"{b},{h}", node="GatherV21")

    def tail(self) -> None:
        """Ops after the last layer: final norm, vocab-parallel lm_head, logits gather, argmax."""
        spec, setup, b = self.spec, self.setup, self.b
        h, v_l = spec.hidden_size, -(-spec.vocab_size // setup.tp)
        self.vec("RmsNorm", "RmsNorm", b * h * 4, f"{b},{h}")
        self.matmul("Mm", "MatMulV2", "lm_head", v_l * h * 2, h, v_l, int8=False, node="MatMulV23")
        self.comm("allGather", self.hw.t_comm_us, b * v_l * 2)
        self.vec(
            "ArgMax",
            "ArgMaxV2",
            b * v_l * 2 * setup.tp,
            f"{b},{v_l * setup.tp}",
            node="ArgMaxV24",
        )


def trans_data(hw: Hardware, rows: int, cols: int) -> Op:
    """A format-conversion kernel (ND -> FRACTAL_NZ) as the op cache names it."""
    nbytes = rows * cols * 4
    return Op(
        "trans_TransData_0",
        "TransData",
        "AI_VECTOR_CORE",
        hw.t0_vec_us * 1e3 + nbytes / hw.vec_gbs,
        nbytes,
        in_shapes=f"{rows},{cols}",
        out_shapes=f"{rows},{cols}",
        in_types="DT_BF16",
        out_types="DT_BF16",
        node_name="trans_TransData_0",
    )


# Where 0.23 issues each (site, weight): before the op with this label; and whether a join follows
# the op with the second label right away (mlp.gate_up has none of its own: the join after SwiGLU
# waits for it). docs/analysis.md's layer table, rows 3, 8, 11, 15 and 16.
_ISSUE_AT: dict[tuple[str, str], tuple[str, str]] = {
    ("attn.qkv", "qkv_proj"): ("quant_qkv", "quant_qkv"),
    ("attn.o", "o_proj"): ("quant_o", "quant_o"),
    ("mlp.gate_up", "gate_up_proj"): ("post_norm", "swiglu"),
    ("mlp.down", "down_proj"): ("swiglu", "swiglu"),
    ("attn.o", "down_proj"): ("quant_down", "quant_down"),
    ("moe.gate_up", "w13"): ("gating", "quant_moe"),
}


def plan_layer(
    spec: ModelSpec,
    setup: Setup,
    hw: Hardware,
    prefetches: Sequence[ResolvedPrefetch],
    gate_up_join: str = "swiglu",
) -> Plan:
    """Insert each firing prefetch's issue and join into the layer's op list."""
    bld = Builder(spec, setup, hw)
    bld.layer()
    before: dict[int, list[int]] = {}
    joins: set[int] = set()
    for i, p in enumerate(prefetches):
        slot = _ISSUE_AT.get((p.site, p.weight))
        if slot is None or slot[0] not in bld.labels:
            raise AutotuneError(
                f"simulator: no place for prefetch {p.site} of {p.weight} in a "
                f"{'MoE' if spec.has_experts else 'dense'} layer"
            )
        issue, join = slot
        if gate_up_join == "norm" and p.site == "mlp.gate_up":
            join = issue  # joined right after the post-attention norm
        before.setdefault(bld.labels[issue], []).append(i)
        joins.add(bld.labels[join])
    items: list[Item] = []
    for j, item in enumerate(bld.items):
        items.extend(Issue(i) for i in before.get(j, ()))
        items.append(item)
        if j in joins:
            items.append(Join())
    gap = (hw.gap_graph_us if setup.graph_mode else hw.gap_eager_us) * 1e3
    return Plan(tuple(items), tuple(prefetches), gap, hw.t_sync_us * 1e3)


def plan_ops(spec: ModelSpec, setup: Setup, hw: Hardware, part: str) -> tuple[Op, ...]:
    """The ops of `part` ("head" or "tail")."""
    bld = Builder(spec, setup, hw)
    getattr(bld, part)()
    return tuple(it for it in bld.items if isinstance(it, Op))
