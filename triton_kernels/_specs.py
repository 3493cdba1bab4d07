"""Every shipped (kernel, config, dtype) variant, for the ahead-of-time compile report
(tools/triton_report.py) and the tests that must run each config in the interpreter.

A spec names the kernel, its constexprs (block sizes and feature flags at their heaviest setting:
every optional input present, so registers are an upper bound) and num_warps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton.language as tl

from . import _attention as A
from . import _attention_backward as AB
from . import _attention_backward_fused as ABF
from . import _attention_fused as AF
from . import _backward as BW
from . import _conv as K
from . import _mlp_backward as MB
from . import _partials as PS
from . import _train_backward as TB

_PTR_FP32 = {"ws_ptr", "ws_g_ptr", "ws_ml_ptr", "ws_dg_ptr", "ws_dw_ptr", "gm_ptr",
             "tok_ptr", "ws_w_ptr", "mean_ptr", "scale_ptr",
             "shift_ptr", "coef_ptr", "ws_gk_ptr"}
_FLOAT_ARGS = {"scale"}
_DT = {"fp32": tl.float32, "fp16": tl.float16, "bf16": tl.bfloat16}


@dataclass
class Spec:
    kernel: object  # the @triton.jit function
    config: str
    dtype: str  # "fp32" | "fp16" | "bf16": element type of the activation pointers
    constexprs: dict
    num_warps: int
    layout: str | None = None  # "cl" / "nchw": which stride args the JIT sees as 1 (specialized)
    num_stages: int = 3
    fp32_ptrs: tuple = ()  # activation pointers that are fp32 whatever `dtype` (backward buffers)

    def constants(self) -> dict:
        c = dict(self.constexprs)
        ones = {"cl": ("sxc", "soc", "src", "sgc"), "nchw": ("sxw", "sow", "srw", "sgw"),
                "tok": ("sqd", "skd")}.get(self.layout, ())
        c.update({a: 1 for a in ones if a in self.kernel.arg_names})
        return c

    def attrs(self) -> dict:
        """Pointer alignment as the JIT sees it for torch allocations (16 B)."""
        return {(i,): [["tt.divisibility", 16]]
                for i, a in enumerate(self.kernel.arg_names) if a.endswith("_ptr")}

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__ if hasattr(self.kernel, "fn") else self.kernel.__name__

    def signature(self) -> dict:
        sig = {}
        consts = self.constants()
        for a in self.kernel.arg_names:
            if a in consts:
                sig[a] = "constexpr"
            elif a.endswith("_ptr"):
                fp32 = a in _PTR_FP32 or a in self.fp32_ptrs or self.dtype == "fp32"
                sig[a] = "*fp32" if fp32 else f"*{self.dtype}"
            elif a in _FLOAT_ARGS:
                sig[a] = "fp32"
            else:
                sig[a] = "i32"
        return sig


def all_specs() -> list[Spec]:
    specs: list[Spec] = []
    for dt in ("fp32", "fp16", "bf16"):
        for lay in ("cl", "nchw"):
            for cname, cfg in K.DW_CONFIGS.items():
                tiles = dict(BLOCK_P=cfg["BLOCK_P"], BLOCK_C=cfg["BLOCK_C"])
                w = cfg["num_warps"]
                specs.append(Spec(K._dwconv_bn_fwd_kernel, cname, dt,
                                  dict(HAS_DWB=True, **tiles), w, lay))
                specs.append(Spec(K._dwconv_bn_stats_kernel, cname, dt,
                                  dict(HAS_DWB=True, **tiles), w, lay))
                bwd = dict(NEED_DX=True, NEED_W=True, HAS_RES=True, **tiles)
                specs.append(Spec(K._dwconv_bn_bwd_kernel, cname, dt, dict(bwd), w, lay))
                # backward of the train forms: BN reduce / affine on a gradient in dt; the
                # affine kernel writes dz / dx in dt, or (no g: the BN forward) z in dt where the
                # fused MLP backward reads it, in fp32 for the torch path of wider MLPs
                dw = dict(HAS_DW=True, HAS_DWB=True, **tiles)
                specs.append(Spec(TB._bn_bwd_reduce_kernel, cname, dt, dict(dw), w, lay))
                specs.append(Spec(TB._bn_affine_kernel, cname, dt, dict(HAS_G=True, **dw), w,
                                  lay))
                if dt != "fp32":
                    specs.append(Spec(TB._bn_affine_kernel, cname + ",out fp32", dt,
                                      dict(HAS_G=True, **dw), w, lay, fp32_ptrs=("out_ptr",)))
            for key, cfg in K.MLP_CONFIGS.items():
                # compiled at the widest channel count the config serves, every input present
                c = dict(HAS_DW=True, HAS_DWB=True, HAS_AFFINE=True, HAS_B1=True, HAS_B2=True,
                         HAS_LS=True, HAS_RES=True, BLOCK_P=cfg["BLOCK_P"], BLOCK_CI=key,
                         BLOCK_CO=key, BLOCK_H=cfg["BLOCK_H"], DOT_DT=_DT[dt],
                         INPUT_PREC="ieee" if dt == "fp32" else "tf32")
                specs.append(Spec(K._fused_mlp_fwd_kernel, f"C<={key}", dt, c, cfg["num_warps"],
                                  lay, cfg["num_stages"]))
            # fused MLP backward at the config's width, every optional input; z (x, or the
            # train forms' BN output) and dz in the input dtype, the partials in fp32
            for key, cfg in MB.BWD_CONFIGS.items():
                if dt == "fp32" and key > MB.BWD_FP32_MAX_WIDTH:
                    continue
                for kern, flags, outs in (
                        (MB._mlp_bwd_dz_kernel,
                         dict(HAS_B1=True, HAS_B2=True, HAS_LS=True, NEED_DZ=True,
                              NEED_U=True, RELOAD_G=cfg["dz"].get("RELOAD_G", False)),
                         ()),
                        (MB._mlp_bwd_dw_kernel,
                         dict(HAS_B1=True, HAS_LS=True,
                              ONE_LOAD=cfg["dw"].get("ONE_LOAD", False)),
                         ("ws1_ptr", "ws2_ptr", "wsb_ptr"))):
                    c = cfg["dz" if kern is MB._mlp_bwd_dz_kernel else "dw"]
                    warps = c.get("nchw_warps", c["num_warps"]) if lay == "nchw" \
                        else c["num_warps"]
                    specs.append(Spec(
                        kern, f"C<={key}", dt,
                        dict(BLOCK_P=c["BLOCK_P"], BLOCK_CI=key, BLOCK_CO=key,
                             BLOCK_H=c["BLOCK_H"], DOT_DT=_DT[dt],
                             INPUT_PREC="ieee" if dt == "fp32" else "tf32", **flags),
                        warps, lay, c["num_stages"], fp32_ptrs=outs))
            # wide-channel split (width-independent tiles); the hidden kernel also without the
            # dwconv prologue (mlp / mlp_train), whose loads differ from the heaviest form
            prec = "ieee" if dt == "fp32" else "tf32"
            ca, cb = K.SPLIT_CONFIG["hidden"], K.SPLIT_CONFIG["out"]
            for has_dw in (True, False):
                c = dict(HAS_DW=has_dw, HAS_DWB=has_dw, HAS_AFFINE=True, HAS_B1=True,
                         BLOCK_P=ca["BLOCK_P"], BLOCK_N=ca["BLOCK_N"], BLOCK_K=ca["BLOCK_K"],
                         DOT_DT=_DT[dt], INPUT_PREC=prec)
                specs.append(Spec(K._mlp_hidden_kernel, "split" + ("" if has_dw else ",no dw"),
                                  dt, c, ca["num_warps"], lay, ca["num_stages"]))
            c = dict(HAS_B2=True, HAS_LS=True, HAS_RES=True, BLOCK_P=cb["BLOCK_P"],
                     BLOCK_N=cb["BLOCK_N"], BLOCK_K=cb["BLOCK_K"], DOT_DT=_DT[dt],
                     INPUT_PREC=prec)
            specs.append(Spec(K._mlp_out_kernel, "split", dt, c, cb["num_warps"], lay,
                              cb["num_stages"]))
        for key, cfg in A.ATTN_CONFIGS.items():
            for pool, pid in A.POOL_IDS.items():
                specs.append(Spec(A._attn_pool_partial_kernel, f"D<={key},{pool}", dt,
                                  dict(POOL=pid, BLOCK_N=cfg["BLOCK_N"], BLOCK_D=key),
                                  cfg["num_warps"], "tok"))
                specs.append(Spec(A._attn_apply_kernel, f"D<={key},{pool}", dt,
                                  dict(POOL=pid, BLOCK_N=cfg["BLOCK_N"], BLOCK_D=key,
                                       BLOCK_S=A.MAX_SPLITS), cfg["num_warps"], "tok"))
        # fused module forward, compiled at the config's width (the launcher always uses it);
        # kernel B with every optional input, and without the final linear (stores per chunk)
        prec = "ieee" if dt == "fp32" else "tf32"
        # (fp32: the launcher's own config, AF.fused_config, incl. the FP32_CONFIGS overrides)
        for key in AF.FUSED_CONFIGS:
            if dt == "fp32" and key > AF.FP32_MAX_WIDTH:
                continue
            cfg = AF.fused_config(key, torch.float32 if dt == "fp32" else torch.float16)
            ca, cb = cfg["pool"], cfg["apply"]
            for pool, pid in A.POOL_IDS.items():
                specs.append(Spec(AF._attn_fused_pool_kernel, f"D<={key},{pool}", dt,
                                  dict(HAS_BQK=True, POOL=pid, BLOCK_N=ca["BLOCK_N"], BLOCK_D=key,
                                       BLOCK_K=ca["BLOCK_K"], DOT_DT=_DT[dt], INPUT_PREC=prec),
                                  ca["num_warps"], num_stages=ca["num_stages"]))
                for final in (True, False):
                    specs.append(Spec(
                        AF._attn_fused_apply_kernel,
                        f"D,T<={key},{pool}" + ("" if final else ",no final"), dt,
                        dict(HAS_BQK=True, HAS_BP=True, HAS_FINAL=final, HAS_BF=final, POOL=pid,
                             BLOCK_N=cb["BLOCK_N"], BLOCK_D=key, BLOCK_T=key,
                             BLOCK_K=cb["BLOCK_K"], BLOCK_J=cb["BLOCK_J"], BLOCK_S=A.MAX_SPLITS,
                             GK_SCRATCH=cb.get("GK_SCRATCH", False), DOT_DT=_DT[dt],
                             INPUT_PREC=prec),
                        cb["num_warps"], num_stages=cb["num_stages"]))
        # fused module backward at the config's width, every optional input; kernels T and W
        # also without the final linear (dout1 is then dy itself: different loads)
        for key, cfg in ABF.BWD_FUSED_CONFIGS.items():
            if dt == "fp32" and key > ABF.FP32_MAX_WIDTH:
                continue
            cp, ct, cw = cfg["pool"], cfg["token"], cfg["weight"]
            dots = dict(HAS_BQK=True, DOT_DT=_DT[dt], INPUT_PREC=prec)
            for pool, pid in A.POOL_IDS.items():
                specs.append(Spec(ABF._attn_bwd_fused_pool_kernel, f"D,T<={key},{pool}", dt,
                                  dict(POOL=pid, BLOCK_N=cp["BLOCK_N"], BLOCK_D=key,
                                       BLOCK_K=cp["BLOCK_K"], **dots),
                                  cp["num_warps"], num_stages=cp["num_stages"]))
                for final in (True, False):
                    specs.append(Spec(
                        ABF._attn_bwd_fused_token_kernel,
                        f"D,T<={key},{pool}" + ("" if final else ",no final"), dt,
                        dict(HAS_FINAL=final, NEED_DX=True, POOL=pid, BLOCK_N=ct["BLOCK_N"],
                             BLOCK_D=key, BLOCK_K=ct["BLOCK_K"], BLOCK_J=ct["BLOCK_J"],
                             BLOCK_S=A.MAX_SPLITS, **dots),
                        ct["num_warps"], num_stages=ct["num_stages"]))
            for final in (True, False):
                specs.append(Spec(ABF._attn_bwd_fused_weight_kernel,
                                  f"D,T<={key}" + ("" if final else ",no final"), dt,
                                  dict(HAS_FINAL=final, BLOCK_N=cw["BLOCK_N"], BLOCK_D=key,
                                       BLOCK_T=key, BLOCK_I=cw["BLOCK_I"],
                                       BLOCK_K=cw["BLOCK_K"], **dots),
                                  cw["num_warps"], num_stages=cw["num_stages"]))
        # the fused backward's tail: fp32 E / F / sum dy in, the four gradients in dt
        for final in (True, False):
            specs.append(Spec(ABF._attn_bwd_finalize_kernel, "final" if final else "no final", dt,
                              dict(HAS_FINAL=final, HAS_BP=True, NEED_WP=True, NEED_BP=True,
                                   NEED_WF=final, NEED_BF=final, BLOCK=ABF.FINALIZE_BLOCK),
                              ABF.FINALIZE_WARPS,
                              fp32_ptrs=("e_ptr", "f_ptr", "dbf_ptr")))
        for key, cfg in AB.ATTN_BWD_CONFIGS.items():
            for pool, pid in A.POOL_IDS.items():
                specs.append(Spec(AB._attn_bwd_partial_kernel, f"D<={key},{pool}", dt,
                                  dict(POOL=pid, NEED_DG=True, BLOCK_N=cfg["P1_BLOCK_N"],
                                       BLOCK_D=key), cfg["p1_warps"], "tok"))
                specs.append(Spec(AB._attn_bwd_apply_kernel, f"D<={key},{pool}", dt,
                                  dict(POOL=pid, HAS_DQN=True, NEED_DQ=True, NEED_DK=True,
                                       BLOCK_N=cfg["BLOCK_N"], BLOCK_D=key,
                                       BLOCK_S=A.MAX_SPLITS), cfg["num_warps"], "tok"))
        # the fused backwards' partial sums: fp32 partials in, gradients in the weight dtype
        specs.append(Spec(PS._sum_partials_kernel, "default", dt, dict(BLOCK=PS.BLOCK), 4,
                          fp32_ptrs=tuple(f"src{i}_ptr" for i in range(PS.MAX_PAIRS))))
    specs.append(Spec(BW._gelu_fwd_bwd_kernel, "default", "fp32", dict(BLOCK=BW.GELU_BLOCK), 4))
    return specs
